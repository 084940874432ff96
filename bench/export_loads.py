"""Does every exported file load under every runtime configuration?

For each supernet (checkpoints given, plus a perturbed one with BatchNorm gains x10: scales
beyond what training leaves) exports ``--n`` random specs (plus max/min at 2 and 8 bits) for
every target, loads each file under XNNPACK and the builtin kernels, and counts refusals with
and without the XNNPACK fit (export.lower.fit_xnnpack). Writes one CSV row per file and
runtime configuration; prints the counts.

    python bench/export_loads.py --checkpoint runs/main/last.pt --n 200 --csv loads.csv
"""
from __future__ import annotations

import argparse
import copy
import csv
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from export.deploy import fold_subnet  # noqa: E402
from export.lower import fit_xnnpack, xnnpack_limit_errors  # noqa: E402
from export.targets import DELEGATES, TARGETS  # noqa: E402
from export.tflite import to_tflite  # noqa: E402
from export.verify import load_failures  # noqa: E402
from qfa.core.space import get_space  # noqa: E402
from qfa.nn.data import make_datasets  # noqa: E402
from qfa.nn.supernet import Supernet  # noqa: E402
from tests.conftest import boost_bn, perturb  # noqa: E402


def supernets(checkpoints: list[str], extreme: bool):
    for c in checkpoints:
        yield c, Supernet.from_checkpoint(c)
    if extreme:
        torch.manual_seed(1)
        net = Supernet(get_space("fmnist"))
        perturb(net, seed=1)
        boost_bn(net)
        yield "perturbed, BN gains x10", net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", action="append", default=[], help="a trained supernet (repeatable)")
    ap.add_argument("--no-extreme", action="store_true", help="skip the perturbed supernet")
    ap.add_argument("--n", type=int, default=200, help="random specs per supernet (plus max/min at 2 and 8 bits)")
    ap.add_argument("--csv", default="export_loads.csv")
    args = ap.parse_args()
    torch.set_num_threads(2)
    fields = ["supernet", "spec", "target", "delegate", "loads", "loads_unfitted", "error", "limit_errors_unfitted"]
    totals: dict[str, list[int]] = {}
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for name, net in supernets(args.checkpoint, not args.no_extreme):
            t0, data = time.time(), {}
            specs = net.space.sample_specs(f"max:2,min:2,max:8,min:8,random:{args.n}", seed=7)
            tot = totals.setdefault(name, [0, 0, 0, 0])  # files, refused, refused unfitted, graphs fitted
            for i, spec in enumerate(specs):
                if spec.resolution not in data:
                    data[spec.resolution] = make_datasets(None, spec.resolution)
                g0, *_ = fold_subnet(net, spec, data[spec.resolution], calib_images=128, range_images=128)
                for target in TARGETS.values():
                    raw = target.lower(copy.deepcopy(g0), fit=False)
                    before = xnnpack_limit_errors(raw)
                    bad = load_failures(to_tflite(fit_xnnpack(copy.deepcopy(raw)), target))
                    bad_raw = load_failures(to_tflite(raw, target))
                    tot[0] += 1
                    tot[1] += bool(bad)
                    tot[2] += bool(bad_raw)
                    tot[3] += bool(before)
                    for d in DELEGATES:
                        w.writerow({"supernet": name, "spec": str(spec), "target": target.name, "delegate": d,
                                    "loads": d not in bad, "loads_unfitted": d not in bad_raw, "error": bad.get(d, ""),
                                    "limit_errors_unfitted": "; ".join(before[:3])})
                f.flush()
                print(f"\r{name}: {i + 1}/{len(specs)} specs, {tot[1]} of {tot[0]} files refused "
                      f"(unfitted: {tot[2]}), {time.time() - t0:.0f} s", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
    for name, (n, bad, bad_raw, fitted) in totals.items():
        print(f"{name}: {n} files x {len(DELEGATES)} runtime configurations; refused by some configuration: "
              f"{bad} (without the XNNPACK fit: {bad_raw}; graphs outside XNNPACK's limits before the fit: {fitted})")
    print(f"rows: {args.csv}")


if __name__ == "__main__":
    main()
