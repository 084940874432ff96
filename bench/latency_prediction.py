"""Latency-table prediction: accuracy against whole subnets measured end to end, and speed.

    python bench/latency_prediction.py [--table latency_tables/host-x86_64-1t.csv] [--n 100]

Measures N random subnets (the table's space and resolutions) end to end on this host and
prints RMSE %, the share within +-5% / +-10%, and predict_many throughput (genomes/s, 1 thread).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hw.table import LatencyTable  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--table", default=str(ROOT / "latency_tables" / "host-x86_64-1t.csv"))
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    t = LatencyTable.load(args.table)
    rng = np.random.default_rng(0)
    specs = [t.space.sample(rng) for _ in range(20000)]
    g = np.stack([t.space.encode(s) for s in specs])
    g = np.concatenate([g] * 5)
    t.predict_many(g[:10])  # build the lookup tables once
    t0 = time.perf_counter()
    t.predict_many(g)
    rate = len(g) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for s in specs[:2000]:
        t.predict(s)
    one = 2000 / (time.perf_counter() - t0)
    print(f"predict_many: {rate:,.0f} genomes/s (target >= 100,000); predict(spec) one by one: {one:,.0f} specs/s")
    table = Path(args.table)
    r = subprocess.run([sys.executable, str(ROOT / "hw" / "profile.py"), "--device", table.stem, "--out-dir",
                        str(table.parent), "--validate", str(args.n), "--json"], capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr.strip().splitlines()[-1])
    v = json.loads(r.stdout)
    print(f"{v['n']} random subnets measured end to end: RMSE {v['rmse_pct']:.2f}% (target <= 5), "
          f"within +-5%: {v['within_5pct']:.1f}%, within +-10%: {v['within_10pct']:.1f}% (target >= 95); "
          f"plain sum of entries: RMSE {v['raw_sum_rmse_pct']:.2f}%; plot {v.get('plot')}")


if __name__ == "__main__":
    main()
