"""Latency-table prediction: accuracy against whole subnets measured end to end, and speed.

    python bench/latency_prediction.py [--table latency_tables/amd-epyc-zen4-1t.csv] [--n 100]
    python bench/latency_prediction.py --table T --n 0 --trained RUN --n-trained 20

Measures N random subnets (the table's space and resolutions) end to end on this host and
prints RMSE %, the share within +-5% / +-10%, and predict_many throughput (genomes/s, 1 thread).
With ``--trained RUN``: also subnets of that trained supernet as ``qfa export`` writes them for
the table's target (trained scales: ops a runtime may take or refuse by scale), timed
round-robin by the table's statistic.
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
    ap.add_argument("--table", default=str(ROOT / "latency_tables" / "amd-epyc-zen4-1t.csv"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--trained", help="a trained run (checkpoint) whose exported subnets are measured too")
    ap.add_argument("--n-trained", type=int, default=20)
    ap.add_argument("--calib-images", type=int, default=1000, help="calibration of the exported subnets")
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
    if args.trained:
        trained(t, args)
    if not args.n:
        return
    table = Path(args.table)
    r = subprocess.run([sys.executable, str(ROOT / "hw" / "profile.py"), "--device", table.stem, "--out-dir",
                        str(table.parent), "--validate", str(args.n), "--json"], capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr.strip().splitlines()[-1])
    v = json.loads(r.stdout)
    print(f"{v['n']} random subnets measured end to end: RMSE {v['rmse_pct']:.2f}% (target <= 5), "
          f"within +-5%: {v['within_5pct']:.1f}%, within +-10%: {v['within_10pct']:.1f}% (target >= 95); "
          f"plain sum of entries: RMSE {v['raw_sum_rmse_pct']:.2f}%; plot {v.get('plot')}")


def trained(t: LatencyTable, args) -> None:
    import tempfile
    from export.deploy import export_subnet
    from hw.runner import time_models
    from qfa.nn.data import make_datasets
    from qfa.nn.supernet import Supernet
    net = Supernet.from_checkpoint(args.trained)
    rng = np.random.default_rng(3)
    bits = None if t.target.float_io else (2, 3, 4, 8)  # an integer target deploys no FP conv
    specs = [s for s in (net.space.sample(rng, bits=bits) for _ in range(10 * args.n_trained))
             if s.resolution in t.resolutions][:args.n_trained]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, spec in enumerate(specs):
            paths.append(str(Path(tmp) / f"m{i}.tflite"))
            export_subnet(net, spec, make_datasets(net.data, spec.resolution, space=net.space), Path(paths[-1]),
                          t.target.name, calib_images=args.calib_images)
        rt = t.runtime
        passes = np.array([[r[t.stat] for r in time_models(paths, rt["threads"], delegate=rt["delegate"])]
                           for _ in range(2)])  # twice: is a miss the subnet's or the timing's?
    meas = passes.min(0) if t.stat == "min_us" else passes.mean(0)
    pred = np.array([t.predict(s) for s in specs])
    err = pred / (meas / 1000) - 1
    repeat = passes[1] / passes[0] - 1
    plain = np.array([t.features(s)[0] for s in specs]) / meas - 1  # the entries' sum, no fitted correction
    print(f"  plain sum of entries: RMSE {100 * np.sqrt(np.mean(plain ** 2)):.2f}%, within +-10%: "
          f"{100 * np.mean(np.abs(plain) <= 0.1):.0f}%")
    print(f"  the same files timed twice: repeat RMSE {100 * np.sqrt(np.mean(repeat ** 2)):.2f}%, worst "
          f"{100 * repeat[np.argmax(np.abs(repeat))]:+.1f}%")
    for i in np.argsort(-np.abs(err))[:3]:
        print(f"  {100 * err[i]:+.1f}%: predicted {pred[i]:.4f} ms, measured {passes[0][i] / 1000:.4f} / "
              f"{passes[1][i] / 1000:.4f} ms  {specs[i]}")
    print(f"{len(specs)} subnets of {args.trained} exported for {t.target.name} and timed ({t.stat}): RMSE "
          f"{100 * np.sqrt(np.mean(err ** 2)):.2f}%, within +-5%: {100 * np.mean(np.abs(err) <= 0.05):.0f}%, "
          f"within +-10%: {100 * np.mean(np.abs(err) <= 0.1):.0f}%, worst {100 * err[np.argmax(np.abs(err))]:+.1f}%",
          flush=True)


if __name__ == "__main__":
    main()
