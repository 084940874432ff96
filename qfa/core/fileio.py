"""Crash-safe file writes and strict JSON reads shared by every stage (imports nothing of ours,
no torch)."""
from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["atomic_write", "append_csv_row", "drop_partial_tail", "strict_json"]


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename: readers never see a
    half-written file, and a failed write leaves nothing behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def append_csv_row(path: str | os.PathLike, fields: Sequence[str], row: Mapping) -> None:
    """Append one CSV row (header first if the file is new) in one write + fsync: a crash
    loses nothing written before it and leaves no partial row. An exclusive lock lets several
    processes (torchrun ranks) append to one file: one header, whole rows."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fields, extrasaction="ignore")
    with open(Path(path), "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released on close
        _truncate_partial(f)  # never extend a row that a crash (or a cut copy) left half written
        if f.seek(0, os.SEEK_END) == 0:
            w.writeheader()
        w.writerow(row)
        f.write(buf.getvalue().encode())
        f.flush()
        os.fsync(f.fileno())


def _truncate_partial(f) -> bytes:
    """Cut an open binary file back to its last newline; return what was cut (b"" if none)."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return b""
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return b""
    pos = end
    while pos > 0:  # scan back in blocks for the last complete line
        step = min(4096, pos)
        f.seek(pos - step)
        block = f.read(step)
        nl = block.rfind(b"\n")
        if nl >= 0:
            pos = pos - step + nl + 1
            break
        pos -= step
    f.seek(pos)
    tail = f.read()
    f.truncate(pos)
    f.flush()
    os.fsync(f.fileno())
    return tail


def drop_partial_tail(path: str | os.PathLike) -> bytes:
    """Remove a last line that lacks its newline (a write cut off mid-row) from ``path``, under
    the same lock as :func:`append_csv_row`; return the removed bytes (b"" if the file was whole)."""
    with open(Path(path), "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        return _truncate_partial(f)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 15:
        raise ValueError(f"number {text[:20]}... has {len(text)} digits")
    return int(text)


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:20]} is out of range")
    return v


def _unique_keys(pairs: list) -> dict:
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"key {k!r} appears twice")
        d[k] = v
    return d


def strict_json(text: str, max_chars: int = 4_000_000):
    """``json.loads`` that accepts only plain data: no NaN/Infinity, no out-of-range or
    thousand-digit numbers, no duplicated keys, bounded nesting and size. Raises ValueError with
    a message fit for users (position included)."""
    if len(text) > max_chars:
        raise ValueError(f"longer than {max_chars:,} characters")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_int=_bounded_int, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
