"""Transports: push models, run them, parse timings (nn-Meter's backend shape).

Every remote argument is quoted with shlex.quote and passed as a list; no shell string is
built from user input. ssh uses the user's own ssh config and keys (BatchMode: no passwords).
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

__all__ = ["TransportError", "Local", "SSH", "ADB", "make_transport"]

RUNNER = Path(__file__).resolve().parent / "runner.py"
CONNECT_TIMEOUT_S = 10


class TransportError(RuntimeError):
    """The device cannot be reached or the run failed."""


class Local:
    """In-process interpreter on this machine."""

    def __init__(self, threads: int = 1, runs: int = 200, warmup: int = 30) -> None:
        self.threads, self.runs, self.warmup = threads, runs, warmup

    def measure(self, paths: list[Path]) -> list[dict]:
        from hw.runner import time_model
        return [time_model(str(p), self.threads, self.warmup, self.runs) for p in paths]


def _run(cmd: list[str], timeout: float, what: str) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise TransportError(f"{cmd[0]} not found: install it or check PATH") from None
    except subprocess.TimeoutExpired:
        raise TransportError(f"{what}: no answer within {timeout:.0f}s") from None
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise TransportError(f"{what} failed (exit {r.returncode}): {last}")
    return r.stdout


class SSH:
    """ssh://user@host[:port]: copies runner.py and the models to a temporary folder."""

    def __init__(self, url: str, threads: int = 1, taskset: str | None = None, python: str = "python3",
                 extra: list[str] | None = None, runs: int = 200, warmup: int = 30) -> None:
        m = re.fullmatch(r"ssh://(?:([^@/:\s]+)@)?([^@/:\s]+)(?::(\d+))?/?", url)
        if not m:
            raise TransportError(f"bad ssh target {url!r}: expected ssh://user@host[:port]")
        user, host, port = m.groups()
        self.dest = f"{user}@{host}" if user else host
        self.opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", *(extra or [])]
        self.port = port
        self.threads, self.taskset, self.python = threads, taskset, python
        self.runs, self.warmup = runs, warmup
        self.remote_dir: str | None = None

    def _ssh(self, *remote: str, timeout: float = 60) -> str:
        cmd = ["ssh", *self.opts, *(["-p", self.port] if self.port else []), self.dest, "--",
               " ".join(shlex.quote(a) for a in remote)]
        return _run(cmd, timeout, f"ssh {self.dest}")

    def _push(self, files: list[Path], timeout: float = 300) -> None:
        cmd = ["scp", "-q", *self.opts, *(["-P", self.port] if self.port else []), *map(str, files),
               f"{self.dest}:{self.remote_dir}/"]
        _run(cmd, timeout, f"copy to {self.dest}")

    def facts(self) -> dict:
        out = self._ssh("sh", "-c", "uname -a; nproc; grep -m1 -i 'model name' /proc/cpuinfo; "
                        "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null; true",
                        timeout=CONNECT_TIMEOUT_S + 20).splitlines()
        facts = {"uname": out[0] if out else "", "cores": out[1] if len(out) > 1 else None}
        facts.update({"cpu": ln.split(":", 1)[1].strip() for ln in out[2:] if ":" in ln})
        facts.update({"governor": ln for ln in out[2:] if ":" not in ln})
        return facts

    def close(self) -> None:
        """Remove the temporary folder on the device."""
        if self.remote_dir is not None:
            self._ssh("rm", "-rf", self.remote_dir, timeout=CONNECT_TIMEOUT_S + 20)
            self.remote_dir = None

    def measure(self, paths: list[Path]) -> list[dict]:
        if self.remote_dir is None:
            self.remote_dir = self._ssh("mktemp", "-d", "/tmp/qfa.XXXXXX", timeout=CONNECT_TIMEOUT_S + 20).strip()
            self._push([RUNNER])
        self._push(paths)
        job = {"models": [f"{self.remote_dir}/{p.name}" for p in paths], "threads": self.threads,
               "runs": self.runs, "warmup": self.warmup}
        with tempfile.TemporaryDirectory() as tmp:
            jp = Path(tmp) / "job.json"
            jp.write_text(json.dumps(job))
            self._push([jp])
        cmd = (["taskset", self.taskset] if self.taskset else []) + [self.python, f"{self.remote_dir}/runner.py",
                                                                        f"{self.remote_dir}/job.json"]
        out = self._ssh(*cmd, timeout=600)
        rows = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        if len(rows) != len(paths):
            raise TransportError(f"runner on {self.dest} returned {len(rows)} of {len(paths)} results")
        return rows


