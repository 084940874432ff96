"""Command-line conventions shared by ``qfa`` and ``hw/profile.py`` (no torch): exit statuses,
one-line errors with the input's control characters escaped, strict number arguments, and
the last line of defence that turns an unexpected exception into one line instead of a
traceback (exit 3: a bug, which the fuzz suite looks for)."""
from __future__ import annotations

import argparse
import errno
import math
import os
import re
import sys
from typing import Callable

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_STATUS_HELP",
           "Parser", "one_line", "integer", "number", "run_guarded"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_STATUS_HELP = ("exit status: 0 done; 1 the operation or the device failed (unreachable or failing device, "
                    "a result that misses its check: over the latency budget, agreement below --threshold); "
                    "2 bad input (usage, spec, table, checkpoint, path, infeasible budget); 3 internal error "
                    "(a bug: QFA_DEBUG=1 shows the traceback); 130 interrupted")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def one_line(msg: object, limit: int = 600) -> str:
    """``msg`` as one printable line: control, bidi and line-breaking characters escaped
    (``\\x1b``), long text cut with an ellipsis (a hostile input cannot rewrite the terminal
    or forge further lines)."""
    s = _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), str(msg))
    return s if len(s) <= limit else s[: limit - 3] + "..."


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (exit 2) and the exit statuses in ``--help``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


_INT = re.compile(r"[+-]?[0-9]{1,12}")


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: a plain ASCII integer (no ``8.0``, no ``２８``) within [lo, hi]."""
    def parse(text: str) -> int:
        if not _INT.fullmatch(text.strip()):
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        v = int(text)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in {lo}..{hi}"
            raise argparse.ArgumentTypeError(f"must be an integer {rng}, got {v}")
        return v
    parse.__name__ = "integer"
    return parse


def number(lo: float | None = None, positive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite decimal number (no NaN, no inf), > 0 if ``positive``, >= lo."""
    def parse(text: str) -> float:
        if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?", text.strip()):
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        v = float(text)
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if positive and v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        if lo is not None and v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo:g}, got {text}")
        return v
    parse.__name__ = "number"
    return parse


def _silence_stdout() -> None:
    """After stdout failed (closed pipe, full disk): point it at /dev/null so that the
    interpreter's own flush at exit does not print a second error."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


_BAD_PATH = {errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ELOOP}


def run_guarded(prog: str, body: Callable[[], int], expected: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``body`` (which returns an exit status) so that nothing escapes as a traceback.

    ``expected`` exceptions carry a ``code`` attribute (default 2) and a message for the user;
    a path that cannot be used (too long, missing, a folder, no permission) is exit 2; a failed
    write (full disk) exit 1, a closed stdout 0 (as for ``head``); anything else is a bug: one
    line and exit 3, or the traceback with ``QFA_DEBUG=1``."""
    def say(msg: str) -> None:
        try:
            print(f"{prog}: {one_line(msg)}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
    try:
        code = body()
        sys.stdout.flush()
        return code
    except expected as e:
        say(f"error: {e}")
        return int(getattr(e, "code", EXIT_USAGE))
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_OK
    except OSError as e:
        if e.filename is not None and e.errno in _BAD_PATH and not os.environ.get("QFA_DEBUG"):
            say(f"error: {e.filename}: {os.strerror(e.errno)}")  # a path the user gave that cannot be used
            return EXIT_USAGE
        if e.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS) and not os.environ.get("QFA_DEBUG"):
            _silence_stdout()
            verb = "I/O failed" if e.errno == errno.EIO else "cannot write"
            say(f"error: {verb}: {os.strerror(e.errno)}" + (f" ({e.filename})" if e.filename else ""))
            return EXIT_FAILED
        if os.environ.get("QFA_DEBUG"):
            raise
        say(f"internal error: {type(e).__name__}: {e} (a bug; QFA_DEBUG=1 shows the traceback)")
        return EXIT_INTERNAL
    except Exception as e:  # noqa: BLE001 - the last line of defence; the fuzz suite hunts these
        if os.environ.get("QFA_DEBUG"):
            raise
        say(f"internal error: {type(e).__name__}: {e} (a bug; QFA_DEBUG=1 shows the traceback)")
        return EXIT_INTERNAL
