"""Transports: reach a device, push models, run them, parse timings (nn-Meter's backend shape).

A transport is a :class:`Transport` (connect / push / run / parse / close); :data:`TRANSPORTS`
maps a target URL's scheme to its class, and :func:`make_transport` is the one place a target
string becomes a transport. Every remote argument is quoted with ``shlex.quote`` and passed as a
list; no shell string is built from user input. ssh uses the user's own ssh config and keys
(BatchMode: no passwords).
"""
from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from export.targets import DEFAULT_RUNTIME, DELEGATES

__all__ = ["TransportError", "BadTarget", "check_run_config", "RunConfig", "Transport", "Local", "SSH", "ADB", "TRANSPORTS", "make_transport",
           "parse_benchmark_model", "host_mismatch", "device_slug", "FINGERPRINT"]

RUNNER = Path(__file__).resolve().parent / "runner.py"
# the instruction-set flags that decide which kernels a runtime takes (XNNPACK, the builtin ones)
ISA_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                       "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm"})
# /proc/cpuinfo fields that identify the core design (x86: family/model/stepping; Arm: part)
_CPU_ID = {"cpu family": "family", "model": "model", "stepping": "stepping", "CPU implementer": "implementer",
           "CPU part": "part", "CPU variant": "variant"}
CONNECT_TIMEOUT_S = 10


class TransportError(RuntimeError):
    """The device cannot be reached or the run failed."""


class BadTarget(TransportError, ValueError):
    """A target, serial or run option that is not valid input (exit status 2, not a device failure)."""


_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})")   # a DNS name or IPv4 address: never an option
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_SERIAL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:-]{0,127}")
_TASKSET = re.compile(r"(?:0x)?[0-9A-Fa-f]{1,32}")
_PROGRAM = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./+-]{0,255}")  # a program name or path on the device
# ssh options that run local commands: never taken from the command line
_SSH_COMMAND_OPTIONS = {"proxycommand", "localcommand", "permitlocalcommand", "knownhostscommand", "match",
                        "proxyjump", "include"}


def _check(value: str | None, pattern: re.Pattern, what: str, expected: str = "letters, digits and ._-") -> None:
    if value is not None and not pattern.fullmatch(value):
        raise BadTarget(f"bad {what} {value!r}: expected {expected}, not starting with '-'")


def check_run_config(cfg: "RunConfig") -> None:
    """Reject run options that could reach ssh/adb as options or shell text."""
    if cfg.delegate not in DELEGATES:
        raise BadTarget(f"unknown delegate {cfg.delegate!r}; known: {', '.join(DELEGATES)}")
    _check(cfg.taskset, _TASKSET, "--taskset", "a hex CPU mask such as f0")
    _check(cfg.remote_python, _PROGRAM, "--remote-python", "a program name or path")
    for opt in cfg.ssh_options:
        key, sep, _ = opt.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z]+", key) or "\n" in opt:
            raise BadTarget(f"bad --ssh-option {opt!r}: expected Key=Value, e.g. IdentityFile=~/.ssh/pi")
        if key.lower() in _SSH_COMMAND_OPTIONS:
            raise BadTarget(f"--ssh-option {key} runs commands: set it in ~/.ssh/config if you mean it")


@dataclass(frozen=True)
class RunConfig:
    """How models are run on the device, whatever the transport."""

    threads: int = 1
    delegate: str = DEFAULT_RUNTIME["delegate"]  # export.targets.DELEGATES
    runs: int = 200                 # timed invokes per model, spread over ``rounds`` round-robin passes
    warmup: int = 10
    rounds: int = 8
    time_per_model_ms: float | None = None  # caps a model's timed invokes at about this much time (hw.runner)
    taskset: str | None = None      # CPU mask for the runner (ssh, adb)
    runtime: str = "litert"         # litert | tflite-runtime | benchmark_model:PATH (adb)
    ssh_options: tuple[str, ...] = ()
    remote_python: str = "python3"