class ADB:
    """adb[:SERIAL]: pushes models and the user's benchmark_model binary to /data/local/tmp."""

    DIR = "/data/local/tmp/qfa"

    def __init__(self, serial: str | None, benchmark_model: str, threads: int = 1, taskset: str | None = None,
                 adb: str = "adb", runs: int = 200, warmup: int = 30) -> None:
        if not benchmark_model or not Path(benchmark_model).is_file():
            raise TransportError("adb needs --runtime benchmark_model:PATH (the LiteRT benchmark_model binary "
                                 "for the phone's ABI; no pip package ships it)")
        self.base = [adb, *(["-s", serial] if serial else [])]
        self.bm, self.threads, self.taskset = Path(benchmark_model), threads, taskset
        self.runs, self.warmup = runs, warmup
        self.ready = False

    def _adb(self, *args: str, timeout: float = 60) -> str:
        return _run([*self.base, *args], timeout, "adb " + args[0])

    def _shell(self, *args: str, timeout: float = 300) -> str:
        return self._adb("shell", " ".join(shlex.quote(a) for a in args), timeout=timeout)

    def measure(self, paths: list[Path]) -> list[dict]:
        if not self.ready:
            self._adb("wait-for-device", timeout=30)
            self._shell("mkdir", "-p", self.DIR, timeout=30)
            self._adb("push", str(self.bm), f"{self.DIR}/benchmark_model")
            self._shell("chmod", "755", f"{self.DIR}/benchmark_model")
            self.ready = True
        rows = []
        for p in paths:
            self._adb("push", str(p), f"{self.DIR}/{p.name}")
            cmd = (["taskset", self.taskset] if self.taskset else []) + [
                f"{self.DIR}/benchmark_model", f"--graph={self.DIR}/{p.name}", f"--num_threads={self.threads}",
                f"--warmup_runs={self.warmup}", f"--num_runs={self.runs}"]
            rows.append(parse_benchmark_model(self._shell(*cmd)))
        return rows


def parse_benchmark_model(out: str) -> dict:
    """Timing line of LiteRT's benchmark_model: 'count=200 first=.. curr=.. min=.. max=.. avg=.. std=..'
    (microseconds). benchmark_model reports no median: avg stands in for it, said in 'stat'."""
    lines = [ln for ln in out.splitlines() if "count=" in ln and "avg=" in ln]
    if not lines:
        raise TransportError("benchmark_model printed no timing line")
    f = dict(re.findall(r"(\w+)=([\d.e+-]+)", lines[-1]))
    avg, std = float(f["avg"]), float(f.get("std", 0))
    return {"median_us": avg, "p10_us": float(f.get("min", avg)), "p90_us": float(f.get("max", avg)),
            "count": int(float(f["count"])), "cv": std / avg if avg else 0.0, "stat": "avg"}


def make_transport(target: str, threads: int = 1, taskset: str | None = None, runtime: str = "litert",
                   runs: int = 200, warmup: int = 30, ssh_options: list[str] | None = None,
                   remote_python: str = "python3"):
    if target == "local":
        return Local(threads, runs, warmup)
    if target.startswith("ssh://"):
        extra = [a for o in (ssh_options or []) for a in ("-o", o)]
        return SSH(target, threads, taskset, remote_python, extra, runs, warmup)
    if target == "adb" or target.startswith("adb:"):
        serial = target.split(":", 1)[1] if ":" in target else None
        bm = runtime.split(":", 1)[1] if runtime.startswith("benchmark_model:") else ""
        return ADB(serial, bm, threads, taskset, runs=runs, warmup=warmup)
    raise TransportError(f"unknown target {target!r}: local | ssh://user@host[:port] | adb[:SERIAL]")
