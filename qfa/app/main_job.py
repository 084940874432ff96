"""The main job: train (or reuse) -> latency table -> predictor -> search -> export -> verify.

Every step leaves its result in the run folder and is skipped when it is already there, so a
rerun resumes instead of redoing (training resumes from last.pt, predictor labels from their
CSV, the search from the saved Pareto set).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hw.profiling import SPEED_BAND, SPEED_CHECK, speed_check
from latency_tables import SHIPPED, shipped
from qfa.core.fileio import atomic_write

__all__ = ["JobConfig", "JobError", "main_job", "print_summary", "shipped_for_this_host", "TINY"]

# The default deployment: int8 convs, and full-precision convs as float32 ops where the search finds
# them faster (the last training stage then trains FP); hardswish as ADD + MUL (faster than int8
# HARD_SWISH on both x86 hosts measured). Its tables are the CPU's own where shipped (docs/decisions.md).
DEFAULT_TABLE = shipped("amd-epyc-zen4-1t-f32-hswish-decomposed")


def shipped_for_this_host(like: dict, where: Path = SHIPPED) -> list[Path]:
    """The shipped tables measured on this machine for the deployment target and space of the
    table whose metadata is ``like``, one per runtime configuration (delegate, threads), the one
    ``like`` names first: a table is measured per CPU and configuration, and the main job searches
    them all when the user named none (a table the user names is theirs)."""
    from hw.table import TableError, read_meta
    from hw.transport import host_mismatch
    found = []
    for csv in sorted(where.glob("*.csv")):
        try:
            meta = read_meta(csv.with_suffix(".json"))
        except TableError:
            continue
        if (meta.get("transport", "local") == "local" and not host_mismatch(meta)
                and all(meta.get(k) == like.get(k) for k in ("target", "space_hash"))):
            found.append((any(meta.get(k) != like.get(k) for k in ("delegate", "threads")), csv))
    return [csv for _, csv in sorted(found)]


class JobError(RuntimeError):
    """A step of the main job failed (one line; ``code`` 1: the machine or the result failed,
    2: the input cannot work, e.g. an infeasible budget)."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


@dataclass
class JobConfig:
    run: Path = Path("runs/main")
    checkpoint: str | None = None       # reuse a trained run instead of training
    data: str | None = None              # an ImageFolder root (None: Fashion-MNIST); the space is fitted to it
    config: str = "fmnist_short"         # training preset when training
    train_overrides: tuple[str, ...] = ()
    tables: tuple[Path, ...] = (DEFAULT_TABLE,)  # one per runtime configuration searched (see _tables)
    deploy: str | None = None            # the deployment target (default: the tables'); a float one trains FP last
    profile: bool = False                # measure this host into new tables first
    speed_check: int = SPEED_CHECK       # subnets timed to scale each table to this host's speed now (0: not)
    latency_ms: float | None = None      # default: the middle of the front's latency range
    n_predictor: int = 60
    calib_images: int = 500
    eval_images: int = 2000
    predictor_epochs: int = 150
    pop: int = 200
    gens: int = 100
    test_images: int | None = None       # verification images (default: the whole test set)
    threshold: float = 90.0              # minimum TFLite/PyTorch top-1 agreement (%)
    export_calib_images: int = 2000
    export_calib_draws: int = 4          # keep the best of 4 calibration draws on the held-out split
    search_bits: tuple[int, ...] | None = None  # restrict the searched precisions, e.g. (8,)
    margin: float = 0.05                 # predicted latency <= budget / (1 + margin)
    allow_over_budget: bool = False      # ship even when the file measures over the budget here
    verify: int = 0                      # label the K best-predicted under the budget, ship the truly best


TINY = dict(train_overrides=("eval_images=64", "calib_images=64", "ckpt_every=6",
                             "float.epochs=0.01", "stage0.epochs=0.005", "stage1.epochs=0.005"),
            n_predictor=12, calib_images=64, eval_images=128, predictor_epochs=60, pop=40, gens=8,
            test_images=300, threshold=80.0, speed_check=2, export_calib_images=128, export_calib_draws=1,
            search_bits=(8,))


