"""Test-set top-1 of a trained supernet's subnets, with no per-subnet retraining: the max, the
min and 5 random architectures, each at W8A8, W4A4, W3A3 and W2A2 (calibrated on 2,000
training images each). Also the ablation table when several runs are given.

A 2-bit subnet's top-1 moves by ~0.4 points (sd) between calibration draws of the same size:
``--calib-seeds K`` reports the mean and sd over K draws instead of the one default draw.

    python bench/supernet_accuracy.py runs/fmnist_bq [runs/fmnist_minmax runs/fmnist_lsq] [--json]
    python bench/supernet_accuracy.py runs/fmnist_f2 --random 0 --calib-seeds 5
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from qfa.data import make_datasets
from qfa.evaluate import CALIB_SEED, evaluate_specs
from qfa.supernet import Supernet

BITS = (8, 4, 3, 2)


def table(checkpoint: str, n_random: int, calib: int, test: int | None, seed: int, bits=BITS,
          calib_seeds: int = 1) -> dict:
    net = Supernet.from_checkpoint(checkpoint)
    space = net.space
    data = make_datasets(None, space.resolutions[-1])
    rng = np.random.default_rng(seed)
    deployable = [b for b in space.bits if b != 32]
    archs = {"max": space.max_spec(bits=8), "min": space.min_spec(bits=8)}
    archs.update({f"random{i + 1}": space.sample(rng, bits=deployable) for i in range(n_random)})
    rows = {}
    for name, arch in archs.items():
        bits = [b for b in bits if b in space.bits]
        top1 = np.array([[r["top1"] for r in evaluate_specs(net, [arch.with_bits(b) for b in bits], data["train"],
                                                             data["test"], calib, test, calib_seed=CALIB_SEED + 97 * k)]
                         for k in range(calib_seeds)])  # draw x bits
        rows[name] = {"arch": str(arch.with_bits(8)), **{f"W{b}A{b}": float(m) for b, m in zip(bits, top1.mean(0))}}
        if calib_seeds > 1:
            rows[name].update({f"W{b}A{b}_sd": float(v) for b, v in zip(bits, top1.std(0, ddof=1))})
            rows[name].update({f"W{b}A{b}_draws": list(map(float, c)) for b, c in zip(bits, top1.T)})
        sd = lambda b: f" +-{rows[name][f'W{b}A{b}_sd']:.2f}" if calib_seeds > 1 else ""  # noqa: E731
        print(f"  {name:8s} " + "  ".join(f"W{b}A{b} {rows[name][f'W{b}A{b}']:6.2f}{sd(b)}" for b in bits), flush=True)
    return {"checkpoint": checkpoint, "act_quant": net.act_quant, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="run folders or last.pt files")
    ap.add_argument("--random", type=int, default=5)
    ap.add_argument("--calib-images", type=int, default=2000)
    ap.add_argument("--test-images", type=int, default=None, help="default: all 10,000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bits", default="8,4,3,2", help="uniform precisions to evaluate (default 8,4,3,2)")
    ap.add_argument("--calib-seeds", type=int, default=1, help="calibration draws per subnet: mean and sd (default 1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = []
    for ck in args.checkpoints:
        t = time.time()
        print(f"{ck}:", flush=True)
        out.append(table(ck, args.random, args.calib_images, args.test_images, args.seed,
                         tuple(int(b) for b in args.bits.split(",")), args.calib_seeds))
        print(f"  ({time.time() - t:.0f} s)", flush=True)
    if len(out) > 1:
        print("ablation (test top-1, same recipe and budget):")
        print(f"  {'quantizer':10s} " + " ".join(f"{'max ' + f'W{b}A{b}':>12s} {'min ' + f'W{b}A{b}':>12s}" for b in (3, 2)))
        for t in out:
            r = t["rows"]
            print(f"  {t['act_quant']:10s} " + " ".join(f"{r['max'][f'W{b}A{b}']:12.2f} {r['min'][f'W{b}A{b}']:12.2f}"
                                                       for b in (3, 2)))
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