class Transport:
    """Connect once, then for each batch of models: push, run, parse; close at the end."""

    scheme: ClassVar[str]
    usage: ClassVar[str]

    def __init__(self, target: str, cfg: RunConfig) -> None:
        self.target, self.cfg = target, cfg
        self.connected = False

    def connect(self) -> None:
        """Reach the device and put what the runs need there."""

    def push(self, paths: list[Path]) -> None:
        """Copy ``paths`` to the device."""

    def run(self, paths: list[Path]) -> str:
        """Time each model; the raw output."""
        raise NotImplementedError

    def parse(self, out: str, paths: list[Path]) -> list[dict]:
        """One timing row (min_us, median_us, p10_us, p90_us, count, cv) per model of ``out``:
        the runner's JSON lines by default."""
        try:
            rows = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
        except ValueError:
            raise TransportError(f"runner on {self.target} printed unreadable results") from None
        fields = ("min_us", "median_us", "p10_us", "p90_us", "count", "cv")
        if not all(isinstance(r, dict) and all(isinstance(r.get(f), (int, float)) for f in fields) for r in rows):
            raise TransportError(f"runner on {self.target} printed results without {', '.join(fields)}")
        if len(rows) != len(paths):
            raise TransportError(f"runner on {self.target} returned {len(rows)} of {len(paths)} results")
        return rows

    def facts(self) -> dict:
        """What is known of the device (CPU, cores, governor) for the table's metadata."""
        return {}

    def cores(self) -> int | None:
        """The device's core count (``--threads all``); None where it does not say."""
        return _count(self.facts().get("cores"))

    def close(self) -> None:
        """Remove what was put on the device."""

    def measure(self, paths: list[Path]) -> list[dict]:
        if not self.connected:
            self.connect()
            self.connected = True
        self.push(paths)
        rows = self.parse(self.run(paths), paths)
        bad = [r[k] for r in rows for k in ("min_us", "median_us") if not (math.isfinite(r[k]) and r[k] > 0)]
        if bad:  # nothing impossible reaches a table
            raise TransportError(f"runner on {self.target} reported impossible latencies {bad[:3]} us")
        return rows


def _count(text) -> int | None:
    """A positive count as a device printed it (``nproc``), else None."""
    c = str(text or "").strip()
    return int(c) if c.isdigit() and int(c) > 0 else None


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


class Local(Transport):
    """``local``: the interpreter in this process, on this machine."""

    scheme, usage = "local", "local"

    def run(self, paths: list[Path]) -> str:
        from .runner import time_models
        c = self.cfg
        return "".join(json.dumps(r) + "\n" for r in time_models([str(p) for p in paths], c.threads, c.warmup, c.runs,
                                                                  c.rounds, c.delegate, c.time_per_model_ms))

    def facts(self) -> dict:
        import os
        import platform
        facts = {"machine": platform.machine(), "os": platform.platform(), "python": platform.python_version(),
                 "cores": os.cpu_count()}
        try:
            ident: dict[str, str] = {}
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                key, _, val = (part.strip() for part in line.partition(":"))
                if key in _CPU_ID and key not in ident:
                    ident[key] = val
                if line.startswith("model name") and "cpu" not in facts:
                    facts["cpu"] = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and "cpu_flags" not in facts:
                    facts["cpu_flags"] = sorted(set(line.split(":", 1)[1].split()) & ISA_FLAGS)
            if ident:  # "AMD EPYC" alone names a Zen 3 and a Zen 4 (AVX-512) alike
                facts["cpu_id"] = " ".join(f"{_CPU_ID[k]} {ident[k]}" for k in _CPU_ID if k in ident)
            gov = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
            facts["governor"] = gov.read_text().strip() if gov.exists() else None
        except OSError:
            pass
        from importlib.metadata import PackageNotFoundError, version
        try:  # the installed version, without importing the runtime
            facts["runtime"] = f"ai-edge-litert {version('ai-edge-litert')}"
        except PackageNotFoundError:
            pass
        return facts