def _say(msg: str) -> None:
    print(f"[qfa run] {msg}", file=sys.stderr, flush=True)


def _speed(cfg: JobConfig, table_csv: Path, table) -> dict | None:
    """This host's speed now against ``table`` (``hw.profiling.speed_check``; None when off)."""
    if not cfg.speed_check:
        return None
    from hw.transport import Local, RunConfig
    check = speed_check(table, Local("local", RunConfig(**table.runtime)), cfg.speed_check)
    f = check["factor"]
    _say(f"2/6 speed check: {table_csv.stem}: {cfg.speed_check} subnets ran at {f:.3f}x its predictions"
         + ("" if not check["within_band"] else
            ("; " if abs(f - 1) < 0.05 else f" (this host runs {abs(f - 1):.0%} {'slower' if f > 1 else 'faster'} "
                                             "now than when it was measured); ") + "predictions scaled by it"))
    return check


def _target(cfg: JobConfig) -> str:
    """The one deployment target of the run: ``--deploy``, else the tables'. Tables of several
    targets, or of another than ``--deploy``, are refused (one line) before anything is trained."""
    from hw.table import read_meta
    named = cfg.tables != (DEFAULT_TABLE,)
    targets = sorted({read_meta(Path(p).with_suffix(".json")).get("target", "tflite-int8") for p in cfg.tables})
    if len(targets) > 1:
        raise JobError(f"the tables deploy different targets ({', '.join(targets)}): one target per run, the one "
                       "its labels score", 2)
    if len({Path(p).stem for p in cfg.tables}) < len({Path(p).resolve() for p in cfg.tables}):
        raise JobError("two tables share a file name: a Pareto row names its configuration's table by it", 2)
    if cfg.deploy and named and targets != [cfg.deploy]:
        raise JobError(f"--deploy {cfg.deploy}: the tables given deploy {targets[0]}", 2)
    return cfg.deploy or targets[0]


def _tables(cfg: JobConfig, net, run: Path, target: str) -> list:
    """Step 2: the (csv, LatencyTable, speed check) of each deployment to search, all of one target.
    The default stands for every configuration of ``target`` shipped for this CPU; a table measured
    on another machine or for another space, or one that misses this host's speed now by more
    than ``hw.profiling.SPEED_BAND`` either way, is replaced by this host measured for the same
    deployment (the default: under each delegate, whose speeds differ up to 14x by machine and
    model size)."""
    from hw.table import LatencyTable
    named = {csv: LatencyTable.load(csv) for csv in map(Path, cfg.tables)}
    out: list = []
    for table_csv, given in named.items():
        default = table_csv == DEFAULT_TABLE and not cfg.profile and given.space.hash == net.space.hash
        here = shipped_for_this_host({**given.meta, "target": target}) if default else []
        other_target = given.target.name != target  # the default table, and --deploy another target
        mismatch = [] if cfg.profile or here or other_target else given.host_mismatch()
        other_space = not cfg.profile and given.space.hash != net.space.hash
        if other_space:
            why = f"{table_csv.name} is for space {given.space.name!r}, the supernet's is {net.space.name!r}, so "
        elif other_target and not (here or cfg.profile):
            why = f"no {target} table is shipped for this CPU, so "
        elif mismatch:
            why = f"{table_csv.name} describes another machine ({'; '.join(mismatch)}), so "
        else:
            why = ""
        if here:
            _say(f"2/6 latency tables: {len(here)} runtime configuration(s) shipped for this CPU, each searched: "
                 + ", ".join(p.name for p in here)
                 + ("" if here[0] == table_csv or other_target else f" ({table_csv.name} describes another machine)"))
        elif not (cfg.profile or why):
            facts = given.meta.get("device_facts", {})
            _say(f"2/6 latency table: {table_csv} (measured on {facts.get('cpu', 'an unnamed CPU')}, "
                 f"{given.runtime['delegate']}, {given.runtime['threads']} thread(s), as this host; --profile "
                 "measures this host anyway)")
        if here or not (cfg.profile or why):
            checked = [(p, t, _speed(cfg, p, t)) for p, t in ([(p, LatencyTable.load(p)) for p in here] or
                                                             [(table_csv, given)])]
            off = [(p, c) for p, _, c in checked if c and not c["within_band"]]
            if not off:
                out += checked
                continue
            why = (f"{off[0][0].name} misses this host's speed now {off[0][1]['factor']:.2f}x (beyond "
                   f"{1 / SPEED_BAND:g}-{SPEED_BAND:g}x), so ")
        out += [(p, t, _speed(cfg, p, t))
                for p, t in _profile_here(target, given.runtime, table_csv == DEFAULT_TABLE, why, net, run)]
    out = list({csv: (csv, t, c) for csv, t, c in out}.values())
    for _, t, _ in out:
        t.check_space(net.space)
    return out


