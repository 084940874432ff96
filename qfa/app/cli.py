"""The ``qfa`` command line. Thin: each command parses, calls the library, prints.

Conventions: ``--json`` prints exactly one JSON object (or JSON lines for streams) on stdout;
human tables otherwise. Errors are one line on stderr with the exit statuses of
:data:`qfa.core.conventions.EXIT_STATUS_HELP` (1 failed operation or device, 2 bad input, 3 a
bug). Set QFA_DEBUG=1 for tracebacks.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Callable, Sequence

from qfa.core.conventions import EXIT_STATUS_HELP, Parser, integer, number, run_guarded
from qfa.core.space import SearchSpace, SpecError, SubnetSpec, list_spaces, resolve_space

__all__ = ["main", "CLIError", "load_spec"]

_EPILOG = textwrap.fill(EXIT_STATUS_HELP, 100)
MIN_POP = 4  # NSGA-II's first population holds the min and max subnets and at least two random ones


class CLIError(Exception):
    """A failure reported to the user as one line; ``code`` is the exit status."""

    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


def load_spec(space: SearchSpace, text: str) -> SubnetSpec:
    """A spec from JSON text, a file holding JSON or compact text (UTF-8, a BOM allowed), or the
    compact form itself. An argument is a file if it names one, or looks like a path."""
    looks_like_path = "/" in text or text.endswith((".json", ".txt"))
    if not text.lstrip().startswith(("{", "[")):
        try:
            is_file = Path(text).is_file()
        except (OSError, ValueError):  # a name too long for the OS, a NUL byte: not a file
            is_file = False
        if is_file:
            try:
                text = Path(text).read_bytes().decode("utf-8-sig")
            except OSError as e:
                raise CLIError(f"cannot read spec file {text}: {e.strerror}", 2) from None
            except UnicodeDecodeError:
                raise CLIError(f"spec file {text} is not UTF-8 text (a spec is JSON or compact text)", 2) from None
        elif looks_like_path:
            raise CLIError(f"spec file not found: {text}", 2)
    try:
        return space.parse(text)
    except SpecError as e:
        raise CLIError(f"invalid spec: {e}", 2) from None


def bit_list(text: str) -> tuple[int, ...]:
    """argparse type of ``--bits``: comma-separated integers, e.g. ``2,4,8`` or ``8,32``."""
    return tuple(integer(1, 32)(part) for part in text.split(","))


def _emit(args: argparse.Namespace, obj: dict, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(obj))
    else:
        human()


def _space(args: argparse.Namespace) -> SearchSpace:
    try:
        space = resolve_space(args.space)
        return space.with_bits(args.bits) if args.bits else space
    except SpecError as e:
        raise CLIError(str(e), 2) from None


# ---- commands ----------------------------------------------------------------------------
def cmd_space(args: argparse.Namespace) -> None:
    space = _space(args)
    if args.action == "sample":
        import numpy as np
        rng = np.random.default_rng(args.seed)
        for _ in range(args.n):
            spec = space.sample(rng)
            print(spec.dumps() if args.json or not args.compact else str(spec))
        return
    info = space.summary()

    def human() -> None:
        print(f"space {info['name']} (hash {info['hash']})")
        for i, st in enumerate(info["stages"], 1):
            print(f"  stage {i}: width {st['width']:4d}  stride {st['stride']}  act {st['act']:6s}  se {st['se']}")
        for key in ("kernels", "expands", "depths", "resolutions", "bits"):
            print(f"  {key:12s} {info[key]}")
        print(f"  stem bits {info['stem_bits']}, SE bits {info['se_bits']}, classifier bits {info['classifier_bits']}"
              "  (32 = full precision)")
        print(f"  subnets (MBConv stages): {info['count_blocks']:.4g}  = {info['count_blocks']}")
        print(f"  subnets (+ resolution, first-block and head bits): {info['count_full']:.4g}")
    # the exact counts overflow JSON number precision in some readers: send them as strings too
    _emit(args, {**info, "count_blocks_exact": str(info["count_blocks"]),
                 "count_full_exact": str(info["count_full"])}, human)


def cmd_cost(args: argparse.Namespace) -> None:
    from qfa.core.cost import layer_costs, total_costs
    space = _space(args)
    spec = load_spec(space, args.spec)
    rows, tot = layer_costs(spec), total_costs(spec)

    def human() -> None:
        print(f"spec {spec.hash}: {spec}")
        if args.per_layer:
            print(f"{'layer':24s} {'cin':>5s} {'cout':>5s} {'k':>2s} {'s':>2s} {'h':>4s} {'w/a':>6s} {'MACs':>11s} {'bytes':>9s}")
            for r in rows:
                print(f"{r['name']:24s} {r['cin']:5d} {r['cout']:5d} {r['kernel']:2d} {r['stride']:2d} {r['h_in']:4d} "
                      f"{r['w_bits']:>2d}/{r['a_bits']:<3d} {r['macs']:11,d} {r['bytes']:9,.0f}")
        print(f"MACs {tot['macs']/1e6:.3f} M | params {tot['params']/1e6:.4f} M | BitOPs {tot['bitops']/1e9:.3f} G | "
              f"bit-weighted {tot['mflops_bw']:.3f} MFLOPs | {tot['bytes']/1024:.1f} KiB at nominal bits")
    _emit(args, {"spec": spec.to_json(), "hash": spec.hash, "total": tot,
                 **({"layers": rows} if args.per_layer else {})}, human)


def cmd_run(args: argparse.Namespace) -> None:
    from dataclasses import replace
    from qfa.nn.checkpoint import CheckpointError
    from qfa.nn.data import DataError
    from qfa.app.main_job import TINY, JobConfig, JobError, main_job, print_summary
    from hw.table import TableError
    from qfa.nas.predictor import PredictorError
    from qfa.nas.search import SearchError
    from qfa.train.config import ConfigError
    cfg = JobConfig(run=Path(args.run), checkpoint=args.checkpoint, latency_ms=args.latency_ms, profile=args.profile,
                    data=args.data, deploy=args.deploy)
    if args.table:
        cfg.tables = tuple(_table_arg(t) for t in args.table)
    if args.tiny:
        cfg = replace(cfg, **TINY)
    cfg.train_overrides = tuple(cfg.train_overrides) + tuple(args.set or ())
    cfg.allow_over_budget = args.allow_over_budget
    for k in ("n_predictor", "pop", "gens", "test_images", "verify", "speed_check"):
        if getattr(args, k) is not None:
            setattr(cfg, k, getattr(args, k))
    if args.checkpoint and not Path(args.checkpoint).exists():
        raise CLIError(f"checkpoint not found: {args.checkpoint}", 2)
    try:
        summary = main_job(cfg)
    except (CheckpointError, TableError, DataError, PredictorError, SearchError, ConfigError, SpecError) as e:
        raise CLIError(str(e), 2) from None
    except JobError as e:
        raise CLIError(str(e), e.code) from None
    _emit(args, summary, lambda: print_summary(summary))


def cmd_train(args: argparse.Namespace) -> None:
    from qfa.nn.checkpoint import CheckpointError
    from qfa.nn.data import DataError
    from qfa.train.config import ConfigError, load_config
    from qfa.train.loop import Trainer
    overrides = list(args.set or [])
    for flag, key in (("act_quant", "act_quant"), ("data", "data"), ("device", "device"), ("max_steps", "max_steps"),
                      ("batch_size", "batch_size"), ("seed", "seed"), ("workers", "workers")):
        v = getattr(args, flag)
        if v is not None:
            overrides.append(f"{key}={v}")
    if args.amp:
        overrides.append("amp=true")
    if args.channels_last:
        overrides.append("channels_last=true")
    try:
        out = Path(args.out)
        if args.resume and not (out / "last.pt").exists():
            raise CLIError(f"--resume: no checkpoint in {out} (expected {out / 'last.pt'})", 2)
        if not args.resume and (out / "last.pt").exists():
            raise CLIError(f"{out} already holds a run; pass --resume to continue it or choose another --out", 2)
        cfg = load_config(args.config, overrides)
        trainer = Trainer(cfg, out, resume=args.resume, init_float=args.init_float, progress=not args.json)
        result = trainer.run()
    except (ConfigError, DataError, CheckpointError) as e:
        raise CLIError(str(e), 2) from None
    if trainer.dist.main:
        _emit(args, result, lambda: print(f"trained {result['step']}/{result['total_steps']} steps; "
                                          f"checkpoint {result['checkpoint']}"))


def cmd_eval(args: argparse.Namespace) -> None:
    from qfa.nn.checkpoint import CheckpointError
    from qfa.nn.data import DataError, make_datasets
    from qfa.nn.evaluate import evaluate_specs
    from qfa.nn.supernet import Supernet
    try:
        net = Supernet.from_checkpoint(args.checkpoint)
    except CheckpointError as e:
        raise CLIError(str(e), 2) from None
    space = net.space
    specs = [load_spec(space, s) for s in args.spec or []]
    if args.sample:
        try:
            specs += space.sample_specs(args.sample, args.seed)
        except SpecError as e:
            raise CLIError(f"--sample: {e}", 2) from None
    if not specs:
        raise CLIError("nothing to evaluate: give --spec and/or --sample", 2)
    try:
        data = make_datasets(args.data or net.data, space.resolutions[-1], space=space)
    except DataError as e:
        raise CLIError(str(e), 2) from None

    def show(row: dict) -> None:
        if not args.json:
            print(f"{row['top1']:6.2f}%  {row['hash']}  {row['spec']}", flush=True)
    calib_images = _calib_images(args)
    if not args.json:
        print(f"{'top1':>7s}  {'hash':16s}  spec   (scored as {args.score}; test set: {args.test_images or len(data['test'])} images, "
              f"calibration: {calib_images} training images"
              + (f", best of {args.calib_draws} draws on the held-out split)" if args.calib_draws > 1 else ")"))
    rows = evaluate_specs(net, specs, data, calib_images, args.test_images, progress=show,
                          calib_draws=args.calib_draws, model_for=_model_for(args, data))
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "scored": args.score, "results": rows}))


def _load_net(path: str):
    from qfa.nn.checkpoint import CheckpointError
    from qfa.nn.supernet import Supernet
    try:
        return Supernet.from_checkpoint(path)
    except CheckpointError as e:
        raise CLIError(str(e), 2) from None
    except FileNotFoundError:
        raise CLIError(f"checkpoint not found: {path}", 2) from None


def _output(path: str, suffix: str, flag: str) -> Path:
    """An output file the user named, checked before any work: the right suffix, an existing
    writable folder (none is created), not a folder itself."""
    out = Path(path)
    if out.suffix != suffix:
        raise CLIError(f"{flag} must end in {suffix}: {path}", 2)
    try:
        if out.is_dir():
            raise CLIError(f"{flag} {path} is a folder; name the file to write", 2)
        if not out.parent.is_dir():
            raise CLIError(f"{flag}: folder {out.parent}/ does not exist (create it first)", 2)
        probe = out.parent / f".qfa-write-probe-{os.getpid()}"  # permissions alone do not tell (root, /proc)
        probe.open("xb").close()
        probe.unlink()
        writable = not out.exists() or os.access(out, os.W_OK)
    except (OSError, ValueError) as e:
        raise CLIError(f"{flag}: cannot write {path} ({getattr(e, 'strerror', None) or e})", 2) from None
    if not writable:
        raise CLIError(f"{flag}: cannot write {path} (permission denied)", 2)
    return out


def cmd_export(args: argparse.Namespace) -> None:
    from qfa.nn.data import DataError, make_datasets
    from export.deploy import ExportError, export_subnet, verify_tflite
    out = _output(args.out, ".tflite", "--out")
    if args.onnx:
        _output(args.onnx, ".onnx", "--onnx")
    net = _load_net(args.checkpoint)
    if (args.spec is None) == (args.pareto is None):
        raise CLIError("give exactly one of --spec or --pareto/--index", 2)
    if args.spec:
        spec, target, runtime = load_spec(net.space, args.spec), None, None
    else:
        from qfa.nas.pareto import ParetoSet, SearchError
        try:
            spec, target, runtime = ParetoSet.spec_at(net.space, Path(args.pareto), args.index)
        except SearchError as e:
            raise CLIError(str(e), 2) from None
    args.target = args.target or target or "tflite-int8"  # a Pareto row says how its latency was measured
    if spec.space.hash != net.space.hash:
        raise CLIError(f"spec belongs to space {spec.space.name!r}, the checkpoint to {net.space.name!r}", 2)
    from export.targets import TARGETS
    if TARGETS[args.target].float_io and (args.uint8 or args.onnx or args.via != "direct"):
        raise CLIError(f"{args.target} deploys float32 ops with float32 input and logits: --uint8, --onnx and --via "
                       "onnx2tf are for the integer targets", 2)
    try:
        data = make_datasets(args.data or net.data, spec.resolution, space=net.space)
    except DataError as e:
        raise CLIError(str(e), 2) from None
    from export.onnx2tf_path import Onnx2tfError
    try:
        res = export_subnet(net, spec, data, out, args.target, _calib_images(args), uint8_io=args.uint8,
                            via=args.via, onnx_out=Path(args.onnx) if args.onnx else None, calib_draws=args.calib_draws,
                            runtime=runtime)
    except (Onnx2tfError, ExportError) as e:
        raise CLIError(str(e), 1) from None
    report = {"out": str(out), "sidecar": str(out.with_suffix(".json")), **{k: res["sidecar"][k] for k in
              ("hash", "spec_str", "target", "bytes", "bytes_gzip", "fold_s", "convert_s", "max_zero_point_fraction_lsb")}}
    if args.verify:
        onnx_model = Path(args.onnx).read_bytes() if args.onnx else None
        report["verify"] = verify_tflite(res["bytes"], res["graph"], res["subnet"], data["test"], args.test_images,
                                         onnx_model, direct=args.via == "direct",
                                         delegate=res["sidecar"]["runtime"]["delegate"])  # as the app will run it
    if args.json:
        print(json.dumps(report))
    else:
        print(f"wrote {out} ({report['bytes']:,} bytes, {report['bytes_gzip']:,} gzipped; converted in "
              f"{report['convert_s'] * 1000:.0f} ms) and "
              f"{report['sidecar']}\n  spec {report['spec_str']}  [{report['hash']}]  target {report['target']}")
        if args.verify:
            v = report["verify"]

            def err(pre: str) -> str:  # int8 logits: in output LSB; float32 logits: relative to the largest
                lsb = v.get(f"{pre}max_logit_error_lsb")
                return f"{lsb:.1f} LSB" if lsb is not None else f"{v[f'{pre}max_logit_error_rel']:.1e} (relative)"
            print(f"  verify on {v['images']} test images: TFLite top-1 {v['tflite_top1']:.2f}%" +
                  (f"; as deployed (simulated) {v['deployed_top1']:.2f}%, agreement {v['deployed_agreement']:.2f}%, "
                   f"max logit difference {err('deployed_')}" if "deployed_top1" in v else "") +
                  f"; PyTorch fake-quant {v['pytorch_top1']:.2f}%, agreement {v['agreement']:.2f}%, "
                  f"max logit error {err('')}" +
                  (f"\n  ONNX (Q/DQ, onnxruntime) top-1 {v['onnx_top1']:.2f}%  agreement {v['onnx_agreement']:.2f}%"
                   if "onnx_top1" in v else "") + "\n  ops: " +
                  ", ".join(f"{k} x{n}" for k, n in sorted(v["ops"].items())))
    if args.verify:
        v = report["verify"]
        what = "as-deployed" if "deployed_agreement" in v else "PyTorch fake-quant"
        agree = v.get("deployed_agreement", v["agreement"])
        if agree < args.threshold:
            raise CLIError(f"{what}/TFLite top-1 agreement {agree:.2f}% is below --threshold {args.threshold}% (the file "
                           f"is written; docs/results.md 'Export fidelity' says where files and models differ)", 1)


def _run_dir(checkpoint: str) -> Path:
    p = Path(checkpoint)
    return p if p.is_dir() else p.parent


def cmd_predictor(args: argparse.Namespace) -> None:
    from qfa.nas.predictor import PredictorError, collect, distributed_env, fit, load_rows
    out = Path(args.data_csv or _run_dir(args.checkpoint) / "predictor_data.csv")
    if args.action == "collect":
        from qfa.nn.data import DataError, make_datasets
        net = _load_net(args.checkpoint)
        rank, world, device = distributed_env()
        net.to(device)
        try:
            data = make_datasets(args.data or net.data, net.space.resolutions[-1], space=net.space)
        except DataError as e:
            raise CLIError(str(e), 2) from None
        def progress(i: int, n: int, row: dict) -> None:
            if not args.json:
                print(f"\rcollect: {i}/{n}  last {float(row['top1']):.2f}% ({row['stratum']})", end="", file=sys.stderr, flush=True)
        try:
            added = collect(net, data, out, args.n, _calib_images(args), args.eval_images, args.seed, rank, world,
                            progress, device, scored=args.score)
        except PredictorError as e:
            raise CLIError(str(e), 2) from None
        if not args.json:
            print(file=sys.stderr)
        _emit(args, {"data": str(out), "added": added, "rows": len(load_rows(out))},
              lambda: print(f"{out}: {len(load_rows(out))} labelled subnets ({added} new; held-out split of the training set)"))
        return
    from qfa.nn.checkpoint import CheckpointError, checkpoint_space, load_checkpoint
    try:
        net_space = checkpoint_space(load_checkpoint(args.checkpoint), args.checkpoint)
    except CheckpointError as e:
        raise CLIError(str(e), 2) from None
    try:
        pred, metrics = fit(net_space, load_rows(out), epochs=args.epochs, seed=args.seed)
    except PredictorError as e:
        raise CLIError(str(e), 2) from None
    dest = Path(args.out or _run_dir(args.checkpoint) / "predictor.safetensors")
    pred.save(dest)
    _emit(args, {"predictor": str(dest), **metrics},
          lambda: print(f"wrote {dest} ({metrics['model']} on {metrics['encoding']}, fitted to {metrics['target']}; "
                        f"chosen by 5-fold CV on the training subnets)\n"
                        f"  held-out subnets: {metrics['n_val']} of {metrics['n']}  RMSE {metrics['rmse']:.3f} "
                        f"points  Kendall tau {metrics['kendall_tau']:.3f}  Spearman rho {metrics['spearman_rho']:.3f}"))


def _table_arg(text: str) -> Path:
    """``--table``: NAME.csv (or NAME) with NAME.json beside it."""
    p = Path(text)
    if not p.name or p.name in (".", ".."):
        raise CLIError(f"--table {text!r}: name a table file (NAME.csv with NAME.json beside it)", 2)
    return p.with_suffix(".csv")


def _warn_other_machine(table_csv: Path) -> None:
    """One line on stderr when a local table was measured on another machine than this one."""
    from hw.table import TableError, read_meta
    from hw.transport import host_mismatch
    try:
        mismatch = host_mismatch(read_meta(table_csv.with_suffix(".json")))
    except TableError:
        return  # a broken table is reported where it is loaded
    if mismatch:
        print(f"qfa search: warning: {table_csv} describes another machine ({'; '.join(mismatch)}); its latencies "
              "do not hold here: profile this host (python -m hw.profile)", file=sys.stderr)


def cmd_search(args: argparse.Namespace) -> None:
    """One saved (or new) Pareto set over every ``--table``: each table is one runtime
    configuration of one deployment target, and each subnet is searched in its fastest
    (``qfa.nas.search.Fastest``); the answer is the most accurate subnet under the budget."""
    import time as _time
    t0 = _time.perf_counter()
    # the saved-set path imports nothing heavy
    from qfa.nas.search import (Fastest, SearchError, describe_deployments, describe_formats, formats_report,
                                pareto_base, per_configuration, saved_or_search)
    from export.targets import DEFAULT_RUNTIME, runtime_of
    from hw.table import read_meta
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise CLIError(f"checkpoint not found: {args.checkpoint}", 2)
    ckpt_file = ckpt / "last.pt" if ckpt.is_dir() else ckpt
    pred_path = Path(args.predictor or _run_dir(args.checkpoint) / "predictor.safetensors")
    tables = list(dict.fromkeys(_table_arg(t) for t in args.table))
    for p, what in ((ckpt_file, "checkpoint"), (pred_path, "predictor (run `qfa predictor fit`)"),
                    *((p, w) for t in tables for p, w in ((t, "latency table"),
                                                           (t.with_suffix(".json"), "latency table metadata")))):
        if not p.is_file():
            raise CLIError(f"{what} not found: {p}", 2)
    if len({t.stem for t in tables}) < len(tables):
        raise CLIError("two --table files share a name: a Pareto row names its table by it", 2)

    def progress(g: int, n: int) -> None:
        if not args.json and (g % 10 == 0 or g == n):
            print(f"\rsearch: generation {g}/{n}", end="", file=sys.stderr, flush=True)
    sizer = _file_sizer(args.checkpoint) if args.max_bytes is not None else None
    try:
        base = pareto_base(_run_dir(args.checkpoint), ckpt_file, pred_path, tables, args.bits)
    except SearchError as e:
        raise CLIError(str(e), 2) from None

    def load():
        from hw.table import LatencyTable, TableError
        from qfa.nas.predictor import Predictor, PredictorError
        try:
            pred, loaded = Predictor.load(pred_path), {t.stem: LatencyTable.load(t) for t in tables}
            latency = Fastest(loaded)
        except (TableError, PredictorError, SearchError) as e:
            raise CLIError(str(e), 2) from None
        scored = pred.meta.get("scored")
        if scored is not None and scored.split("@")[0] != latency.target_name:
            print(f"qfa search: warning: the predictor's labels were scored as {scored}, the tables deploy "
                  f"{latency.target_name}: its top-1 is not what those files compute", file=sys.stderr)
        return pred, latency
    for t in tables:
        _warn_other_machine(t)
    try:
        pset, front = saved_or_search(base, load, args.pop, args.gens, args.seed, args.bits, progress, args.force)
    except SearchError as e:
        raise CLIError(str(e), 2) from None
    cached = front is None
    if front is not None:
        if not args.json:
            print(f"\rsearch: {len(tables)} table(s): {args.gens} generations x {args.pop} in {front['seconds']:.1f}s, "
                  f"{len(front['genomes'])} non-dominated subnets", file=sys.stderr)
        pset.save(base, args.latency_ms)
    try:
        ranked = pset.ranked(args.latency_ms, args.max_bytes, args.margin, file_bytes=sizer, need=args.verify or 1)
    except SearchError as e:
        raise CLIError(str(e), 2) from None
    finally:
        if any(isinstance(r.get("file_bytes"), int) for r in pset.rows):
            pset.save_rows(base)  # keeps the exact sizes computed, for every later query
    verified, verify_s = None, 0.0
    if args.verify:
        t_v = _time.perf_counter()
        (best, _, _), verified = _verify(args, [(pset, base, ranked)])
        verify_s = _time.perf_counter() - t_v
    else:
        best = ranked[0]
    table_csv = next((t for t in tables if t.stem == best.get("table")), tables[0])
    candidates = per_configuration(pset, args.latency_ms, args.margin,
                                   {t.stem: (t, runtime_of(read_meta(t.with_suffix(".json")))) for t in tables}, best)
    ms = (_time.perf_counter() - t0) * 1000
    runtime = best.get("runtime") or dict(DEFAULT_RUNTIME)
    res = {"spec": best["spec"], "spec_str": best["spec_str"], "hash": best["hash"], "predicted_top1": best["top1"],
           "predicted_latency_ms": best["latency_ms"], "bytes": best["bytes"], "index": best["index"],
           **({"file_bytes": best["file_bytes"]} if "file_bytes" in best else {}),
           "pareto": str(base.with_suffix(".jsonl")), "from_saved_set": cached, "answer_ms": round(ms, 1),
           "target": best.get("target", "tflite-int8"), "runtime": runtime, "table": str(table_csv),
           "candidates": candidates}
    from export.targets import TARGETS
    if TARGETS[res["target"]].float_io:  # which parts deploy in float, and the all-int8 / all-float twins
        from hw.table import LatencyTable
        from qfa.nas.predictor import Predictor
        table = LatencyTable.load(table_csv)
        res["formats"] = formats_report(table.space.parse(json.dumps(best["spec"])), table, Predictor.load(pred_path))
    if verified is not None:
        res.update(holdout_top1=best["holdout"]["top1"], verified=verified, verify_s=round(verify_s, 1),
                   verify_calib_images=best["holdout"]["calib_images"])
    why = "" if len(tables) == 1 else f"\n  chosen over {len(tables)} tables: {describe_deployments(candidates)}"
    if verified is not None:
        new = sum(not v["cached"] for v in verified)
        why += (f"\n  verified: the {len(verified)} best-predicted under the budget labelled on the held-out split "
                f"({new} new, {verify_s:.0f} s): held-out top-1 {best['holdout']['top1']:.2f}% for this one, "
                f"predicted rank {1 + next(i for i, v in enumerate(verified) if v['hash'] == best['hash'])}; range "
                f"{min(v['holdout_top1'] for v in verified):.2f}-{max(v['holdout_top1'] for v in verified):.2f}%")
    calib = f" --calib-images {args.calib_images}" if verified is not None and args.calib_images else ""
    _emit(args, res, lambda: print(
        f"{best['spec_str']}  [{best['hash']}]\n  predicted top-1 {best['top1']:.2f}%  predicted latency "
        f"{best['latency_ms']:.3f} ms (budget {args.latency_ms:g}, margin {args.margin:.0%})  weights "
        f"{best['bytes']:,} bytes" + (f", file {best['file_bytes']:,} bytes" if "file_bytes" in best else "")
        + f"\n  deploy: {res['target']}, {runtime['delegate']}, {runtime['threads']} thread(s) "
        f"(as {table_csv.name} measured it)"
        + (f"\n  formats: {describe_formats(res['formats'])}" if "formats" in res else "")
        + f"{why}\n  Pareto set: {base.with_suffix('.jsonl')} (row {best['index']}), "
        f"plot {base.with_suffix('.png')}" + ("  [answered from the saved set]" if cached else "")
        + f"\n  export: qfa export --checkpoint {args.checkpoint} --pareto {base.with_suffix('.jsonl')} "
          f"--index {best['index']} --out model.tflite --verify{calib}"))


def _file_sizer(checkpoint: str):
    """The exact .tflite size of a Pareto row (export.deploy.FileSize), built on first use."""
    sizer = []

    def size(row: dict) -> int:
        if not sizer:
            from export.deploy import FileSize
            from qfa.nn.checkpoint import CheckpointError
            try:
                sizer.append(FileSize.of_checkpoint(checkpoint))
            except CheckpointError as e:  # names the file
                raise CLIError(str(e), 2) from None
        fs = sizer[0]
        return fs(fs.space.parse(json.dumps(row["spec"])), row.get("target", "tflite-int8"))
    return size


def _verify(args: argparse.Namespace, sets: list) -> tuple:
    """``qfa search --verify K``, calibrated as ``qfa export`` calibrates (``--calib-images``, one draw)."""
    from qfa.nn.data import DataError
    from qfa.nas.verify import verify_on_holdout

    def progress(i: int, n: int, rep: dict) -> None:
        if not args.json:
            print(f"\rverify: {i}/{n} labelled, last {rep['holdout_top1']:.2f}% (predicted {rep['predicted_top1']:.2f}%)",
                  end="" if i < n else "\n", file=sys.stderr, flush=True)
    try:
        return verify_on_holdout(lambda: _load_net(args.checkpoint), sets, args.verify, _calib_images(args), progress=progress)
    except DataError as e:
        raise CLIError(str(e), 2) from None


# ---- parser ------------------------------------------------------------------------------
def _add_space_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", default="fmnist", help=f"search-space preset ({', '.join(list_spaces())}), or a space .json "
                   "file a run wrote (RUN/space.json; default: fmnist)")
    p.add_argument("--bits", type=bit_list, default=None,
                   help="override the space's bit choices, e.g. 2,3,4,32 (32 = full precision)")


def _add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="training checkpoint (last.pt) or its run folder")


def _add_calib(p: argparse.ArgumentParser, draws: bool = True) -> None:
    p.add_argument("--calib-images", type=integer(1), metavar="N",
                   help="training images that calibrate each subnet (default: qfa.nn.calibrate's, 8000)")
    if draws:
        p.add_argument("--calib-draws", type=integer(1, 1000), default=1, metavar="K", help="calibrate on K random image draws "
                       "and keep the best on the held-out training split (default 1)")


def _add_score(p: argparse.ArgumentParser) -> None:
    from export.targets import SCORINGS
    p.add_argument("--score", choices=SCORINGS, default=SCORINGS[0],
                   help=f"score each subnet as deployed for a target (its integer graph, exactly what the .tflite "
                        f"computes; default {SCORINGS[0]}) or as the PyTorch fake-quant model")


def _model_for(args: argparse.Namespace, data: dict):
    """The qfa.nn.evaluate hook that scores a calibrated subnet as ``--score`` says."""
    from export.targets import FAKE_QUANT
    if args.score == FAKE_QUANT:
        return None
    from export.deploy import deployed_model
    return lambda net, spec: deployed_model(net, spec, data, args.score)


def _calib_images(args: argparse.Namespace) -> int:
    from qfa.nn.calibrate import DEFAULT_CALIB_IMAGES  # imports torch: only where a subnet is calibrated
    return args.calib_images or DEFAULT_CALIB_IMAGES


def _command(sub, name: str, func: Callable[[argparse.Namespace], None], **kw) -> argparse.ArgumentParser:
    """A subcommand run by ``func``, with --json, whose description keeps its line breaks."""
    p = sub.add_parser(name, epilog=_EPILOG, **kw)
    p.set_defaults(func=func)
    p.add_argument("--json", action="store_true", help="print one JSON object (or JSON lines) on stdout")
    return p


DATA_HELP = ("your own images: an ImageFolder root (ROOT/train/<class>/ and ROOT/val/<class>/, or ROOT/<class>/ "
             "alone, a test split then carved from it), grey or RGB, any size and number of classes")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="qfa", description=__doc__.split("\n\n")[0], epilog=_EPILOG)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sp = _command(sub, "space", cmd_space, help="describe a search space or sample specs from it",
                       description="Describe a search space (choices, exact subnet count) or sample specs.\n"
                                   "examples:\n  qfa space --space paper\n  qfa space sample --space fmnist --n 5 --seed 0")
    sp.add_argument("action", nargs="?", default="show", choices=["show", "sample"])
    _add_space_args(sp)
    sp.add_argument("--n", type=integer(1, 1_000_000), default=5, help="number of specs to sample (default 5)")
    sp.add_argument("--seed", type=integer(0), default=None, help="random seed")
    sp.add_argument("--compact", action="store_true", help="print the compact text form instead of JSON lines")

    cp = _command(sub, "cost", cmd_cost, help="MACs, params, BitOPs, bit-weighted MFLOPs and bytes of a spec",
                       description="Cost model of one spec.\nexample:\n  qfa space sample --n 1 > s.json && qfa cost --spec s.json --per-layer")
    _add_space_args(cp)
    cp.add_argument("--spec", required=True, help="spec as a JSON file, JSON text or compact text")
    cp.add_argument("--per-layer", action="store_true", help="also list every conv")

    tp = _command(sub, "train", cmd_train, help="train the mixed-precision supernet (float stage, then stage 0 and 1)",
                       description="Train a supernet with the QFA recipe. Single process, or under torchrun:\n"
                                   "  qfa train fmnist --out runs/fmnist\n"
                                   "  qfa train fmnist --out runs/fmnist --resume\n"
                                   "  torchrun --nproc_per_node=8 -m qfa train paper --data /data/imagenet --out runs/paper --amp")
    tp.add_argument("config", nargs="?", default="fmnist", help="config file (YAML/TOML) or preset: fmnist, paper")
    tp.add_argument("--out", required=True, help="run folder (checkpoint last.pt, metrics.csv, config.json)")
    tp.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tp.add_argument("--init-float", metavar="CKPT", help="start the precision stages from this float supernet")
    tp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable), "
                    "e.g. batch_size=32 or stage1.epochs=2")
    tp.add_argument("--act-quant", choices=["bq", "minmax", "lsq"], help="activation quantizer (ablation)")
    tp.add_argument("--data", help=DATA_HELP + " (default: Fashion-MNIST)")
    tp.add_argument("--device", choices=["auto", "cpu", "cuda"])
    tp.add_argument("--batch-size", type=integer(1))
    tp.add_argument("--seed", type=integer(0))
    tp.add_argument("--workers", type=integer(0, 256), help="data-loader worker processes")
    tp.add_argument("--max-steps", type=integer(1), help="stop after this many steps (a checkpoint is written)")
    tp.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    tp.add_argument("--channels-last", action="store_true", help="channels-last memory format (much slower for this model's depthwise convs on GPUs; off by default)")

    ep = _command(sub, "eval", cmd_eval, help="calibrate and evaluate subnets of a trained supernet on the test set",
                       description="examples:\n  qfa eval --checkpoint runs/fmnist --sample max,min,random:5\n"
                                   "  qfa eval --checkpoint runs/fmnist/last.pt --spec spec.json --json")
    _add_checkpoint(ep)
    ep.add_argument("--spec", action="append", help="spec (JSON file, JSON text or compact text); repeatable")
    ep.add_argument("--sample", help="specs to sample, comma-separated: max[:B], min[:B], random:N (mixed "
                    "precision) or random:N:B (every conv at B bits)")
    ep.add_argument("--seed", type=integer(0), default=0)
    ep.add_argument("--data", help="ImageFolder root (default: the data the supernet was trained on)")
    _add_calib(ep)
    ep.add_argument("--test-images", type=integer(1), default=None, help="limit the test images (default: all)")
    _add_score(ep)

    from export.targets import TARGETS
    xp = _command(sub, "export", cmd_export, help="export a subnet to an integer .tflite (+ sidecar JSON), optionally verified",
                       description="examples:\n  qfa export --checkpoint runs/fmnist --spec spec.json --out model.tflite --verify\n"
                                   "  qfa export --checkpoint runs/fmnist --pareto pareto.jsonl --index 0 --out m.tflite --target tflite-int4w")
    _add_checkpoint(xp)
    xp.add_argument("--spec", help="spec (JSON file, JSON text or compact text)")
    xp.add_argument("--pareto", help="a saved Pareto set (JSON lines) to take the spec from")
    xp.add_argument("--index", type=integer(0), default=0, help="row of --pareto (default 0)")
    xp.add_argument("--out", required=True, help="output .tflite path (a .json sidecar is written beside it)")
    xp.add_argument("--target",
                    choices=sorted(TARGETS),
                    help="deployment target (default: the --pareto row's, else tflite-int8): int8 everywhere, "
                         "or <=4-bit CONV_2D weights stored as INT4 (size "
                         "only); -hswish-decomposed: hardswish as ADD + MUL instead of HARD_SWISH (faster where "
                         "the runtime's int8 HARD_SWISH is slow; profile both); tflite-f32/f16-*: full-precision "
                         "convs as float32 ops (fp16 weights), float32 input and logits (docs/formats.md)")
    xp.add_argument("--via", choices=["direct", "onnx2tf"], default="direct",
                    help="direct: write the folded graph with its exact scales (default); onnx2tf: float ONNX -> "
                         "onnx2tf -> int8 calibrated by the converter (for comparison)")
    xp.add_argument("--onnx", help="also write the Q/DQ ONNX model here (verified with onnxruntime by --verify)")
    xp.add_argument("--uint8", action="store_true", help="uint8 input/output instead of int8")
    xp.add_argument("--verify", action="store_true", help="run the file on the test set and compare with PyTorch")
    xp.add_argument("--threshold", type=number(0.0), default=99.0, help="minimum top-1 agreement %% of the file with the "
                    "subnet as deployed (--via onnx2tf: with the fake-quant model) for --verify (default 99)")
    xp.add_argument("--test-images", type=integer(1), default=None, help="limit the verification images (default: all)")
    _add_calib(xp)
    xp.add_argument("--data", help="ImageFolder root (default: the data the supernet was trained on)")

    pp = _command(sub, "predictor", cmd_predictor, help="collect accuracy labels for subnets, or fit the accuracy predictor",
                       description="examples:\n  qfa predictor collect --checkpoint runs/fmnist --n 400\n"
                                   "  torchrun --nproc_per_node=4 -m qfa predictor collect --checkpoint runs/imnet --n 2000\n"
                                   "  qfa predictor fit --checkpoint runs/fmnist")
    pp.add_argument("action", choices=["collect", "fit"])
    _add_checkpoint(pp)
    pp.add_argument("--subnets", "--n", dest="n", type=integer(1), default=400,
                    help="subnets to label (collect; default 400; under torchrun spell it --subnets: torchrun "
                         "reads a bare --n as its own --nnodes/--nproc-per-node)")
    pp.add_argument("--data-csv", help="label CSV (default RUN/predictor_data.csv)")
    pp.add_argument("--out", help="predictor file (fit; default RUN/predictor.safetensors)")
    _add_calib(pp, draws=False)
    pp.add_argument("--eval-images", type=integer(1), help="held-out images per subnet (default all: fewer make noisier labels)")
    _add_score(pp)
    pp.add_argument("--epochs", type=integer(1), default=150, help="MLP training epochs (fit; default 150)")
    pp.add_argument("--seed", type=integer(0), default=0)
    pp.add_argument("--data", help="ImageFolder root (default: the data the supernet was trained on)")

    sp2 = _command(sub, "search", cmd_search, help="best subnet under a latency budget (NSGA-II once, then from the saved Pareto set)",
                        description="example:\n  qfa search --checkpoint runs/fmnist --table latency_tables/amd-epyc-zen4-1t.csv --latency-ms 2")
    sp2.add_argument("--checkpoint", required=True)
    sp2.add_argument("--table", required=True, action="append", help="latency table CSV (with its JSON beside "
                     "it); repeat it to search across runtime configurations of one target (e.g. an XNNPACK and a "
                     "builtin-kernels table) in one search, each subnet in its fastest")
    sp2.add_argument("--latency-ms", type=number(positive=True), required=True, help="latency budget (ms, as the table measures)")
    sp2.add_argument("--max-bytes", type=number(positive=True), help="size budget: the exact bytes of the .tflite that "
                     "qfa export writes (computed per candidate, ~0.2 s each the first time, then kept in the Pareto set)")
    sp2.add_argument("--margin", type=number(0.0), default=0.05, help="keep predicted latency under budget/(1+margin) "
                     "(default 0.05: the shipped table predicts trained subnets within ~5%%)")
    sp2.add_argument("--predictor", help="predictor file (default RUN/predictor.safetensors)")
    sp2.add_argument("--pop", type=integer(MIN_POP), default=500, help="NSGA-II population (default 500)")
    sp2.add_argument("--gens", type=integer(1), default=200, help="generations (default 200; see bench/search.py)")
    sp2.add_argument("--seed", type=integer(0), default=0)
    sp2.add_argument("--bits", type=bit_list,
                     help="search only these bitwidths, e.g. 8 or 4,8 (default: every trained one)")
    sp2.add_argument("--force", action="store_true", help="search again even if a saved set exists")
    sp2.add_argument("--verify", type=integer(1), metavar="K", help="label the K best-predicted subnets under the "
                     "budget on the held-out split (calibrated as qfa export calibrates, scored as deployed) and "
                     "answer with the truly best; labels are kept in the Pareto set (~12 s each at 2,000 calibration "
                     "images on 2 Zen 4 cores)")
    _add_calib(sp2, draws=False)

    # listed for --help; main() hands `qfa profile ...` to hw/profile.py's own parser
    sub.add_parser("profile", help="measure a device into a latency table (same as python hw/profile.py)", add_help=False)

    rp = _command(sub, "run", cmd_run, help="the main job: train, table, predictor, search, export, verify",
                       description="The whole flow on Fashion-MNIST or --data, resumable (rerun to continue):\n"
                                   "  train the fmnist supernet on a short schedule (or reuse --checkpoint), take the\n"
                                   "  shipped host latency table (or --profile this host), label subnets and fit the\n"
                                   "  accuracy predictor, search with NSGA-II under --latency-ms, export the chosen subnet\n"
                                   "  to .tflite (int8 convs, float32 where faster), verify it on the test set and measure\n"
                                   "  its latency here.\n"
                                   "examples:\n  qfa run\n  qfa run --checkpoint runs/fmnist --latency-ms 1.5\n"
                                   "  qfa run --data ~/my_images --run runs/mine")
    rp.add_argument("--run", default="runs/main", help="run folder (default runs/main)")
    rp.add_argument("--checkpoint", help="a trained supernet to use instead of training one")
    rp.add_argument("--data", help=DATA_HELP + "; the space is fitted to it (default: Fashion-MNIST)")
    rp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a training config key (repeatable), "
                    "e.g. space.resolutions=[24,32] or stage1.epochs=1")
    rp.add_argument("--table", action="append", help="latency table CSV, repeatable: one per runtime configuration "
                    "searched (default: every configuration shipped for this CPU, else this host profiled)")
    rp.add_argument("--deploy", choices=sorted(TARGETS), help="deployment target (default: the tables', else "
                    "tflite-f32-hswish-decomposed: int8 convs and FP convs as float32 ops); with no --table, every "
                    "table of it shipped for this CPU, else this host profiled; a float target (tflite-f32-*) also "
                    "trains FP in the last stage and searches FP convs as float ops, an int8 one (e.g. "
                    "tflite-int8-hswish-decomposed) neither")
    rp.add_argument("--profile", action="store_true", help="measure this host into a new table first")
    rp.add_argument("--latency-ms", type=number(positive=True), help="latency budget (default: middle of the front's range)")
    rp.add_argument("--n-predictor", type=integer(2), help="subnets to label for the predictor (default 60)")
    rp.add_argument("--pop", type=integer(MIN_POP), help="NSGA-II population (default 200)")
    rp.add_argument("--gens", type=integer(1), help="NSGA-II generations (default 100)")
    rp.add_argument("--test-images", type=integer(1), help="verification images (default: all 10,000)")
    rp.add_argument("--allow-over-budget", action="store_true", help="keep the shipped model even when it measures "
                    "over the budget here (by default that is an error, exit status 1)")
    from hw.profiling import SPEED_BAND, SPEED_CHECK
    rp.add_argument("--speed-check", type=integer(0), metavar="K", help="time K subnets whole before the search "
                    f"and scale each table's predictions to this host's speed now (default {SPEED_CHECK}; 0: the "
                    f"tables as measured); a table off by over {SPEED_BAND:g}x is replaced by this host profiled")
    rp.add_argument("--verify", type=integer(1), metavar="K", help="label the K best-predicted subnets under the "
                    "budget on the held-out split, as the export calibrates them, and ship the truly best")
    rp.add_argument("--tiny", action="store_true", help="a minutes-long configuration for tests")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["profile"]:
        from hw.profile import main as profile_main
        return profile_main(argv[1:], prog="qfa profile")
    args = build_parser().parse_args(argv)

    def body() -> int:
        args.func(args)
        return 0
    return run_guarded(f"qfa {args.command}", body, (CLIError, SpecError))


if __name__ == "__main__":
    sys.exit(main())
