"""Atomic, pickle-free training checkpoints.

Written as temp file + fsync + rename, so a crash or SIGKILL leaves the previous checkpoint
whole; loaded with ``torch.load(weights_only=True)``, which refuses arbitrary pickled code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "checkpoint_space", "FORMAT"]

FORMAT = "qfa-ckpt/1"


class CheckpointError(RuntimeError):
    """Missing, corrupt or foreign checkpoint."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign / pickled files
        raise CheckpointError(f"{path}: not a readable qfa checkpoint ({_why(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a qfa checkpoint (format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    return state


def _why(e: Exception) -> str:
    """torch.load's failure in a few words (its own text runs to paragraphs of advice)."""
    text = str(e)
    if "Unsupported global" in text or "unsupported GLOBAL" in text:
        return "it holds pickled Python objects, which qfa never loads: only tensors and plain data"
    if any(m in text for m in ("invalid load key", "magic number", "Ran out of input", "Unsupported operand",
                               "zip archive", "central directory", "PytorchStreamReader")) or isinstance(e, EOFError):
        return "not a torch file, or truncated"
    if "Weights only load failed" in text:
        return "it holds data a plain checkpoint does not, which qfa never unpickles"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    first = first.split(". ")[0]
    return first if len(first) <= 120 else first[:117] + "..."


def checkpoint_space(state: dict[str, Any], path: str | os.PathLike = "checkpoint"):
    """The search space a loaded checkpoint state was trained on."""
    from qfa.core.space import SearchSpace, SpecError
    try:
        return SearchSpace.from_json(json.loads(state["space_json"]))
    except (KeyError, TypeError, ValueError, SpecError) as e:
        raise CheckpointError(f"{path}: checkpoint holds no usable search space ({str(e).splitlines()[0][:160]})") from None