def _profile_here(target: str, rt: dict, both_delegates: bool, why: str, net, run: Path) -> list:
    """``target`` under the runtime configuration ``rt`` (``both_delegates``: under each delegate)
    measured on this host into ``RUN/tables`` by ``hw.profile`` in a subprocess; [(csv, LatencyTable)]."""
    import subprocess
    from export.targets import DELEGATES, runtime_tag
    from hw.table import LatencyTable
    from hw.transport import Local, RunConfig, device_slug
    configs = [rt] + [{**rt, "delegate": d} for d in DELEGATES if d != rt["delegate"] and both_delegates]
    space_arg = run / "space.json"  # the supernet's own space (a preset, or one fitted to its data)
    atomic_write(space_arg, json.dumps(net.space.to_json(), indent=1).encode())
    out = []
    for i, c in enumerate(configs, 1):
        # named for this device, configuration and target: a run profiled for another target later
        # (--deploy) gets its own table instead of a refusal to mix them
        name = f"{device_slug(Local('local', RunConfig()).facts())}-{runtime_tag(c)}-{target.removeprefix('tflite-')}"
        profiled = run / "tables" / f"{name}.csv"
        _say(f"2/6 latency table: {why if i == 1 else ''}profiling this host ({c['delegate']}, {c['threads']} "
             f"thread(s): configuration {i} of {len(configs)}) into {profiled} (python -m hw.profile)")
        r = subprocess.run([sys.executable, "-m", "hw.profile", "--device", name, "--out-dir",
                            str(profiled.parent), "--space", str(space_arg), "--deploy", target,
                            "--delegate", c["delegate"], "--threads", str(c["threads"])],
                           stdout=subprocess.PIPE, text=True)
        sys.stderr.write(r.stdout)  # its report is progress here: stdout holds the job's result alone
        if r.returncode:
            raise JobError("profiling the host failed (see above)", r.returncode)
        out.append((profiled, LatencyTable.load(profiled)))
    return out


