#!/usr/bin/env python3
"""Is a table's miss the additive model's or its timing's? Times N random whole subnets and
every piece they are made of in one round-robin job now, and compares three figures:

- the sum of the pieces timed now vs the whole subnets (the additive model, no drift between),
- the table's plain sum vs the whole subnets (what the table predicts),
- each piece's table entry / its time now, by the entry's position in the table's CSV (in
  blocks of rows as the profile timed them): a host that was slow while a stretch of the table
  was measured shows as a stretch of ratios > 1.

    python bench/table_drift.py --table latency_tables/amd-epyc-zen4-1t-hswish-decomposed.csv --subnets 40
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hw.blocks import BlockFactory, overhead_model  # noqa: E402
from hw.build import write_model  # noqa: E402
from hw.runner import time_models  # noqa: E402
from hw.table import LatencyTable, read_sweeps  # noqa: E402
from hw.transport import Local, RunConfig  # noqa: E402


def _rmse(e: np.ndarray) -> str:
    return f"RMSE {100 * np.sqrt(np.mean(e ** 2)):.1f}%, within +-10% {100 * np.mean(np.abs(e) <= 0.1):.0f}%, " \
           f"bias {100 * e.mean():+.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", required=True)
    ap.add_argument("--subnets", type=int, default=40)
    ap.add_argument("--block", type=int, default=96, help="rows per block of the table's CSV (a profile's batch)")
    args = ap.parse_args()
    t = LatencyTable.load(args.table)
    if t.stat != "min_us":
        sys.exit(f"{args.table} predicts with {t.stat}; this compares fastest invokes (min_us)")
    fac, rng, specs = BlockFactory(t.space), np.random.default_rng(2), []
    while len(specs) < args.subnets:
        s = t.space.sample(rng)
        if s.resolution in t.resolutions:
            specs.append(s)
    pieces, spec_keys = {}, []
    for s in specs:
        ents = fac.pieces(s, t.target)
        spec_keys.append([e.key for e, _ in ents])
        pieces.update({e.key: str(write_model(blob)) for e, blob in ents if e.key not in pieces})
    keys = sorted(pieces)
    paths = [str(write_model(overhead_model(t.target)))] + [str(write_model(fac.whole(s, t.target))) for s in specs]
    rt = t.runtime
    res = [r["min_us"] for r in time_models(paths + [pieces[k] for k in keys], rt["threads"], delegate=rt["delegate"])]
    ov, whole, now = res[0], np.array(res[1:len(paths)]), dict(zip(keys, res[len(paths):]))
    now_sum = np.array([ov + sum(now[k] - ov for k in ks) for ks in spec_keys])
    table_sum = np.array([t.features(s)[0] for s in specs])
    f = Local("local", RunConfig()).facts()
    print(f"{f.get('cpu')} ({f.get('cpu_id')}, {f.get('cores')} cores), {f.get('runtime')}")
    print(f"{len(specs)} whole subnets and their {len(keys)} pieces, timed together ({rt}):")
    print(f"  sum of the pieces timed now vs whole: {_rmse(now_sum / whole - 1)}")
    print(f"  the table's plain sum vs whole:      {_rmse(table_sum / whole - 1)}")
    print(f"  per-invoke overhead now {ov:.3f} us, table {t.overhead:.3f} us")
    first_row = {}
    for i, (key, _) in enumerate(read_sweeps(Path(args.table).with_suffix(".csv"), "min_us")[0]):
        first_row.setdefault(key, i)
    ratio = {k: t.rows[k] / now[k] for k in keys}
    print(f"  table entry / now: percentiles 5/25/50/75/95: "
          f"{' '.join(f'{v:.3f}' for v in np.percentile(list(ratio.values()), [5, 25, 50, 75, 95]))}")
    print("  by the entry's first row in the table (median, min, max of the ratio):")
    for b in range(0, max(first_row.values()) + 1, args.block):
        r = [ratio[k] for k in keys if b <= first_row[k] < b + args.block]
        if r:
            print(f"    rows {b:5d}-{b + args.block - 1:5d}: {len(r):3d} entries, {np.median(r):.3f} "
                  f"({min(r):.3f}-{max(r):.3f})")


if __name__ == "__main__":
    main()