class SSH(Transport):
    """``ssh://user@host[:port]``: copies runner.py and the models to a temporary folder."""

    scheme, usage = "ssh", "ssh://user@host[:port]"

    def __init__(self, target: str, cfg: RunConfig) -> None:
        super().__init__(target, cfg)
        m = re.fullmatch(r"ssh://(?:([^@/:\s]+)@)?([^@/:\s]+)(?::(\d+))?/?", target)
        if not m:
            raise BadTarget(f"bad ssh target {target!r}: expected {self.usage}")
        user, host, port = m.groups()
        _check(user, _USER, "ssh user")
        _check(host, _HOST, "ssh host")
        if port is not None and not 0 < int(port) < 65536:
            raise BadTarget(f"bad ssh port {port}")
        self.dest = f"{user}@{host}" if user else host
        self.opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                     *(a for o in cfg.ssh_options for a in ("-o", o))]
        self.port = port
        self.remote_dir: str | None = None

    def _ssh(self, *remote: str, timeout: float = 60) -> str:
        cmd = ["ssh", *self.opts, *(["-p", self.port] if self.port else []), "--", self.dest,
               " ".join(shlex.quote(a) for a in remote)]
        return _run(cmd, timeout, f"ssh {self.dest}")

    def _copy(self, files: list[Path], timeout: float = 300) -> None:
        cmd = ["scp", "-q", *self.opts, *(["-P", self.port] if self.port else []), "--",
               *(str(f.resolve()) for f in files), f"{self.dest}:{self.remote_dir}/"]
        _run(cmd, timeout, f"copy to {self.dest}")

    def connect(self) -> None:
        self.remote_dir = self._ssh("mktemp", "-d", "/tmp/qfa.XXXXXX", timeout=CONNECT_TIMEOUT_S + 20).strip()
        self._copy([RUNNER])

    def push(self, paths: list[Path]) -> None:
        c = self.cfg
        job = {"models": [f"{self.remote_dir}/{p.name}" for p in paths], "threads": c.threads,
               "delegate": c.delegate, "runs": c.runs, "warmup": c.warmup, "rounds": c.rounds,
               "time_per_model_ms": c.time_per_model_ms}
        with tempfile.TemporaryDirectory() as tmp:
            jp = Path(tmp) / "job.json"
            jp.write_text(json.dumps(job))
            self._copy([*paths, jp])

    def run(self, paths: list[Path]) -> str:
        c = self.cfg
        cmd = (["taskset", c.taskset] if c.taskset else []) + [c.remote_python, f"{self.remote_dir}/runner.py",
                                                                f"{self.remote_dir}/job.json"]
        return self._ssh(*cmd, timeout=600)

    def facts(self) -> dict:
        out = self._ssh("sh", "-c", "uname -a; nproc; grep -m1 -i 'model name' /proc/cpuinfo; "
                        "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null; true",
                        timeout=CONNECT_TIMEOUT_S + 20).splitlines()
        facts = {"uname": out[0] if out else "", "cores": out[1] if len(out) > 1 else None}
        facts.update({"cpu": ln.split(":", 1)[1].strip() for ln in out[2:] if ":" in ln})
        facts.update({"governor": ln for ln in out[2:] if ":" not in ln})
        return facts

    def close(self) -> None:
        if self.remote_dir is not None:
            self._ssh("rm", "-rf", self.remote_dir, timeout=CONNECT_TIMEOUT_S + 20)
            self.remote_dir = None


class ADB(Transport):
    """``adb[:SERIAL]``: pushes models and the user's benchmark_model binary to /data/local/tmp."""

    scheme, usage = "adb", "adb[:SERIAL]"
    DIR = "/data/local/tmp/qfa"

    def __init__(self, target: str, cfg: RunConfig) -> None:
        super().__init__(target, cfg)
        serial = target.split(":", 1)[1] if ":" in target else None
        _check(serial, _SERIAL, "adb serial", "letters, digits and ._:-")
        bm = cfg.runtime.split(":", 1)[1] if cfg.runtime.startswith("benchmark_model:") else ""
        if not bm:
            raise BadTarget("adb needs --runtime benchmark_model:PATH (the LiteRT benchmark_model binary "
                            "for the phone's ABI; no pip package ships it)")
        if not Path(bm).is_file():
            raise BadTarget(f"--runtime benchmark_model:{bm}: no such file (the LiteRT benchmark_model binary for "
                            "the phone's ABI)")
        self.base = ["adb", *(["-s", serial] if serial else [])]
        self.bm = Path(bm).resolve()  # absolute: a name that starts with '-' is no option to adb

    def _adb(self, *args: str, timeout: float = 60) -> str:
        return _run([*self.base, *args], timeout, "adb " + args[0])

    def _shell(self, *args: str, timeout: float = 300) -> str:
        return self._adb("shell", " ".join(shlex.quote(a) for a in args), timeout=timeout)

    def connect(self) -> None:
        self._adb("wait-for-device", timeout=30)
        self._shell("mkdir", "-p", self.DIR, timeout=30)
        self._adb("push", str(self.bm), f"{self.DIR}/benchmark_model")
        self._shell("chmod", "755", f"{self.DIR}/benchmark_model")

    def push(self, paths: list[Path]) -> None:
        for p in paths:
            self._adb("push", str(p.resolve()), f"{self.DIR}/{p.name}")

    def run(self, paths: list[Path]) -> str:
        c = self.cfg
        from .runner import round_sizes
        outs = []
        for r, n in enumerate(round_sizes(c.runs, c.rounds)):  # round-robin, as the runner
            for p in paths:
                cmd = (["taskset", c.taskset] if c.taskset else []) + [
                    f"{self.DIR}/benchmark_model", f"--graph={self.DIR}/{p.name}", f"--num_threads={c.threads}",
                    f"--use_xnnpack={'true' if c.delegate == 'xnnpack' else 'false'}",
                    f"--warmup_runs={c.warmup if r == 0 else 1}", f"--num_runs={n}", "--warmup_min_secs=0",
                    "--min_secs=0",  # its defaults run each call >= 1.5 s whatever --num_runs says
                    *([f"--max_secs={c.time_per_model_ms / 1000 / c.rounds:g}"] if c.time_per_model_ms else [])]
                outs.append(self._shell(*cmd))
        return "\0".join(outs)

    def parse(self, out: str, paths: list[Path]) -> list[dict]:
        parts = [parse_benchmark_model(o) for o in out.split("\0")]
        if len(parts) % len(paths):
            raise TransportError(f"benchmark_model on {self.target} returned {len(parts)} runs for {len(paths)} models")
        rows = []
        for k in range(len(paths)):  # one model's runs, one per round
            runs = parts[k::len(paths)]
            n = sum(r["count"] for r in runs)
            avg = sum(r["median_us"] * r["count"] for r in runs) / n
            rows.append({"min_us": min(r["min_us"] for r in runs), "median_us": avg,
                         "p10_us": min(r["p10_us"] for r in runs), "p90_us": max(r["p90_us"] for r in runs),
                         "count": n, "cv": max(r["cv"] for r in runs), "stat": "avg"})
        return rows

    def cores(self) -> int | None:
        return _count(self._shell("nproc", timeout=30))  # an unreachable phone is an error here, not "unknown"

    def facts(self) -> dict:
        """What getprop and nproc say (a device without one: the table just says less)."""
        facts = {}
        for name, cmd in (("model", ("getprop", "ro.product.model")), ("abi", ("getprop", "ro.product.cpu.abi")),
                          ("soc", ("getprop", "ro.soc.model")), ("android", ("getprop", "ro.build.version.release")),
                          ("cores", ("nproc",))):
            try:
                facts[name] = self._shell(*cmd, timeout=30).strip()
            except TransportError:
                pass
        return facts