def main_job(cfg: JobConfig) -> dict:
    from qfa.nn.data import make_datasets
    from export.deploy import RANGE_IMAGES, ExportError, export_subnet, verify_tflite
    from qfa.nas.predictor import Predictor, PredictorError, collect, fit, load_rows, scoring_name, scoring_of
    from qfa.nas.search import (Fastest, SearchError, describe_deployments, formats_report, pareto_base,
                                per_configuration, saved_or_search)
    from qfa.nn.supernet import Supernet
    from export.targets import TARGETS
    from qfa.core.space import FP
    t_start = time.time()
    run = Path(cfg.run)
    run.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # 1. supernet
    t = time.time()
    target = _target(cfg)
    if cfg.checkpoint:
        ckpt = Path(cfg.checkpoint)
        ckpt = ckpt / "last.pt" if ckpt.is_dir() else ckpt
        _say(f"1/6 supernet: reusing {ckpt}")
    else:
        from qfa.train.config import load_config
        from qfa.train.loop import Trainer
        ckpt, done = run / "last.pt", run / "train_done.json"
        if done.exists():
            _say(f"1/6 supernet: trained already ({done})")
        else:
            resume = ckpt.exists()
            _say(f"1/6 supernet: {'resuming' if resume else 'training'} the {cfg.config} schedule in {run}")
            overrides = list(cfg.train_overrides) + ([f"data={json.dumps(str(cfg.data))}"] if cfg.data else [])
            last = load_config(cfg.config, overrides).stages[-1]
            if TARGETS[target].float_io and FP not in last.bits:  # what the search may deploy is trained last
                overrides.append(f"{last.name}.bits={json.dumps(sorted(last.bits) + [FP])}")
                _say(f"1/6 supernet: {target} deploys FP convs in float: {last.name} trains FP too ({overrides[-1]})")
            result = Trainer(load_config(cfg.config, overrides), run, resume=resume, progress=True).run()
            done.write_text(json.dumps(result, default=str))
    net = Supernet.from_checkpoint(ckpt)
    data_root = cfg.data or net.data
    if cfg.data and cfg.checkpoint and net.data != cfg.data:
        _say(f"   the supernet was trained on {net.data or 'Fashion-MNIST'}; labelling and verifying on {cfg.data}")
    timings["train_s"] = time.time() - t

    # 2. latency tables: one per runtime configuration searched
    t = time.time()
    if TARGETS[target].float_io and FP not in getattr(net, "final_bits", (FP,)):
        _say(f"2/6 the supernet's last stage did not train FP: {target} is searched without FP convs "
             "(train with FP in the last stage to search them)")
    tables = _tables(cfg, net, run, target)
    table = tables[0][1]  # the labels are scored as its target computes
    timings["table_s"] = time.time() - t

    # 3. predictor
    t = time.time()
    data = make_datasets(data_root, net.space.resolutions[-1], space=net.space)
    labels = run / "predictor_data.csv"
    rows = load_rows(labels)
    have = len(rows)
    scored = scoring_name(table.target.name, table.runtime["delegate"])
    if rows and scoring_of(rows) != scored:
        raise JobError(f"{labels} holds labels scored as {scoring_of(rows)}, not as deployed for {scored}; "
                       f"move it away to label again", 2)
    if have < cfg.n_predictor:
        _say(f"3/6 predictor: labelling {cfg.n_predictor - have} more subnets on the held-out split")
        try:  # scored as the file for this table's target computes them
            collect(net, data, labels, cfg.n_predictor, cfg.calib_images, cfg.eval_images, scored=table.target.name,
                    delegate=table.runtime["delegate"],
                    progress=lambda i, n, row: print(f"\r  {i}/{n} subnets, last {float(row['top1']):.2f}%", end="",
                                                     file=sys.stderr, flush=True))
        except PredictorError as e:
            raise JobError(str(e), 2) from None
        print(file=sys.stderr)
    pred_path = run / "predictor.safetensors"
    if not pred_path.exists() or have < cfg.n_predictor:
        pred, metrics = fit(net.space, load_rows(labels), epochs=cfg.predictor_epochs)
        pred.save(pred_path)
    pred = Predictor.load(pred_path)
    metrics = pred.meta.get("metrics", {})
    _say(f"3/6 predictor: {metrics.get('n')} subnets, held-out Kendall tau {metrics.get('kendall_tau', float('nan')):.3f}, "
         f"RMSE {metrics.get('rmse', float('nan')):.2f} points")
    timings["predictor_s"] = time.time() - t

    # 4. search: one NSGA-II over every configuration, each subnet in its fastest (qfa.nas.search.Fastest)
    t = time.time()
    by_name = {csv.stem: (csv, table) for csv, table, _ in tables}
    base = pareto_base(run, ckpt, pred_path, [csv for csv, *_ in tables], cfg.search_bits)
    pset, front = saved_or_search(base, lambda: (pred, Fastest({n: tb for n, (_, tb) in by_name.items()})), cfg.pop,
                                  cfg.gens, bits=cfg.search_bits)
    runtimes = {n: tb.runtime for n, (_, tb) in by_name.items()}
    pset = pset.at_speed({csv.stem: c["factor"] for csv, _, c in tables if c and c["within_band"]}, runtimes)
    _say("4/6 search: " + (f"answering from the saved Pareto set {base.with_suffix('.jsonl')}" if front is None else
                          f"NSGA-II over {len(tables)} configuration(s), population {cfg.pop}, {cfg.gens} generations "
                          f"in {front['seconds']:.1f}s"))
    lats = np.array([r["latency_ms"] for r in pset.rows])
    # default: the middle of the front, and never below what the margin lets the fastest subnet meet
    budget = cfg.latency_ms if cfg.latency_ms is not None else \
        float(np.ceil(max((lats.min() + lats.max()) / 2, lats.min() * (1 + cfg.margin)) * 1000) / 1000)
    pset.save(base, budget)
    try:
        ranked = pset.ranked(budget, margin=cfg.margin)
    except SearchError as e:
        raise JobError(str(e), 2) from None
    verified = None
    if cfg.verify:  # labelled as the export below calibrates
        from qfa.nas.verify import verify_on_holdout
        _say(f"4/6 search: verifying the {cfg.verify} best-predicted under {budget:g} ms on the held-out split")
        (best, _, _), verified = verify_on_holdout(
            lambda: net, [(pset, base, ranked)], cfg.verify, cfg.export_calib_images, cfg.export_calib_draws, data_root,
            lambda i, n, rep: print(f"\r  {i}/{n} labelled, last {rep['holdout_top1']:.2f}%", end="" if i < n else "\n",
                                    file=sys.stderr, flush=True))
    else:
        best = ranked[0]
    table_csv, table = by_name[best["table"]]
    candidates = per_configuration(pset, budget, cfg.margin, {n: (csv, runtimes[n]) for n, (csv, _) in by_name.items()},
                                   best)
    spec = net.space.parse(json.dumps(best["spec"]))
    _say(f"4/6 search: {len(pset.rows)} Pareto subnets; under {budget:g} ms: {spec} on {table_csv.stem}")
    if len(tables) > 1:
        _say(f"4/6 search: best of each configuration: {describe_deployments(candidates)}")
    timings["search_s"] = time.time() - t

    # 5. export + verify
    t = time.time()
    out = run / "model.tflite"
    _say(f"5/6 export: {out}")
    data_r = make_datasets(data_root, spec.resolution, space=net.space)
    try:
        res = export_subnet(net, spec, data_r, out, table.target.name, calib_images=cfg.export_calib_images,
                            range_images=min(RANGE_IMAGES, cfg.export_calib_images),  # as the labels were scored
                            calib_draws=cfg.export_calib_draws, runtime=table.runtime)
    except ExportError as e:
        raise JobError(str(e), 1) from None
    v = verify_tflite(res["bytes"], res["graph"], res["subnet"], data_r["test"], cfg.test_images,
                      delegate=table.runtime["delegate"])
    timings["export_verify_s"] = time.time() - t

    # 6. measured latency of the shipped file on this host
    from hw.runner import time_model
    runtime = table.runtime  # the file is timed as the table was measured, and as the app will run it
    measured_ms = time_model(str(out), threads=runtime["threads"], delegate=runtime["delegate"])[table.stat] / 1000
    over = measured_ms > budget
    pset.plot(base.with_suffix(".png"), budget, chosen=best, measured_ms=measured_ms)
    summary = {
        "spec": str(spec), "hash": spec.hash, "budget_ms": budget,
        "predicted_top1_holdout": best["top1"], "pytorch_top1_test": v["pytorch_top1"], "tflite_top1_test": v["tflite_top1"],
        "agreement": v["agreement"], "deployed_top1_test": v["deployed_top1"], "deployed_agreement": v["deployed_agreement"],
        "predicted_latency_ms": best["latency_ms"], "measured_latency_ms": measured_ms,
        "bytes": v["bytes"], "bytes_gzip": res["sidecar"]["bytes_gzip"], "model": str(out), "sidecar": str(out.with_suffix(".json")),
        "pareto_csv": str(base.with_suffix(".csv")), "pareto_png": str(base.with_suffix(".png")),
        "pareto_size": len(pset.rows), "predictor": metrics, "timings": timings, "total_s": time.time() - t_start,
        "within_budget": not over, "table": str(table_csv), "configurations": candidates,
        "speed_factor": pset.factors.get(table_csv.stem, 1.0),  # predicted = the table's prediction x this (2/6)
        **({"holdout_top1": best["holdout"]["top1"], "verified": verified} if verified is not None else {}),
        "runtime": {"interpreter": "ai-edge-litert", **runtime},
        **({"formats": formats_report(spec, table, pred)} if table.target.float_io else {}),
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    if over and not cfg.allow_over_budget:
        raise JobError(f"the shipped model runs in {measured_ms:.3f} ms here, over the {budget:g} ms budget (predicted "
                       f"{best['latency_ms']:.3f} ms on {table_csv.name}); --allow-over-budget keeps it, --profile "
                       f"measures this host (summary in {run / 'summary.json'})")
    if v["deployed_agreement"] < cfg.threshold:
        raise JobError(f"TFLite/as-deployed top-1 agreement {v['deployed_agreement']:.2f}% is below {cfg.threshold}% "
                       f"(summary in {run / 'summary.json'})")
    return summary


def print_summary(s: dict) -> None:
    from qfa.nas.search import describe_deployments, describe_formats
    rows = [("chosen subnet", s["spec"]), ("hash", s["hash"]),
            ("top-1 TFLite (test)", f"{s['tflite_top1_test']:.2f}% (predicted {s['predicted_top1_holdout']:.2f}% held-out"
                                    + (f", verified {s['holdout_top1']:.2f}% of the {len(s['verified'])} best-predicted"
                                       if "verified" in s else "") + "); "
                                    f"as deployed in PyTorch {s['deployed_top1_test']:.2f}% (agreement {s['deployed_agreement']:.2f}%), "
                                    f"fake-quant {s['pytorch_top1_test']:.2f}% (agreement {s['agreement']:.2f}%)"),
            ("latency predicted / measured", f"{s['predicted_latency_ms']:.3f} ms / {s['measured_latency_ms']:.3f} ms "
                                             + (f"(the table x {s['speed_factor']:.3f}, this host's speed now; "
                                                if s.get("speed_factor", 1) != 1 else "(")
                                             + f"budget {s['budget_ms']:g} ms: "
                                             f"{'met' if s['within_budget'] else 'OVER'}; table {s['table']}; "
                                             f"{s['runtime']['interpreter']}, {s['runtime']['delegate']}, "
                                             f"{s['runtime']['threads']} thread(s))"),
            *([("configurations", f"{len(s['configurations'])} searched, the most accurate under the budget "
                                  f"wins: {describe_deployments(s['configurations'])}")]
              if len(s.get("configurations", ())) > 1 else []),
            *([("formats", describe_formats(s["formats"]))] if "formats" in s else []),
            ("file", f"{s['model']}  ({s['bytes']:,} bytes, {s['bytes_gzip']:,} gzipped; app facts in {s['sidecar']})"),
            ("Pareto set", f"{s['pareto_size']} subnets: {s['pareto_csv']}, plot {s['pareto_png']}"),
            ("time", f"{s['total_s'] / 60:.1f} min (" + ", ".join(f"{k[:-2]} {v:.0f}s" for k, v in s["timings"].items()) + ")")]
    w = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
