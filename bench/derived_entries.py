#!/usr/bin/env python3
"""What deriving a float table's other-input-format entries costs, measured on full tables.

A float profile times a block whose input is in the other format than its output's only at the
smallest kernel and expand ratio and derives the rest (``hw.table.LatencyTable.derived``). On a
table that timed every key (the float tables shipped before that), this drops the keys a
profile no longer times, derives them again, and prints the derived entries against their
measured values and the predictions of N random subnets against the full table's. No timing.

    python bench/derived_entries.py                       # every full float table shipped
    python bench/derived_entries.py --table latency_tables/amd-epyc-zen4-1t-f32-hswish-decomposed.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hw.entries import entries  # noqa: E402
from hw.table import LatencyTable  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", action="append", help="a float table that timed every key (repeatable; default: "
                    "every shipped float table that did)")
    ap.add_argument("--subnets", type=int, default=2000)
    args = ap.parse_args()
    paths = args.table or sorted(str(p) for p in (ROOT / "latency_tables").glob("*f32*.csv"))
    for path in paths:
        full = LatencyTable.load(path)
        timed = {e.key for p in full.probes(full.resolutions) for e in entries(p, full.target)}
        every = {e.key for p in full.probes(full.resolutions, every_input=True) for e in entries(p, full.target)}
        if not full.target.float_io or not every <= full.rows.keys():
            print(f"{Path(path).stem}: not a float table that timed every key, skipped")
            continue
        part = LatencyTable({k: v for k, v in full.rows.items() if k in timed}, full.meta, full.space)
        d = np.array([(v - full.rows[k]) / full.rows[k] for k, v in part.derived.items()]) * 100
        rng = np.random.default_rng(5)
        specs = [full.space.sample(rng) for _ in range(args.subnets)]
        want, got = full.predict_specs(specs), part.predict_specs(specs)
        r = (got - want) / want * 100
        print(f"{Path(path).stem}: {len(timed)} of {len(every)} keys timed, {len(d)} derived; derived vs measured "
              f"median {np.median(d):+.2f}%, RMSE {np.sqrt(np.mean(d ** 2)):.2f}%; {args.subnets} random subnets vs "
              f"the full table: RMSE {np.sqrt(np.mean(r ** 2)):.2f}%, worst {np.abs(r).max():.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
