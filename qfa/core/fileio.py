"""Crash-safe file writes shared by every stage (imports nothing of ours, no torch)."""
from __future__ import annotations

import csv
import fcntl
import io
import os
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["atomic_write", "append_csv_row"]


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
    with open(Path(path), "a", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released on close
        if f.seek(0, os.SEEK_END) == 0:
            w.writeheader()
        w.writerow(row)
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
