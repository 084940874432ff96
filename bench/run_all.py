"""Run every benchmark and print one table of figures and targets.

    python bench/run_all.py --checkpoint runs/fmnist_bq [--quick]

Needs a trained fmnist run (with predictor.safetensors for the search figures). Benchmarks run
one after another (never two at once: they time things).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--quick", action="store_true", help="fewer subnets/steps everywhere")
    args = ap.parse_args()
    q = args.quick
    jobs = [
        ("cost model", ["bench/cost_model.py"]),
        ("training step (fmnist, CPU)", ["bench/train_step.py", "--steps", "3" if q else "10"]),
        ("supernet accuracy", ["bench/supernet_accuracy.py", args.checkpoint] + (["--random", "1"] if q else [])),
        ("export fidelity", ["bench/export_fidelity.py", "--checkpoint", args.checkpoint, "--n", "2" if q else "5"]
         + (["--test-images", "2000"] if q else [])),
        ("latency prediction", ["bench/latency_prediction.py", "--n", "20" if q else "100"]),
        ("search", ["bench/search.py", "--checkpoint", args.checkpoint] + (["--gens", "50", "200"] if q else [])),
        ("precision speed", ["bench/precision_speed.py"]),
        ("label noise", ["bench/label_noise.py", "--checkpoint", args.checkpoint, "--n", "10" if q else "40"]),
    ]
    summary = []
    for name, cmd in jobs:
        t0 = time.time()
        print(f"=== {name}: python {' '.join(cmd)}", flush=True)
        r = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True)
        lines = [ln for ln in r.stdout.splitlines() if ln.strip() and "INFO" not in ln]
        print("\n".join(lines), flush=True)
        if r.returncode:
            lines = [f"FAILED: {(r.stderr.strip().splitlines() or ['?'])[-1]}"]
        summary.append((name, lines[-1] if lines else "", time.time() - t0))
    print("\n=== summary")
    w = max(len(n) for n, _, _ in summary)
    for name, last, secs in summary:
        print(f"{name:<{w}}  {secs:6.0f}s  {last}")


if __name__ == "__main__":
    main()
