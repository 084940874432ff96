#!/usr/bin/env python3
"""Device-side timing runner: needs only python3, numpy and ai-edge-litert (or tflite-runtime).

    python3 runner.py JOB.json      # JOB: {"models": [paths], "threads": 1, "delegate": "xnnpack",
                                    #       "warmup": 10, "runs": 200, "rounds": 8, "time_per_model_ms": 50}
Prints one JSON object per model on stdout: min/median/p10/p90 of single invokes
(microseconds), count and coefficient of variation. The models are timed round-robin: ``rounds``
passes over all of them, ``runs / rounds`` invokes each, so that each model's invokes are
spread over the whole job. ``time_per_model_ms`` (optional) caps a model's timed invokes at
about that much time, judged by its fastest warm-up invoke (never fewer than two a pass), and its
warm-up at a quarter of it (never fewer than two invokes): the slowest tenth of a table's models
took two thirds of its time, and their fastest of fewer invokes adds up as well (docs/results.md,
"Profiling time").
``min_us``, the fastest invoke, is the device's uncontended speed:
on a shared 2-core "AMD EPYC" Zen 4 VM (ai-edge-litert 2.1, XNNPACK, 1 thread) whose speed
drifted up to 1.6x within seconds, it repeated within 1.8% RMSE where a 200-invoke median
repeated within 24% (docs/results.md, "Timing on a noisy host").
Copied to the device by hw/profile.py.

    python3 runner.py JOB.json      # JOB: {"models": [paths], "inputs": [.npy paths], "out_dir": dir,
                                    #       "threads": 1, "delegate": "builtin", "keep_tensors": 2}
computes instead: each model's outputs on its inputs (one invoke per row of the .npy, already in
the model's input dtype) into ``out_dir/I.npy``, and every tensor of the first ``keep_tensors``
rows into ``out_dir/I_tensors.npz`` (keys ``ROW|NAME``), for comparing a device's integers with
the simulation op by op (bench/runtime_fidelity.py).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


# export.targets.DELEGATES, repeated: this file runs alone on the device (tests check they agree)
DELEGATES = ("xnnpack", "builtin")


def _interpreter(path: str, threads: int | None, delegate: str = "xnnpack", preserve: bool = False):
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # a Raspberry Pi with tflite-runtime only
        from tflite_runtime.interpreter import Interpreter, OpResolverType
    if delegate not in DELEGATES:
        raise ValueError(f"unknown delegate {delegate!r}; expected one of {DELEGATES}")
    kw = {} if delegate == "xnnpack" else {"experimental_op_resolver_type":
                                           OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    if threads is not None:  # None: the interpreter's own default
        kw["num_threads"] = threads
    if preserve:
        kw["experimental_preserve_all_tensors"] = True
    it = Interpreter(model_path=path, **kw)
    it.allocate_tensors()
    return it


def ready(path: str, threads: int | None = 1, delegate: str = "xnnpack", seed: int = 0):
    """An interpreter of ``path`` with a random input set (timing does not depend on the values)."""
    it = _interpreter(path, threads, delegate)
    d = it.get_input_details()[0]
    rng = np.random.default_rng(seed)
    if np.issubdtype(d["dtype"], np.integer):
        info = np.iinfo(d["dtype"])
        it.set_tensor(d["index"], rng.integers(info.min, info.max + 1, d["shape"]).astype(d["dtype"]))
    else:
        it.set_tensor(d["index"], rng.standard_normal(d["shape"]).astype(d["dtype"]))
    return it


def round_sizes(runs: int, rounds: int) -> list[int]:
    """The invokes of each round-robin pass: ``runs`` spread over at most ``rounds`` passes."""
    rounds = max(1, min(rounds, runs))
    return [runs // rounds + (r < runs % rounds) for r in range(rounds)]


def invokes_within(time_per_model_ms: float | None, warm_us: float, runs: int, rounds: int) -> int:
    """Timed invokes of a model whose fastest warm-up invoke took ``warm_us``: ``runs``, or as
    many as fit ``time_per_model_ms``, but at least two a pass (the fastest of few is still spread in time)."""
    if time_per_model_ms is None:
        return runs
    return min(runs, max(2 * rounds, int(time_per_model_ms * 1000 / max(warm_us, 1e-3))))


def time_models(paths: list[str], threads: int | None = 1, warmup: int = 10, runs: int = 200, rounds: int = 8,
                delegate: str = "xnnpack", time_per_model_ms: float | None = None) -> list[dict]:
    """Time each model round-robin (see the module docstring); one interpreter per model."""
    its, plans = [], []
    for k, path in enumerate(paths):
        it = ready(path, threads, delegate, seed=k)
        warm, spent = float("inf"), 0.0
        for i in range(max(warmup, 1 if time_per_model_ms is not None else 0)):
            t0 = time.perf_counter_ns()
            it.invoke()
            us = (time.perf_counter_ns() - t0) / 1000.0
            warm, spent = min(warm, us), spent + us
            if time_per_model_ms is not None and i >= 1 and spent > 250 * time_per_model_ms:
                break  # a slow model is warm after two invokes: the rest of its warm-up would cost more than its timing
        its.append(it)
        plans.append(round_sizes(invokes_within(time_per_model_ms, warm, runs, rounds), rounds))
    times = [[] for _ in its]
    for r in range(max(len(p) for p in plans)):
        for it, t, plan in zip(its, times, plans):
            for _ in range(plan[r] if r < len(plan) else 0):
                t0 = time.perf_counter_ns()
                it.invoke()
                t.append(time.perf_counter_ns() - t0)
    out = []
    for t in times:
        t = np.asarray(t, np.float64) / 1000.0
        out.append({"min_us": float(t.min()), "median_us": float(np.median(t)), "p10_us": float(np.percentile(t, 10)),
                    "p90_us": float(np.percentile(t, 90)), "count": len(t), "cv": float(t.std() / t.mean())})
    return out


def time_model(path: str, threads: int | None = 1, warmup: int = 10, runs: int = 200, rounds: int = 8,
               delegate: str = "xnnpack", time_per_model_ms: float | None = None) -> dict:
    """:func:`time_models` of one model."""
    return time_models([path], threads, warmup, runs, rounds, delegate, time_per_model_ms)[0]


def compute_outputs(paths: list[str], inputs: list[str], out_dir: str, threads: int | None = 1,
                    delegate: str = "xnnpack", keep_tensors: int = 0) -> None:
    """Write each model's outputs on its inputs (and, for the first ``keep_tensors`` inputs,
    every tensor) under ``out_dir`` (see the module docstring)."""
    for k, (path, inp) in enumerate(zip(paths, inputs)):
        x = np.load(inp, allow_pickle=False)
        it = _interpreter(path, threads, delegate, preserve=keep_tensors > 0)
        i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
        outs, kept = [], {}
        for row in range(len(x)):
            it.set_tensor(i, x[row:row + 1])
            it.invoke()
            outs.append(it.get_tensor(o).copy())
            if row < keep_tensors:
                kept.update({f"{row}|{d['name']}": it.get_tensor(d["index"]).copy()
                             for d in it.get_tensor_details() if d["name"]})
        np.save(os.path.join(out_dir, f"{k}.npy"), np.concatenate(outs))
        if kept:
            np.savez(os.path.join(out_dir, f"{k}_tensors.npz"), **kept)


def outputs_in(python: list[str], paths: list[str], inputs: list[str], out_dir: str, delegate: str = "xnnpack",
               keep_tensors: int = 0, timeout: float | None = None) -> list[tuple[np.ndarray, dict[int, dict]]]:
    """Host side of :func:`compute_outputs`: run this file in another Python (``python``, a
    command: an arm64 one under qemu-user, say) and read back, per model, its outputs and
    {row: {tensor name: value}} of the first ``keep_tensors`` rows. Raises RuntimeError with
    that Python's last error line."""
    import subprocess
    job = os.path.join(out_dir, "job.json")
    with open(job, "w") as f:
        json.dump({"models": paths, "inputs": inputs, "out_dir": out_dir, "threads": 1, "delegate": delegate,
                   "keep_tensors": keep_tensors}, f)
    r = subprocess.run([*python, os.path.abspath(__file__), job], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(python)}: {(r.stderr.strip().splitlines() or ['failed'])[-1]}")
    out = []
    for k in range(len(paths)):
        kept: dict[int, dict] = {}
        if keep_tensors:
            with np.load(os.path.join(out_dir, f"{k}_tensors.npz"), allow_pickle=False) as z:
                for key in z.files:
                    row, name = key.split("|", 1)
                    kept.setdefault(int(row), {})[name] = z[key]
        out.append((np.load(os.path.join(out_dir, f"{k}.npy"), allow_pickle=False), kept))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        job = json.load(f)
    if "inputs" in job:
        compute_outputs(job["models"], job["inputs"], job["out_dir"], job.get("threads", 1),
                        job.get("delegate", "xnnpack"), job.get("keep_tensors", 0))
        return 0
    res = time_models(job["models"], job.get("threads", 1), job.get("warmup", 10), job.get("runs", 200),
                      job.get("rounds", 8), job.get("delegate", "xnnpack"), job.get("time_per_model_ms"))
    for path, r in zip(job["models"], res):
        print(json.dumps({"model": path, **r}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
