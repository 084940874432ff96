"""Block models on disk: built by ``export``'s lowering, cached by table key, in parallel.

Conversion is host work and independent per spec, so it runs across processes before any
timing starts (timing stays alone on the device). A model's cache path is its table key under a
fingerprint of the code that lowers it, so a rerun (or another table of the same target)
rebuilds nothing, and a change to the lowering never reuses a stale model.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable

from qfa.core.fileio import atomic_write

__all__ = ["cache_dir", "write_model", "model_path", "build", "code_fingerprint"]

# the modules a block model's bytes depend on
_LOWERING = ("export.ir", "export.lower", "export.targets", "export.tflite", "export.fold", "hw.blocks",
             "hw.entries", "qfa.nn.calibrate", "qfa.nn.quant", "qfa.nn.fused", "qfa.nn.supernet",
             "qfa.nn.elastic.ops", "qfa.nn.elastic.blocks")


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """``root``/models, by default under $QFA_CACHE or ~/.cache/qfa."""
    d = Path(root or os.environ.get("QFA_CACHE", Path.home() / ".cache" / "qfa")) / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_model(blob: bytes, root: str | os.PathLike | None = None) -> Path:
    """A one-off model (whole subnet, overhead probe), cached by content."""
    p = cache_dir(root) / (hashlib.sha256(blob).hexdigest()[:20] + ".tflite")
    if not p.exists():
        atomic_write(p, blob)
    return p


def code_fingerprint() -> str:
    """Hash of the lowering code's sources, wherever the toolkit is installed (a module that
    cannot be found is an error, not an empty file)."""
    h = hashlib.sha256()
    for name in _LOWERING:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise RuntimeError(f"code_fingerprint: module {name} not found")
        h.update(name.encode() + Path(spec.origin).read_bytes())
    return h.hexdigest()[:12]


def model_path(key: str, target: str, fingerprint: str, root: str | os.PathLike | None = None) -> Path:
    return cache_dir(root) / f"{target}-{fingerprint}" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".tflite")


_factory = None


def _init(space_json: dict, seed: int) -> None:
    global _factory
    from qfa.core.space import SearchSpace
    from hw.blocks import BlockFactory
    _factory = BlockFactory(SearchSpace.from_json(space_json), seed)


def _worker_init(space_json: dict, seed: int) -> None:
    import torch
    torch.set_num_threads(1)  # one process per core
    _init(space_json, seed)


def _build_one(spec_text: str, target_name: str, fingerprint: str, root: str | None) -> None:
    from export.targets import TARGETS
    spec = _factory.space.parse(spec_text)
    for en, blob in _factory.pieces(spec, TARGETS[target_name]):
        p = model_path(en.key, target_name, fingerprint, root)
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(p, blob)


def build(specs: Iterable, target, jobs: int, seed: int = 0, progress: Callable[[int, int], None] | None = None,
          root: str | None = None) -> dict[str, Path]:
    """Cached path of every piece of ``specs`` (table key -> .tflite), building the missing
    ones with ``jobs`` processes (1: in this process); ``root``: another cache folder."""
    from hw.entries import entries
    fp = code_fingerprint()
    specs = list(specs)
    paths = {en.key: model_path(en.key, target.name, fp, root) for s in specs for en in entries(s, target)}
    todo = [s for s in specs if any(not paths[en.key].exists() for en in entries(s, target))]
    if not todo:
        return paths
    space_json, n = todo[0].space.to_json(), len(todo)
    args = ([str(s) for s in todo], [target.name] * n, [fp] * n, [root] * n)
    with ExitStack() as stack:
        if jobs <= 1:
            _init(space_json, seed)
            results = map(_build_one, *args)
        else:  # spawn, not fork: a forked child of a process whose OpenMP pool is running can hang
            ex = stack.enter_context(ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                                                         initializer=_worker_init, initargs=(space_json, seed)))
            results = ex.map(_build_one, *args)
        for i, _ in enumerate(results, 1):
            if progress:
                progress(i, n)
    return paths