def parse_benchmark_model(out: str) -> dict:
    """Timing line of LiteRT's benchmark_model: 'count=200 first=.. curr=.. min=.. max=.. avg=.. std=..'
    (microseconds). benchmark_model reports no median: avg stands in for it, said in 'stat'."""
    lines = [ln for ln in out.splitlines() if "count=" in ln and "avg=" in ln]
    if not lines:
        raise TransportError("benchmark_model printed no timing line")
    f = dict(re.findall(r"(\w+)=([\d.e+-]+)", lines[-1]))
    avg, std = float(f["avg"]), float(f.get("std", 0))
    lo = float(f.get("min", avg))
    return {"min_us": lo, "median_us": avg, "p10_us": lo, "p90_us": float(f.get("max", avg)),
            "count": int(float(f["count"])), "cv": std / avg if avg else 0.0, "stat": "avg"}


TRANSPORTS: dict[str, type[Transport]] = {t.scheme: t for t in (Local, SSH, ADB)}

# device facts that must match for a table measured here (transport local) to describe this machine
FINGERPRINT = ("machine", "cpu", "cpu_id", "cpu_flags", "cores", "runtime")


def host_mismatch(meta: dict) -> list[str]:
    """How this machine differs from the one a table (its metadata ``meta``) was measured on:
    'field: table vs here' for each fingerprint field that differs or that the table does not
    state (a table that cannot say which machine it describes is not trusted for this one);
    empty when they match, or when the table was measured over ssh/adb (another device by design)."""
    if meta.get("transport", "local") != "local":
        return []
    theirs, ours = meta.get("device_facts") or {}, Local("local", RunConfig()).facts()
    return [f"{k}: {theirs[k]} vs {ours.get(k)}" if k in theirs else f"{k}: not stated by the table (here {ours.get(k)})"
            for k in FINGERPRINT if k in ours and (k not in theirs or theirs[k] != ours[k])]


def device_slug(facts: dict) -> str:
    """The device part of a table's name, from its facts: the CPU model and core design, e.g.
    ``intel-xeon-platinum-8488c-f6m143`` or ``amd-epyc-f25m17`` ("AMD EPYC" alone names a Zen 3
    and a Zen 4 alike); ``host`` when the CPU is not stated. Always a valid table name."""
    cpu = re.sub(r"\((r|tm)\)|\bcpu\b|@.*$", " ", str(facts.get("cpu", "")), flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:40].strip("-") or "host"
    ident = dict(re.findall(r"(family|model|implementer|part) (\w+)", str(facts.get("cpu_id", ""))))
    design = "".join(f"{k[0]}{ident[k]}" for k in ("family", "model", "implementer", "part") if k in ident)
    return f"{slug}-{re.sub(r'[^a-z0-9]+', '', design.lower())[:16]}" if design else slug


def make_transport(target: str, cfg: RunConfig = RunConfig()) -> Transport:
    """The transport for ``target``, chosen by its scheme (the part before ``:``)."""
    scheme = target.split(":", 1)[0]
    if scheme not in TRANSPORTS:
        raise BadTarget(f"unknown target {target!r}: " + " | ".join(t.usage for t in TRANSPORTS.values()))
    check_run_config(cfg)
    return TRANSPORTS[scheme](target, cfg)
