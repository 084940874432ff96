"""Test-set top-1 of a trained supernet's subnets, with no per-subnet retraining: the max, the
min and 5 random architectures, each at W8A8, W4A4, W3A3 and W2A2 (calibrated on 2,000
training images each). Also the ablation table when several runs are given.

Which 2,000 images calibrate a 2-bit subnet moves its top-1 by ~0.4 points (sd).
``--calib-draws K`` calibrates each subnet on K draws and reports the test top-1's mean and sd
over them, and the test top-1 of the draw that ``qfa export/eval --calib-draws K`` would keep
(the best on the held-out training split).

    python bench/supernet_accuracy.py runs/fmnist_bq [runs/fmnist_minmax runs/fmnist_lsq] [--json]
    python bench/supernet_accuracy.py runs/fmnist_f2 --random 0 --calib-draws 5
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from qfa.nn.data import make_datasets
from qfa.nn.evaluate import accuracy, calibrate_best, evaluate_specs
from qfa.nn.supernet import Supernet

BITS = (8, 4, 3, 2)


def _draws(net: Supernet, spec, data: dict, calib: int, test: int | None, k: int) -> dict:
    """Test top-1 over ``k`` calibration draws: mean, sd, and that of the draw calibrate_best keeps."""
    tst = []

    def on_draw(seed: int, held: float) -> None:
        with net.active(spec):
            tst.append(accuracy(net, data["test"], spec.resolution, test))
    info = calibrate_best(net, spec, data, calib, k, on_draw=on_draw)
    held = info["holdout_top1_draws"]
    return {"mean": float(np.mean(tst)), "sd": float(np.std(tst, ddof=1)), "selected": tst[int(np.argmax(held))],
            "test_draws": tst, "holdout_draws": held}


def table(checkpoint: str, n_random: int, calib: int, test: int | None, seed: int, bits=BITS,
          calib_draws: int = 1) -> dict:
    net = Supernet.from_checkpoint(checkpoint)
    space = net.space
    data = make_datasets(None, space.resolutions[-1])
    rng = np.random.default_rng(seed)
    deployable = [b for b in space.bits if b != 32]
    archs = {"max": space.max_spec(bits=8), "min": space.min_spec(bits=8)}
    archs.update({f"random{i + 1}": space.sample(rng, bits=deployable) for i in range(n_random)})
    bits = [b for b in bits if b in space.bits]
    rows = {}
    for name, arch in archs.items():
        specs = [arch.with_bits(b) for b in bits]
        if calib_draws > 1:
            res = [_draws(net, s, data, calib, test, calib_draws) for s in specs]
            rows[name] = {"arch": str(arch.with_bits(8)), **{f"W{b}A{b}": r["mean"] for b, r in zip(bits, res)},
                          "draws": {f"W{b}A{b}": r for b, r in zip(bits, res)}}
            print(f"  {name:8s} " + "  ".join(f"W{b}A{b} {r['mean']:6.2f} +-{r['sd']:.2f} (kept {r['selected']:.2f})"
                                              for b, r in zip(bits, res)), flush=True)
            continue
        res = evaluate_specs(net, specs, data, calib, test)
        rows[name] = {"arch": str(arch.with_bits(8)), **{f"W{b}A{b}": r["top1"] for b, r in zip(bits, res)}}
        print(f"  {name:8s} " + "  ".join(f"W{b}A{b} {rows[name][f'W{b}A{b}']:6.2f}" for b in bits), flush=True)
    return {"checkpoint": checkpoint, "act_quant": net.act_quant, "calib_draws": calib_draws, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="run folders or last.pt files")
    ap.add_argument("--random", type=int, default=5)
    ap.add_argument("--calib-images", type=int, default=2000)
    ap.add_argument("--test-images", type=int, default=None, help="default: all 10,000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bits", default="8,4,3,2", help="uniform precisions to evaluate (default 8,4,3,2)")
    ap.add_argument("--calib-draws", type=int, default=1, metavar="K",
                    help="calibration draws per subnet: mean, sd and the held-out-selected draw (default 1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = []
    for ck in args.checkpoints:
        t = time.time()
        print(f"{ck}:", flush=True)
        out.append(table(ck, args.random, args.calib_images, args.test_images, args.seed,
                         tuple(int(b) for b in args.bits.split(",")), args.calib_draws))
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
