#!/usr/bin/env python3
"""Device-side timing runner: needs only python3, numpy and ai-edge-litert (or tflite-runtime).

    python3 runner.py JOB.json      # JOB: {"models": [paths], "threads": 1, "delegate": "xnnpack",
                                    #       "warmup": 30, "runs": 200, "repeats": 3, "max_cv": 0.1}
Prints one JSON object per model on stdout as it finishes: median/p10/p90 (microseconds),
count and coefficient of variation; a noisy model (CV > max_cv) is re-measured up to
``repeats`` times and the steadiest run kept. Copied to the device by hw/profile.py.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


# export.targets.DELEGATES, repeated: this file runs alone on the device (tests check they agree)
DELEGATES = ("xnnpack", "builtin")


def _interpreter(path: str, threads: int | None, delegate: str = "xnnpack"):
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
    it = Interpreter(model_path=path, **kw)
    it.allocate_tensors()
    return it


def time_model(path: str, threads: int | None = 1, warmup: int = 30, runs: int = 200, repeats: int = 3,
               max_cv: float = 0.1, delegate: str = "xnnpack") -> dict:
    """Median/p10/p90 of single invokes (us), over fresh interpreters until CV <= max_cv."""
    best = None
    for attempt in range(max(1, repeats)):
        it = _interpreter(path, threads, delegate)
        d = it.get_input_details()[0]
        info = np.iinfo(d["dtype"]) if np.issubdtype(d["dtype"], np.integer) else None
        rng = np.random.default_rng(attempt)
        x = (rng.integers(info.min, info.max + 1, d["shape"]).astype(d["dtype"]) if info is not None
             else rng.standard_normal(d["shape"]).astype(d["dtype"]))
        it.set_tensor(d["index"], x)
        for _ in range(warmup):
            it.invoke()
        t = np.empty(runs)
        for i in range(runs):
            t0 = time.perf_counter_ns()
            it.invoke()
            t[i] = time.perf_counter_ns() - t0
        t /= 1000.0
        res = {"median_us": float(np.median(t)), "p10_us": float(np.percentile(t, 10)),
               "p90_us": float(np.percentile(t, 90)), "count": runs, "cv": float(t.std() / t.mean()),
               "attempts": attempt + 1}
        if best is None or res["cv"] < best["cv"]:
            best = res
        if res["cv"] <= max_cv:
            break
    return best


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        job = json.load(f)
    for path in job["models"]:
        res = time_model(path, job.get("threads", 1), job.get("warmup", 30), job.get("runs", 200),
                         job.get("repeats", 3), job.get("max_cv", 0.1), job.get("delegate", "xnnpack"))
        print(json.dumps({"model": path, **res}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
