"""NSGA-II search speed and convergence; answer time from a saved Pareto set.

    python bench/search.py --checkpoint runs/fmnist_bq [--paper-table latency_tables/amd-epyc-zen4-1t-paper-r128.csv]

fmnist: the trained predictor (RUN/predictor.safetensors) and the shipped host table; fronts
after 50..1000 generations (population 500) compared by hypervolume, to show how many
generations the front needs. paper: the same search at the paper's scale (500 x 1000) over a
measured paper-space table; its predictor is fitted on SYNTHETIC labels (there is no trained
paper supernet here): it times the search, it says nothing about accuracy.

    python bench/search.py --checkpoint RUN --configurations T1.csv T2.csv [T3.csv ...]

configurations: several tables of one target (runtime configurations) searched in one NSGA-II
run, each subnet in its fastest (``qfa.nas.search.Fastest``, what ``qfa run`` and ``qfa search``
do), against one search per table and the best answer over them (the toolkit's way before),
at the main job's and ``qfa search``'s population and generations (the one search also at as
many generations as the searches per table take in all): search seconds, and the best
predicted top-1 under 30 budgets spread over the range.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hw.table import LatencyTable  # noqa: E402
from qfa.core.cost import CostModel  # noqa: E402
from qfa.nas.predictor import Predictor, fit, strata_specs  # noqa: E402
from qfa.nas.search import Fastest, ParetoSet, search_front  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def hypervolume(front: dict, ref: np.ndarray, scale: np.ndarray) -> float:
    from pymoo.indicators.hv import HV
    F = np.column_stack([-front["top1"], front["latency_ms"], front["bytes"]]) / scale
    return float(HV(ref_point=ref / scale)(F))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="run folder with predictor.safetensors")
    ap.add_argument("--table", default=str(ROOT / "latency_tables" / "amd-epyc-zen4-1t-hswish-decomposed.csv"))
    ap.add_argument("--paper-table", help="a paper-space table (hw/profile.py --space paper ...)")
    ap.add_argument("--gens", type=int, nargs="+", default=[50, 100, 200, 400, 1000])
    ap.add_argument("--budgets", type=float, nargs="*", default=None,
                    help="latency budgets (ms) to answer from the front, then export, verify on the test set "
                         "and measure end to end (default: 3 spread over the front)")
    ap.add_argument("--configurations", nargs="+", metavar="TABLE", help="compare one search over these tables "
                    "with one search per table (and nothing else)")
    args = ap.parse_args()
    run = Path(args.checkpoint)
    run = run if run.is_dir() else run.parent
    pred = Predictor.load(run / "predictor.safetensors")
    if args.configurations:
        return configurations(pred, {Path(t).stem: LatencyTable.load(t) for t in args.configurations})
    table = LatencyTable.load(args.table)
    space = table.space
    fronts = {}
    print("fmnist space, population 500 (answers below keep predicted latency under budget / 1.05):")
    for g in args.gens:
        fronts[g] = search_front(space, pred, table, pop=500, gens=g, seed=0)
    allF = np.concatenate([np.column_stack([-f["top1"], f["latency_ms"], f["bytes"]]) for f in fronts.values()])
    ref = allF.max(0) + np.abs(allF.max(0)) * 0.01
    scale = np.abs(allF).max(0)
    best = max(hypervolume(f, ref, scale) for f in fronts.values())
    for g, f in fronts.items():
        print(f"  {g:5d} generations: {f['seconds']:6.1f} s, {len(f['genomes']):4d} non-dominated subnets, "
              f"hypervolume {hypervolume(f, ref, scale) / best * 100:6.2f}% of the best")
    import json
    import subprocess
    times = []
    lat = fronts[max(args.gens)]["latency_ms"]
    for b in np.linspace(lat.min() * 1.1, lat.max(), 6):  # the first call searches and saves if needed
        r = subprocess.run([sys.executable, "-m", "qfa", "search", "--checkpoint", str(run), "--table", args.table,
                            "--latency-ms", f"{b:.3f}", "--json"], capture_output=True, text=True, cwd=ROOT)
        d = json.loads(r.stdout)
        if d["from_saved_set"]:
            times.append(d["answer_ms"])
    print(f"qfa search answering from the saved set (in-process, loading included), {len(times)} budgets: "
          f"median {np.median(times):.1f} ms, max {max(times):.1f} ms (target <= 50 ms)")
    front = fronts[max(args.gens)]
    budgets = args.budgets if args.budgets is not None else list(np.quantile(front["latency_ms"], [0.2, 0.5, 0.8]).round(3))
    if budgets:
        from hw.runner import time_model
        from qfa.nn.data import make_datasets
        from export.deploy import export_subnet, verify_tflite
        from qfa.nn.evaluate import accuracy
        from qfa.nn.supernet import Supernet
        net = Supernet.from_checkpoint(run)
        pset = ParetoSet.from_front(space, front, table.target.name)
        print("budget   predicted / true held-out top-1 / test top-1 (PyTorch, TFLite)   predicted / measured latency")
        with tempfile.TemporaryDirectory() as tmp:
            for b in budgets:
                best = pset.answer(float(b), margin=0.05)
                spec = space.parse(json.dumps(best["spec"]))
                data = make_datasets(None, spec.resolution)
                res = export_subnet(net, spec, data, Path(tmp) / "m.tflite", table.target.name)
                net.eval()  # export left the net calibrated for spec: its label, as the predictor saw labels
                with net.active(spec):
                    held = accuracy(net, data["holdout"], spec.resolution)
                v = verify_tflite(res["bytes"], res["graph"], res["subnet"], data["test"])
                ms = time_model(str(Path(tmp) / "m.tflite"))[table.stat] / 1000
                print(f"{b:6.3f} ms   {best['top1']:6.2f}% / {held:6.2f}% / "
                      f"{v['pytorch_top1']:6.2f}%, {v['tflite_top1']:6.2f}%"
                      f"   {best['latency_ms']:.3f} / {ms:.3f} ms ({(ms / best['latency_ms'] - 1) * 100:+.1f}%)"
                      f"  {'UNDER' if ms <= b else 'OVER'} budget", flush=True)
    if args.paper_table:
        ptable = LatencyTable.load(args.paper_table)
        ps = ptable.space
        specs = [s for _, s in strata_specs(ps, 200, seed=0)]
        c = CostModel(ps).of_specs(specs)
        y = 60 + 3 * np.log(c["macs"] / 1e6) + np.log(c["bitops"] / 1e9)  # SYNTHETIC labels: timing only
        ppred, _ = fit(ps, [{"spec": s.dumps(), "top1": float(v)} for s, v in zip(specs, y)], epochs=50)
        f = search_front(ps, ppred, ptable, pop=500, gens=1000, seed=0)
        print(f"paper space, 500 x 1000: {f['seconds']:.1f} s (target <= 60 s), {len(f['genomes'])} non-dominated subnets")


def configurations(pred: Predictor, tables: dict[str, LatencyTable]) -> None:
    """One search over every configuration (at the same generations, and at as many in all as
    the searches per table take) vs one search per table, merged at each budget."""
    both = Fastest(tables)
    space, k = both.space, len(tables)
    for pop, gens in ((200, 100), (500, 200)):
        apart = {n: search_front(space, pred, t, pop=pop, gens=gens, seed=0) for n, t in tables.items()}
        joint = {g: search_front(space, pred, both, pop=pop, gens=g, seed=0) for g in (gens, gens * k)}
        lo = min(f["latency_ms"].min() for f in (*joint.values(), *apart.values()))
        hi = max(f["latency_ms"].max() for f in (*joint.values(), *apart.values()))
        budgets = np.geomspace(lo * 1.001, hi, 30)

        def best(fronts, b: float) -> float:
            return max((float(f["top1"][f["latency_ms"] <= b].max()) for f in fronts if (f["latency_ms"] <= b).any()),
                       default=np.nan)
        m = np.array([best(apart.values(), b) for b in budgets])
        print(f"population {pop}, {k} tables: one search per table, {gens} generations each: "
              f"{sum(f['seconds'] for f in apart.values()):.1f} s in all ({sum(len(f['genomes']) for f in apart.values())} "
              f"subnets); best predicted top-1 under {len(budgets)} budgets {lo:.3f}-{hi:.3f} ms against it:")
        for g, front in joint.items():
            d = np.array([best([front], b) for b in budgets]) - m
            used = sorted(set(front["table"]))
            print(f"  one search, {g} generations: {front['seconds']:.1f} s ({len(front['genomes'])} subnets in "
                  f"{len(used)} configuration(s)): better at {int((d > 1e-9).sum())}, equal at "
                  f"{int((np.abs(d) <= 1e-9).sum())}, worse at {int((d < -1e-9).sum())}; mean {np.nanmean(d):+.3f}, "
                  f"min {np.nanmin(d):+.3f}, max {np.nanmax(d):+.3f} points")


if __name__ == "__main__":
    main()
