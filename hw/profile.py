#!/usr/bin/env python3
"""Measure a device into a latency table keyed by deployed precision (CSV + JSON metadata).

examples:
  python hw/profile.py --device host-x86 --space fmnist
  python hw/profile.py --device pi4 --target ssh://pi@raspberrypi.local --threads 4
  python hw/profile.py --device host-x86 --validate 100 --json

Rows are appended as they are measured; a rerun skips measured keys (Ctrl-C loses nothing).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: python hw/profile.py
    # the repo root instead of hw/, whose profile.py would shadow the standard library's
    # (imported by torch.compile when calibration compiles the quantizers)
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from export.targets import TARGETS  # noqa: E402
from hw.build import build, write_model  # noqa: E402
from hw.table import FEATURES, LatencyTable, TableError, append_row  # noqa: E402
from qfa.core.fileio import atomic_write  # noqa: E402
from qfa.core.space import SpecError  # noqa: E402
from hw.transport import TransportError, make_transport  # noqa: E402


def _transport(args: argparse.Namespace):
    return make_transport(args.target, args.threads, args.taskset, args.runtime, args.runs, args.warmup,
                          args.ssh_option, args.remote_python)


def _resolutions(args: argparse.Namespace, space) -> list[int]:
    resolutions = args.resolution or list(space.resolutions)
    bad = [r for r in resolutions if r not in space.resolutions]
    if bad:
        raise TableError(f"resolution {bad} not in space {space.name!r} {list(space.resolutions)}")
    return resolutions


def probe_specs(table: LatencyTable, resolutions: list[int]) -> list:
    """Max-depth specs that together touch every table key at ``resolutions``."""
    from hw.entries import TOKENS
    sp = table.space
    probes = (table.probe(r, k, e, t) for r in resolutions for k in sp.kernels for e in sp.expands
              for t in np.ndindex(*(len(TOKENS),) * 3))
    return [s for s in probes if s is not None]


def _host_facts() -> dict:
    facts = {"machine": platform.machine(), "os": platform.platform(), "python": platform.python_version(),
             "cores": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
        gov = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
        facts["governor"] = gov.read_text().strip() if gov.exists() else None
    except OSError:
        pass
    try:
        import ai_edge_litert
        facts["runtime"] = f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
    except ImportError:
        pass
    return facts


def profile(args: argparse.Namespace, transport) -> dict:
    from qfa.core.space import get_space
    from hw.blocks import BlockFactory, overhead_model
    from hw.entries import entries

    space = get_space(args.space)
    target = TARGETS[args.deploy]
    resolutions = _resolutions(args, space)
    out = Path(args.out_dir) / f"{args.device}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta_path = out.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if meta and (meta.get("space_hash") != space.hash or meta.get("target") != target.name
                 or meta.get("threads") != args.threads):
        raise TableError(f"{out} holds measurements of another space/target/thread count "
                         f"({meta.get('space')}/{meta.get('target')}/{meta.get('threads')} threads): use another --device name")
    done = set()
    if out.exists():
        import csv
        with open(out, newline="") as f:
            done = {r["key"] for r in csv.DictReader(f)}
    facts = transport.facts() if hasattr(transport, "facts") else _host_facts()
    meta.update({"device": args.device, "space": space.name, "space_hash": space.hash, "target": target.name,
                 "threads": args.threads, "transport": args.target, "resolutions": sorted(set(meta.get("resolutions", [])) | set(resolutions)),
                 "date": datetime.date.today().isoformat(), "toolkit": "qfa-toolkit 0.1.0",
                 "shared_entries": "nominal W2/W3/W4 with activations < 8 bits deploy as int8 values + a MINIMUM "
                                   "clamp ('i8c') and share one entry; W8A8 is 'i8'; int4 weights ('i4') only "
                                   "under tflite-int4w for CONV_2D", **({"device_facts": facts} if facts else {})})
    if "overhead_us" not in meta:
        meta["overhead_us"] = transport.measure([write_model(overhead_model(target))])[0]["median_us"]
    _save_meta(meta_path, meta)

    factory = BlockFactory(space)
    table = LatencyTable({}, meta, space)
    specs = probe_specs(table, resolutions)
    todo = [s for s in specs if any(en.key not in done for en in entries(s, target))]
    t0 = time.time()

    def built(i: int, n: int) -> None:
        if not args.json:
            print(f"\rprofile: built models of {i}/{n} shapes ({args.jobs} jobs), {time.time() - t0:.0f}s",
                  end="", file=sys.stderr, flush=True)
    paths = build(todo, target, args.jobs, progress=built)
    n_new = 0
    for i, spec in enumerate(todo):
        new = {en.key: en for en in entries(spec, target) if en.key not in done}
        for en, res in zip(new.values(), transport.measure([paths[k] for k in new])):
            append_row(out, {**en._asdict(), "key": en.key, **{f: res[f] for f in ("median_us", "p10_us", "p90_us", "count", "cv")}})
            done.add(en.key)
            n_new += 1
        if not args.json:
            print(f"\rprofile: measured {i + 1}/{len(todo)} shapes, {len(done)} entries ({n_new} new), "
                  f"{time.time() - t0:.0f}s", end="", file=sys.stderr, flush=True)
    if not args.json:
        print(file=sys.stderr)
    if args.calib_subnets and "calibration" not in meta:
        x, meas = _whole(LatencyTable.load(out), factory, transport, target, args.calib_subnets, seed=1, extremes=True)
        plain = np.array([1.0, 0.0, 0.0, 0.0])
        rmse = lambda c, i: float(100 * np.sqrt(np.mean(((x[i] @ c - meas[i]) / meas[i]) ** 2)))  # noqa: E731
        # least squares on RELATIVE error, the figure users read: absolute error would let the
        # largest subnets decide and leave small ones (tight budgets) 10-20% off
        fit = lambda i: np.linalg.lstsq(x[i] / meas[i, None], np.ones(len(i)), rcond=None)[0]  # noqa: E731
        coef = plain
        if len(meas) >= 16:  # keep the fitted correction only if it beats the plain sum on held-out subnets
            perm = np.random.default_rng(0).permutation(len(meas))  # extremes come first: shuffle the halves
            a, b = np.sort(perm[: len(meas) // 2]), np.sort(perm[len(meas) // 2:])
            ca, cb = fit(a), fit(b)
            if rmse(ca, b) + rmse(cb, a) < rmse(plain, b) + rmse(plain, a):
                coef = fit(np.arange(len(meas)))
        fit_rmse = rmse(coef, np.arange(len(meas)))
        meta["calibration"] = {"coef": [float(c) for c in coef], "subnets": len(meas), "fit_rmse_pct": fit_rmse,
                               "plain_sum_rmse_pct": rmse(plain, np.arange(len(meas))),
                               "features": list(FEATURES),
                               "note": "measured us = coef . features, least squares of the relative error on "
                                       "whole subnets (random + the min/max subnet of each resolution), kept only "
                                       "if it beats the plain sum (coef 1,0,0,0) in 2-fold cross-validation"}
        _save_meta(meta_path, meta)
    return {"table": str(out), "entries": len(done), "new": n_new, "overhead_us": meta["overhead_us"],
            "calibration": meta.get("calibration")}


def estimate(args: argparse.Namespace, transport) -> dict:
    """Time to build a table here, extrapolated from building and timing a random sample of
    its shapes, and one random whole subnet (the calibration set), on this transport."""
    from qfa.core.space import get_space
    from hw.blocks import BlockFactory
    from hw.entries import entries

    space, target = get_space(args.space), TARGETS[args.deploy]
    resolutions = _resolutions(args, space)
    table = LatencyTable({}, {"target": target.name, "overhead_us": 0.0}, space)
    specs = probe_specs(table, resolutions)
    keys = {en.key for s in specs for en in entries(s, target)}
    rng = np.random.default_rng(0)
    sample = [specs[i] for i in sorted(rng.choice(len(specs), min(len(specs), args.estimate), replace=False))]
    with tempfile.TemporaryDirectory() as tmp:  # a private cache: time the real conversion
        t = time.perf_counter()
        paths = build(sample, target, 1, root=tmp)
        t_build = (time.perf_counter() - t) / len(sample)
        uniq = sorted({en.key for s in sample for en in entries(s, target)})
        t = time.perf_counter()
        transport.measure([paths[k] for k in uniq])
        t_entry = (time.perf_counter() - t) / len(uniq)
        factory, whole = BlockFactory(space), space.sample(rng).replace(resolution=max(resolutions))
        t = time.perf_counter()
        transport.measure([write_model(factory.whole(whole, target), tmp)])
        t_whole = time.perf_counter() - t
    blocks_s = t_build * len(specs) / max(args.jobs, 1) + t_entry * len(keys)
    return {"space": space.name, "resolutions": resolutions, "target": target.name, "shapes": len(specs),
            "entries": len(keys), "sampled_shapes": len(sample), "build_s_per_shape": round(t_build, 2),
            "measure_s_per_entry": round(t_entry, 3), "jobs": args.jobs, "estimated_blocks_s": round(blocks_s),
            "estimated_calibration_s": round(args.calib_subnets * t_whole),
            "estimated_total_s": round(blocks_s + args.calib_subnets * t_whole)}


def _save_meta(path: Path, meta: dict) -> None:
    atomic_write(path, json.dumps(meta, indent=1, sort_keys=True))


def _whole(table: LatencyTable, factory, transport, target, n: int, seed: int, extremes: bool = False):
    """(features [sum_us, 1, pieces, clamped convs], measured us) of n random whole subnets
    (with ``extremes``: the min/max subnets of each resolution among them)."""
    rng = np.random.default_rng(seed)
    res_ok = table.meta["resolutions"]
    sp = table.space
    specs = [] if not extremes else [  # the min/max subnets tight and loose budgets end up near
        f(bits=b).replace(resolution=r) for r in res_ok for f in (sp.min_spec, sp.max_spec) for b in (2, 8)][:n // 2]
    while len(specs) < n:
        s = table.space.sample(rng)
        if s.resolution in res_ok:
            specs.append(s)
    paths = [write_model(factory.whole(s, target)) for s in specs]
    meas = np.array([r["median_us"] for r in transport.measure(paths)])
    return np.array([table.features(s) for s in specs]), meas


def validate(args: argparse.Namespace, transport) -> dict:
    from hw.blocks import BlockFactory
    table = LatencyTable.load(Path(args.out_dir) / f"{args.device}.csv")
    x, meas = _whole(table, BlockFactory(table.space), transport, table.target, args.validate, seed=2)
    pred_raw = x[:, 0]
    pred = x @ table.coef
    err = (pred - meas) / meas
    res = {"n": len(meas), "rmse_pct": float(100 * np.sqrt(np.mean(err ** 2))),
           "within_5pct": float(100 * np.mean(np.abs(err) <= 0.05)), "within_10pct": float(100 * np.mean(np.abs(err) <= 0.10)),
           "raw_sum_rmse_pct": float(100 * np.sqrt(np.mean(((pred_raw - meas) / meas) ** 2)))}
    png = Path(args.out_dir) / f"{args.device}_validation.png"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(meas / 1000, pred / 1000, s=12)
        lim = [0, max(meas.max(), pred.max()) / 1000 * 1.05]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.plot(lim, [v * 1.1 for v in lim], "r:", lw=0.8)
        ax.plot(lim, [v * 0.9 for v in lim], "r:", lw=0.8)
        ax.set_xlabel("measured (ms)"), ax.set_ylabel("predicted (ms)")
        ax.set_title(f"{args.device}: RMSE {res['rmse_pct']:.1f}%, {res['within_10pct']:.0f}% within 10%")
        fig.tight_layout()
        fig.savefig(png, dpi=120)
        res["plot"] = str(png)
    except ImportError:
        pass
    return res


def build_parser(prog: str = "hw/profile.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", help="table name: latency_tables/NAME.csv (required unless --estimate)")
    p.add_argument("--target", default="local", help="local | ssh://user@host[:port] | adb[:SERIAL] (default local)")
    p.add_argument("--space", default="fmnist", help="search-space preset (default fmnist)")
    p.add_argument("--resolution", type=int, nargs="+", help="resolutions to measure (default: all of the space)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--deploy", default="tflite-int8", choices=sorted(TARGETS), help="deployment target")
    p.add_argument("--runtime", default="litert", help="litert | tflite-runtime | benchmark_model:PATH (adb)")
    p.add_argument("--taskset", help="CPU mask for the runner (adb/ssh), e.g. f0")
    p.add_argument("--ssh-option", action="append", metavar="OPT", help="extra ssh -o option (repeatable), "
                   "e.g. IdentityFile=~/.ssh/pi; your ~/.ssh/config applies anyway")
    p.add_argument("--remote-python", default="python3", help="python on the device (ssh; default python3)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes converting block models (default: all cores; timing runs alone afterwards)")
    p.add_argument("--runs", type=int, default=200, help="timed invokes per model (default 200)")
    p.add_argument("--warmup", type=int, default=30, help="warm-up invokes per model (default 30)")
    p.add_argument("--calib-subnets", type=int, default=40, help="whole subnets measured to fit the correction (default 40)")
    p.add_argument("--validate", type=int, metavar="N", help="measure N random subnets end to end and compare")
    p.add_argument("--estimate", type=int, metavar="K", help="measure nothing into a table: time K sampled shapes "
                   "and print the estimated time of the whole table (e.g. --space paper --resolution 224 --estimate 3)")
    p.add_argument("--out-dir", default="latency_tables")
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None, prog: str = "hw/profile.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if not args.device and not args.estimate:
        parser.error("--device is required")
    transport = None
    try:
        transport = _transport(args)
        res = (validate(args, transport) if args.validate else estimate(args, transport) if args.estimate
               else profile(args, transport))
    except (TableError, TransportError, SpecError, FileNotFoundError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (TableError, SpecError)) else 1
    except KeyboardInterrupt:
        print("\nprofile: interrupted; measured rows are kept, rerun to continue", file=sys.stderr)
        return 130
    finally:
        if transport is not None and hasattr(transport, "close"):
            try:
                transport.close()
            except TransportError:
                pass
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
