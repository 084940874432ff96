#!/usr/bin/env python3
"""How repeatable is a latency on this machine, and which statistic predicts whole subnets
from their pieces?

N random subnets (whole model + the pieces a latency table is made of) are timed round-robin:
ROUNDS passes over all models, RUNS invokes each, every single invoke kept. The rounds are
split in two halves (even / odd); per statistic it prints the RMSE between the halves' figures
for the same whole subnet (repeatability), and between the sum of the pieces (one half) and
the whole subnet (the other half): what a table could reach with that statistic.

    python bench/timing_noise.py --subnets 30 --rounds 16 --runs 40
    python bench/timing_noise.py --subnets 30 --rounds 8 --runs 25 --caps 50,100,200  # as a table times
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from export.targets import TARGETS  # noqa: E402
from export.tflite import to_tflite  # noqa: E402
from hw.blocks import BlockFactory, overhead_model, split  # noqa: E402
from hw.profiling import TIME_PER_MODEL_MS  # noqa: E402
from hw.runner import invokes_within, ready  # noqa: E402
from hw.transport import Local, RunConfig  # noqa: E402
from qfa.core.space import get_space  # noqa: E402

STATS = {  # per model: its invokes, one row per round
    "median of one round (as one burst)": lambda t: np.median(t[0]),
    "median of round medians": lambda t: np.median(np.median(t, 1)),
    "mean of round medians": lambda t: np.mean(np.median(t, 1)),
    "p10 of all invokes": lambda t: np.percentile(t, 10),
    "min of all invokes (hw.runner)": lambda t: t.min(),
}


def capped(t: np.ndarray, ms: float) -> np.ndarray:
    """The invokes a time cap of ``ms`` a model keeps (``hw/profile.py --time-per-model-ms``): the
    first of each round, as many as ``hw.runner.invokes_within`` allows (judged by the fastest
    invoke, as the runner judges by its warm-up)."""
    n = invokes_within(ms, t.min(), t.size, len(t))
    return t[:, :-(-n // len(t))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subnets", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--runs", type=int, default=40, help="invokes per model and round")
    ap.add_argument("--target", default="tflite-int8-hswish-decomposed")
    ap.add_argument("--caps", help="time caps (ms a model, comma-separated) whose kept invokes' fastest is a "
                    "statistic too (default: hw/profile.py's for the target)")
    args = ap.parse_args()
    caps = args.caps or str(TIME_PER_MODEL_MS[TARGETS[args.target].float_io])
    capped_stats = {f"min, invokes capped at {ms:g} ms a model": lambda t, ms=ms: capped(t, ms).min()
                    for ms in map(float, caps.split(","))}
    STATS.update(capped_stats)
    f = Local("local", RunConfig()).facts()
    print(f"{f.get('cpu')} ({f.get('cpu_id')}, {f.get('cores')} cores), {f.get('runtime')}, 1 thread, XNNPACK")
    tgt, space = TARGETS[args.target], get_space("fmnist")
    factory, rng, tmp = BlockFactory(space), np.random.default_rng(2), Path(tempfile.mkdtemp())
    models, pieces = {}, []

    def load(name: str, blob: bytes):
        (tmp / name).write_bytes(blob)
        models[name] = ready(str(tmp / name))
    load("overhead", overhead_model(tgt))
    for i in range(args.subnets):
        spec = space.sample(rng)
        g = tgt.lower(factory.graph(spec))
        load(f"w{i}", to_tflite(g, tgt))
        ps = split(g, spec)
        for j, p in enumerate(ps):
            load(f"p{i}_{j}", to_tflite(p, tgt))
        pieces.append(len(ps))
    times = {n: np.empty((args.rounds, args.runs)) for n in models}
    t0 = time.time()
    for r in range(args.rounds):
        for n, it in models.items():
            for k in range(args.runs):
                a = time.perf_counter_ns()
                it.invoke()
                times[n][r, k] = (time.perf_counter_ns() - a) / 1000
    print(f"{len(models)} models, {args.rounds} rounds x {args.runs} invokes in {time.time() - t0:.0f} s")
    halves = (slice(0, None, 2), slice(1, None, 2))
    rmse = lambda e: 100 * float(np.sqrt(np.mean(np.square(e))))  # noqa: E731
    print(f"{'statistic':42s} {'repeat RMSE':>11s} {'sum vs whole RMSE':>17s} {'within 10%':>10s} {'bias':>6s}")
    for name, stat in STATS.items():
        rep, err = [], []
        whole = (lambda t: t.min()) if name in capped_stats else stat  # a profile times whole subnets in full
        for i, n in enumerate(pieces):
            a, b = (lambda m, h=h: stat(times[m][h]) for h in halves)
            s = sum(a(f"p{i}_{j}") for j in range(n)) - (n - 1) * a("overhead")
            rep.append(b(f"w{i}") / a(f"w{i}") - 1)
            err.append(s / whole(times[f"w{i}"][halves[1]]) - 1)
        err = np.array(err)
        print(f"{name:42s} {rmse(rep):10.1f}% {rmse(err):16.1f}% {100 * np.mean(np.abs(err) <= 0.1):9.0f}% "
              f"{100 * err.mean():+5.1f}%")


if __name__ == "__main__":
    main()
