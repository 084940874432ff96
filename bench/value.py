"""Value of the whole flow against what an edge engineer would ship instead, at equal MEASURED
latency on this host, with the design cost of each and the search's regret.

    python bench/value.py --run runs/fmnist [--table latency_tables/amd-epyc-zen4-1t-hswish-decomposed.csv]
                          [--budgets 0.1,0.2,0.4] [--out runs/value]

RUN: a trained supernet (``qfa train fmnist --out RUN``). At each budget (default: the tightest
the table's front reaches, its slowest member, and their geometric middle), every candidate is
exported as it would ship, timed end to end here and scored on the 10,000 test images from the
.tflite itself:

  toolkit          ``qfa search`` under the budget, ``qfa export`` (no retraining)
  toolkit+verify   the same with ``qfa search --verify K``
  uniform-W8A8/W4A4/W2A2   the same supernet and search restricted with ``--bits``
  hand-scaled      bench/handscaled.py: the MobileNetV3-family network scaled uniformly to fit the
                   budget in float32, trained from scratch, converted by onnx2tf to float32 and
                   to full-integer int8 (post-training quantization), timed under the
                   interpreter's default configuration and under its fastest one here

Also measured: the design cost (CPU-minutes to a deployable model for N = 1, 3, 10 budgets, and
the break-even N) and the search regret (of the 16 best-predicted under each budget, labelled on
the held-out split as an export calibrates: best label - the label of the pick, with and without
``--verify``; Kendall tau among them against the bound that label noise allows).

Everything is cached in OUT (state.json, models/, baselines/): an interrupted run resumes and a
rerun retrains and re-exports nothing. Writes OUT/value.csv and OUT/value.png.
Exit status: 0 done; 1 a step failed; 2 bad input (run folder, table, budgets).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from qfa.core.fileio import atomic_write  # noqa: E402

CONFIGS = [("default", "xnnpack", None), ("xnnpack-1t", "xnnpack", 1), ("xnnpack-2t", "xnnpack", 2),
           ("builtin-1t", "builtin", 1), ("builtin-2t", "builtin", 2)]
BITS = {"uniform-W8A8": "8", "uniform-W4A4": "4", "uniform-W2A2": "2"}
TABLE = ROOT / "latency_tables" / "amd-epyc-zen4-1t-hswish-decomposed.csv"  # int8: the figures in docs/ used it


class BenchError(RuntimeError):
    def __init__(self, msg: str, code: int = 1) -> None:
        super().__init__(msg)
        self.code = code


def say(msg: str) -> None:
    print(f"[value] {msg}", file=sys.stderr, flush=True)


def retime(state: "State", runs: int, shipped: dict | None) -> None:
    """Measure every cached .tflite again; drop the scaling choices made on the old timings."""
    for key in list(state.d):
        v = state.d[key]
        if key.startswith("model:"):
            state.put(key, {**v, "ms": time_all(Path(v["path"]), runs, shipped)})
        elif key.startswith("convert:"):
            state.put(key, {**v, **{f: {**v[f], "ms": time_all(Path(v[f]["path"]), runs)} for f in ("float32", "int8")}})
        elif key.startswith("scale:"):
            del state.d[key]
    say(f"re-timed {sum(k.startswith(('model:', 'convert:')) for k in state.d)} cached models")


class State:
    """OUT/state.json: every finished step's result, written atomically after each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.d = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            raise BenchError(f"{path} is not a state file of this bench (move it away to start over)", 2) from None

    def get(self, key: str):
        return self.d.get(key)

    def put(self, key: str, value) -> None:
        self.d[key] = value
        atomic_write(self.path, json.dumps(self.d, indent=1).encode())


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def qfa(*args: str, timeout: float = 3600) -> dict:
    """``qfa ARGS --json``: its result, plus wall and CPU seconds; a failure is one line."""
    t, c = time.perf_counter(), _cpu_children()
    r = subprocess.run([sys.executable, "-m", "qfa", *args, "--json"], capture_output=True, text=True,
                       cwd=ROOT, timeout=timeout)
    if r.returncode:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        raise BenchError(f"qfa {args[0]} failed: {lines[-1] if lines else r.returncode}", 2 if r.returncode == 2 else 1)
    res = json.loads(r.stdout)
    res["_s"], res["_cpu_s"] = time.perf_counter() - t, _cpu_children() - c
    return res


def time_all(path: Path, runs: int, shipped: dict | None = None) -> dict:
    """Latency (ms, the fastest invoke, as tables record it) under every runtime configuration of CONFIGS (and the
    ``shipped`` one, {"delegate", "threads"}, named ``DELEGATE-Nt``)."""
    from hw.runner import time_model
    configs = list(CONFIGS)
    if shipped and f"{shipped['delegate']}-{shipped['threads']}t" not in {c[0] for c in configs}:
        configs.append((f"{shipped['delegate']}-{shipped['threads']}t", shipped["delegate"], shipped["threads"]))
    return {name: time_model(str(path), threads, delegate=delegate, runs=runs)["min_us"] / 1000
            for name, delegate, threads in configs}


def tflite_top1(blob: bytes, data, resolution: int, n: int | None) -> float:
    """Top-1 (%) of a .tflite (float or int8 I/O) on the first ``n`` images of ``data``."""
    import torch
    from export.verify import TFLiteModel
    from qfa.nn.data import resize
    m = TFLiteModel(blob)
    n = len(data) if n is None else min(n, len(data))
    ok = 0
    for s in range(0, n, 256):
        batch = [data[i] for i in range(s, min(n, s + 256))]
        x = resize(torch.stack([b[0] for b in batch]), resolution).permute(0, 2, 3, 1).numpy()
        ok += int((m.logits(np.ascontiguousarray(x)).argmax(1) == np.array([b[1] for b in batch])).sum())
    return 100.0 * ok / n


def train_seconds(run: Path) -> float | None:
    """Wall seconds of the supernet's training steps, from its metrics.csv (each row: the images
    since the previous one at its images/s); None when the run has no metrics."""
    import csv
    p = run / "metrics.csv"
    if not p.exists():
        return None
    cfg = json.loads((run / "config.json").read_text())
    total, prev = 0.0, 0
    with open(p, newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row["step"]))
            total += (step - prev) * cfg["batch_size"] / max(float(row["images_per_s"]), 1e-9)
            prev = step
    return total


def kendall(a, b) -> float:
    from scipy.stats import kendalltau
    return float(kendalltau(a, b).statistic)


def noise_bound(labels: np.ndarray, sd: float, draws: int = 200) -> float:
    """Mean Kendall tau of these labels against themselves plus N(0, sd) noise: what a perfect
    predictor could reach against labels this noisy (bench/predictor.py --label-sd)."""
    rng = np.random.default_rng(0)
    return float(np.mean([kendall(labels, labels + rng.normal(0, sd, len(labels))) for _ in range(draws)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="exit status: 0 done; 1 a step failed; 2 bad input")
    ap.add_argument("--run", required=True, help="a trained supernet's run folder (RUN/last.pt)")
    ap.add_argument("--table", help=f"latency table CSV (default: {TABLE.relative_to(ROOT)})")
    ap.add_argument("--budgets", help="comma-separated ms (default: tightest, middle and slowest of the front)")
    ap.add_argument("--out", default="runs/value", help="cache and results folder (default runs/value)")
    ap.add_argument("--labels", type=int, default=120, help="predictor labels (default 120)")
    ap.add_argument("--label-calib", type=int, default=2000, help="calibration images per label (default 2000)")
    ap.add_argument("--calib-images", type=int, default=None, help="export calibration images (default qfa export's)")
    ap.add_argument("--verify", type=int, default=8, help="K of qfa search --verify K (default 8)")
    ap.add_argument("--regret-k", type=int, default=16, help="front members labelled per budget for the regret")
    ap.add_argument("--label-sd", type=float, default=0.28, help="label noise sd in points (bench/label_noise.py)")
    ap.add_argument("--test-images", type=int, default=None, help="test images per model (default all 10,000)")
    ap.add_argument("--max-epochs", type=int, default=None, help="hand-scaled training epochs at most (default 12)")
    ap.add_argument("--patience", type=int, default=None, help="stop after this many epochs without a better "
                    "held-out top-1 (default 2)")
    ap.add_argument("--skip-baselines", action="store_true", help="leave out the hand-scaled networks (c)")
    ap.add_argument("--train-minutes", type=float, default=None, help="the supernet's training wall minutes on "
                    "this host's cores (default: from RUN/metrics.csv)")
    ap.add_argument("--baselines-only", action="store_true", help="only the hand-scaled networks at --budgets "
                    "(they need no supernet: run them while it trains, into the same --out)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for training the hand-scaled networks")
    ap.add_argument("--retime", action="store_true", help="time every cached model again (after a run with "
                    "other processes beside it) and scale the hand-scaled networks again on those timings")
    ap.add_argument("--tiny", action="store_true", help="a minutes-long configuration (tests)")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except BenchError as e:
        print(f"bench/value.py: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("bench/value.py: interrupted (rerun to resume)", file=sys.stderr)
        return 130


def run(args) -> int:  # noqa: C901 - one benchmark, step by step
    from hw.table import LatencyTable, TableError
    from hw.transport import Local, RunConfig
    from qfa.nn.checkpoint import CheckpointError
    from qfa.nn.supernet import Supernet
    t_start = time.perf_counter()
    tiny = args.tiny
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.baselines_only:
        return baselines_only(args)
    run_dir, out = Path(args.run), Path(args.out)
    if not (run_dir / "last.pt").is_file():
        raise BenchError(f"{run_dir} holds no trained supernet (no {run_dir / 'last.pt'}): train one with "
                         f"qfa train fmnist --out {run_dir}", 2)
    try:
        net = Supernet.from_checkpoint(run_dir)
    except CheckpointError as e:
        raise BenchError(str(e), 2) from None
    table_csv = Path(args.table or TABLE)
    try:
        table = LatencyTable.load(table_csv)
        table.check_space(net.space)
    except TableError as e:
        raise BenchError(str(e), 2) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    state = State(out / "state.json")
    if args.retime:
        retime(state, 50 if tiny else 200, table.runtime)
    facts = Local("local", RunConfig()).facts()
    host = f"{facts.get('cpu')} ({facts.get('cpu_id')}), {facts.get('cores')} cores, {facts.get('runtime')}"
    say(f"host: {host}; table {table_csv.name} ({table.runtime['delegate']}, {table.runtime['threads']} thread(s))")
    for m in table.host_mismatch():
        say(f"warning: the table describes another machine ({m}); its budgets do not hold here")
    rt = table.runtime
    shipped_cfg = f"{rt['delegate']}-{rt['threads']}t"
    ck = ["--checkpoint", str(run_dir)]
    test_n = 300 if tiny and args.test_images is None else args.test_images
    n_calib = args.calib_images or (64 if tiny else None)  # None: qfa export's default
    calib = ["--calib-images", str(n_calib)] if n_calib else []
    runs = 50 if tiny else 200
    search_more = ["--pop", "40", "--gens", "8"] if tiny else []

    # 1. predictor (labels scored as deployed for the table's target)
    pred = out / "predictor.safetensors"
    if state.get("predictor") is None:
        n_labels, lcal = (12, 64) if tiny else (args.labels, args.label_calib)
        say(f"1/6 predictor: labelling {n_labels} subnets on the held-out split, then fitting")
        c = qfa("predictor", "collect", *ck, "--subnets", str(n_labels), "--calib-images", str(lcal),
                "--eval-images", "500" if tiny else "2000", "--score", table.target_name,
                "--data-csv", str(out / "labels.csv"))
        f = qfa("predictor", "fit", *ck, "--data-csv", str(out / "labels.csv"), "--out", str(pred),
                *(["--epochs", "30"] if tiny else []))
        state.put("predictor", {"labels": n_labels, "label_s": c["_s"], "label_cpu_s": c["_cpu_s"], "fit_s": f["_s"],
                                "fit_cpu_s": f["_cpu_s"], "kendall_tau": f["kendall_tau"], "rmse": f["rmse"]})
    p = state.get("predictor")
    say(f"1/6 predictor: {p['labels']} labels in {p['label_s'] / 60:.1f} min, held-out tau {p['kendall_tau']:.3f}")
    search = ["search", *ck, "--table", str(table_csv), "--predictor", str(pred), *search_more]

    # 2. budgets over the front
    if state.get("front") is None:
        s = qfa(*search, "--latency-ms", "1e9")
        state.put("front", {"pareto": s["pareto"], "search_s": s["_s"], "search_cpu_s": s["_cpu_s"]})
    front = [json.loads(ln) for ln in Path(state.get("front")["pareto"]).read_text().splitlines() if ln.strip()]
    lats = np.array([r["latency_ms"] for r in front])
    tight = math.ceil(lats.min() * 1.05 * 1000 + 1e-9) / 1000  # the search keeps a 5% margin
    if args.budgets:
        try:
            budgets = sorted({float(b) for b in args.budgets.split(",")})
        except ValueError:
            raise BenchError(f"--budgets {args.budgets!r}: comma-separated milliseconds", 2) from None
        if not budgets or not all(0 < b < 1e6 for b in budgets):
            raise BenchError(f"--budgets {args.budgets!r}: each budget must be a positive number of ms", 2)
    else:
        hi = float(lats.max())
        budgets = [tight] if tiny else sorted({tight, round(math.sqrt(tight * hi), 3), round(hi, 3)})
    say(f"2/6 budgets (ms): {', '.join(f'{b:g}' for b in budgets)}; the front spans {lats.min():.3f}-{lats.max():.3f} ms "
        "predicted")
    hand = None if args.skip_baselines else HandScaled(args, net.space, net.data, out, state, runs, test_n, tiny)
    smallest = None if hand is None else hand.fastest_f32(0)
    for b in budgets:
        if b < tight and (smallest is None or b < smallest):
            raise BenchError(f"budget {b:g} ms is below every approach's fastest model here: the front's fastest meets "
                             f"{tight:g} ms (with the search's 5% margin)" + ("" if smallest is None else
                             f", the smallest hand-scaled float32 network runs in {smallest:.3f} ms"), 2)

    # 3. the toolkit's picks, exported and measured
    rows: list[dict] = []

    def shipped_model(s: dict) -> dict:
        key = f"model:{s['pareto']}:{s['index']}"
        if state.get(key) is None:
            path = out / "models" / f"{s['hash']}.tflite"
            x = qfa("export", *ck, "--pareto", s["pareto"], "--index", str(s["index"]), "--out", str(path), "--verify",
                    "--threshold", "0", *(["--test-images", str(test_n)] if test_n else []), *calib)
            state.put(key, {"path": str(path), "bytes": x["bytes"], "top1": x["verify"]["tflite_top1"],
                            "agreement": x["verify"].get("deployed_agreement"), "export_s": x["_s"],
                            "export_cpu_s": x["_cpu_s"], "ms": time_all(path, runs, rt)})
        return state.get(key)

    for b in budgets:
        for approach, extra in [("toolkit", []), ("toolkit+verify", ["--verify", str(2 if tiny else args.verify)]),
                                *((name, ["--bits", bits]) for name, bits in BITS.items())]:
            key = f"search:{b}:{approach}"
            if state.get(key) is None:
                try:
                    s = qfa(*search, "--latency-ms", str(b), *extra, *calib)
                except BenchError as e:
                    if e.code != 2:
                        raise
                    s = {"error": str(e)}
                state.put(key, s)
            s = state.get(key)
            if "error" in s:
                say(f"3/6 {b:g} ms {approach}: {s['error']}")
                rows.append({"budget_ms": b, "approach": approach, "note": s["error"]})
                continue
            m = shipped_model(s)
            rows.append({"budget_ms": b, "approach": approach, "config": shipped_cfg, "measured_ms": m["ms"][shipped_cfg],
                         "top1_test": m["top1"], "bytes": m["bytes"],
                         "predicted_ms": s["predicted_latency_ms"], "predicted_top1": s["predicted_top1"],
                         "holdout_top1": s.get("holdout_top1"), "spec": s["spec_str"], "model": m["path"],
                         "fastest_config": min(m["ms"], key=m["ms"].get), "fastest_ms": min(m["ms"].values()),
                         "search_s": s["_s"], "verify_s": s.get("verify_s")})
            say(f"3/6 {b:g} ms {approach}: test top-1 {m['top1']:.2f}%, measured {rows[-1]['measured_ms']:.3f} ms "
                f"(predicted {s['predicted_latency_ms']:.3f})")

    # 4. regret: the regret-k best-predicted under each budget, labelled as --verify labels them
    regret = []
    for b in budgets:
        key = f"regret:{b}"
        if state.get(key) is None:
            k = 4 if tiny else args.regret_k
            try:
                s = qfa(*search, "--latency-ms", str(b), "--verify", str(k), *calib)
            except BenchError as e:
                if e.code != 2:
                    raise
                continue
            lab = [v["holdout_top1"] for v in s["verified"]]
            prd = [v["predicted_top1"] for v in s["verified"]]
            kv = 2 if tiny else args.verify
            state.put(key, {"k": len(lab), "regret_pick": max(lab) - lab[0], "regret_verify": max(lab) - max(lab[:kv]),
                            "tau": kendall(prd, lab) if len(lab) > 2 else float("nan"),
                            "tau_bound": noise_bound(np.array(lab), args.label_sd) if len(lab) > 2 else float("nan"),
                            "labels": lab, "predicted": prd, "label_s": s["verify_s"]})
        regret.append({"budget_ms": b, **state.get(key)})
        r = regret[-1]
        say(f"4/6 regret at {b:g} ms over {r['k']}: pick {r['regret_pick']:.2f} points, --verify "
            f"{2 if tiny else args.verify}: {r['regret_verify']:.2f}; tau {r['tau']:.2f} of a bound {r['tau_bound']:.2f}")

    # 5. hand-scaled baselines
    base_cost = [] if hand is None else hand.run(budgets, rows)

    # 6. design cost, table, plot
    cost = design_cost(args, run_dir, state, budgets, base_cost)
    import pandas as pd
    df = pd.DataFrame(rows)
    df.to_csv(out / "value.csv", index=False)
    pd.DataFrame(regret).drop(columns=["labels", "predicted"], errors="ignore").to_csv(out / "regret.csv", index=False)
    atomic_write(out / "summary.json", json.dumps({"host": host, "table": str(table_csv), "budgets": budgets,
                                                   "design_cost": cost, "regret": regret,
                                                   "wall_s": time.perf_counter() - t_start}, indent=1).encode())
    plot(df, front, budgets, out / "value.png", host)
    report(df, budgets, cost, regret)
    say(f"wrote {out / 'value.csv'}, {out / 'value.png'}, {out / 'regret.csv'}, {out / 'summary.json'} "
        f"({(time.perf_counter() - t_start) / 60:.1f} min this run)")
    return 0


def baselines_only(args) -> int:
    """The hand-scaled networks alone (the same cache as a full run with the same --budgets)."""
    from hw.table import LatencyTable, TableError
    if not args.budgets:
        raise BenchError("--baselines-only needs --budgets", 2)
    try:
        budgets = sorted({float(b) for b in args.budgets.split(",")})
        space = LatencyTable.load(Path(args.table or TABLE)).space
    except ValueError as e:
        raise BenchError(f"--budgets {args.budgets!r}: comma-separated milliseconds ({e})", 2) from None
    except TableError as e:
        raise BenchError(str(e), 2) from None
    out = Path(args.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    state = State(out / "state.json")
    if args.retime:
        retime(state, 50 if args.tiny else 200, None)
    HandScaled(args, space, None, out, state, 50 if args.tiny else 200, args.test_images,
               args.tiny).run(budgets, rows)
    return 0


class HandScaled:
    """Scale, train, convert and measure the hand-scaled network of each budget (bench/handscaled.py)."""

    def __init__(self, args, space, data_root, out: Path, state: State, runs: int, test_n, tiny: bool) -> None:
        import torch
        from bench import handscaled as hs
        from qfa.nn.data import make_datasets
        from qfa.nn.evaluate import calib_batches
        self.hs, self.args, self.out, self.state, self.runs, self.test_n, self.tiny = hs, args, out, state, runs, test_n, tiny
        self.family = hs.uniform_family(space)
        if tiny:
            self.family = self.family[::40]  # the smallest, a middle one and the largest
        self.data = make_datasets(data_root, space.resolutions[-1], space=space)
        self.calib = torch.cat(list(calib_batches(self.data["train"], 256)))

    def converted(self, spec, trained_net=None) -> dict:
        """Both .tflite of ``spec`` (untrained: for its latency alone), timed under every configuration."""
        import torch
        name = self.hs.config_name(spec) + ("" if trained_net is None else "-trained")
        key = f"convert:{name}"
        if self.state.get(key) is None:
            t, c = time.perf_counter(), time.process_time() + _cpu_children()
            torch.manual_seed(0)
            m = trained_net if trained_net is not None else self.hs.Subnet(spec).eval()
            blobs = self.hs.to_tflite(m, spec, self.calib)
            rec = {"convert_s": time.perf_counter() - t, "convert_cpu_s": time.process_time() + _cpu_children() - c}
            for fmt, blob in blobs.items():
                path = self.out / "models" / f"{name}-{fmt}.tflite"
                atomic_write(path, blob)
                rec[fmt] = {"path": str(path), "bytes": len(blob), "ms": time_all(path, self.runs)}
            self.state.put(key, rec)
        return self.state.get(key)

    def fastest_f32(self, i: int) -> float:
        return min(self.converted(self.family[i])["float32"]["ms"].values())

    def scale(self, b: float) -> int | None:
        """The engineer's rule: the largest network (MACs) whose float32 file fits ``b`` under its
        fastest configuration; binary search over the family in MACs order (latency grows with MACs)."""
        key = f"scale:{b}"
        if self.state.get(key) is None:
            if self.fastest_f32(0) > b:
                self.state.put(key, {"index": None})
            else:
                lo, hi = 0, len(self.family) - 1  # invariant: family[lo] fits
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if self.fastest_f32(mid) <= b else (lo, mid - 1)
                self.state.put(key, {"index": lo, "config": self.hs.config_name(self.family[lo])})
        return self.state.get(key)["index"]

    def run(self, budgets, rows: list) -> list[dict]:
        hs, state, out = self.hs, self.state, self.out
        costs = []
        for b in budgets:
            i = self.scale(b)
            if i is None:
                say(f"5/6 {b:g} ms hand-scaled: even the smallest network of the family takes {self.fastest_f32(0):.3f} ms")
                rows.append({"budget_ms": b, "approach": "hand-scaled",
                             "note": f"smallest float32 network {self.fastest_f32(0):.3f} ms"})
                continue
            spec = self.family[i]
            name = hs.config_name(spec)
            say(f"5/6 {b:g} ms hand-scaled: {name} (float32 {self.fastest_f32(i):.3f} ms untrained); training")
            cached = (out / "baselines" / name / "last.safetensors").exists()
            recipe = {"max_epochs": 1, "patience": 1} if self.tiny else \
                {k: v for k, v in (("max_epochs", self.args.max_epochs), ("patience", self.args.patience)) if v}
            trained, rec = hs.train(spec, self.data, out / "baselines" / name, recipe, max_steps=5 if self.tiny else None,
                                    progress=lambda e, j, n, loss: print(f"\r  epoch {e + 1} step {j}/{n} loss {loss:.3f}",
                                                                         end="", file=sys.stderr, flush=True))
            print(file=sys.stderr)
            say(f"5/6 {name}: {rec['epochs']} epochs ({rec['seconds'] / 60:.1f} min, best epoch {rec['best_epoch']}), "
                f"held-out {max(rec['holdout_top1']):.2f}%" + (" [cached]" if cached and rec["done"] else ""))
            conv = self.converted(spec, trained)
            for fmt in ("float32", "int8"):
                tkey = f"top1:{name}:{fmt}"
                if state.get(tkey) is None:
                    state.put(tkey, tflite_top1(Path(conv[fmt]["path"]).read_bytes(), self.data["test"], spec.resolution,
                                                self.test_n))
                ms = conv[fmt]["ms"]
                fast = min(ms, key=ms.get)
                for cfg in dict.fromkeys(("default", fast)):
                    rows.append({"budget_ms": b, "approach": f"hand-scaled-{fmt}", "config": cfg, "measured_ms": ms[cfg],
                                 "top1_test": state.get(tkey), "bytes": conv[fmt]["bytes"], "spec": name,
                                 "model": conv[fmt]["path"], "fastest_config": fast, "fastest_ms": ms[fast],
                                 "holdout_top1": max(rec["holdout_top1"]), "train_epochs": rec["epochs"],
                                 "train_s": rec["seconds"]})
                say(f"5/6 {name} {fmt}: test top-1 {state.get(tkey):.2f}%, {ms['default']:.3f} ms default, "
                    f"{ms[fast]:.3f} ms {fast}")
            costs.append({"budget_ms": b, "config": name, "train_cpu_s": rec["cpu_seconds"], "train_s": rec["seconds"],
                          "epochs": rec["epochs"], "convert_cpu_s": conv["convert_cpu_s"]})
        probes = [v["convert_cpu_s"] for k, v in state.d.items() if k.startswith("convert:") and not k.endswith("-trained")]
        for c in costs:  # the latency probes that scaled the networks, shared out over the budgets
            c["scale_cpu_s"] = sum(probes) / max(len(costs), 1)
        return costs


def design_cost(args, run_dir: Path, state: State, budgets, base_cost: list[dict]) -> dict:
    """CPU-minutes to a deployable model for N budgets: the toolkit (supernet once, labels,
    predictor, one search; then an answer from the saved set and an export per budget) against
    one hand-scaled training (+ scaling and conversion) per budget."""
    cores = 2
    train_s = args.train_minutes * 60 if args.train_minutes else train_seconds(run_dir)
    p, f = state.get("predictor"), state.get("front")
    exports = [v["export_cpu_s"] for k, v in state.d.items() if k.startswith("model:")]
    per_export = float(np.mean(exports)) if exports else 0.0  # CPU s, its verification on the test set included
    fixed_cpu = (train_s or 0) * cores + p["label_cpu_s"] + p["fit_cpu_s"] + f["search_cpu_s"]
    res = {"supernet_train_min": None if train_s is None else train_s / 60,
           "supernet_train_cpu_min": None if train_s is None else train_s * cores / 60,
           "labels_cpu_min": p["label_cpu_s"] / 60, "fit_cpu_min": p["fit_cpu_s"] / 60,
           "search_cpu_min": f["search_cpu_s"] / 60, "export_cpu_min": per_export / 60,
           "note": "supernet training: wall minutes of its steps (metrics.csv) x 2 busy cores; the rest: CPU time"}
    if base_cost:
        per = float(np.mean([c["train_cpu_s"] + c["scale_cpu_s"] + c["convert_cpu_s"] for c in base_cost]))
        res["handscaled_cpu_min_per_budget"] = per / 60
        for n in (1, 3, 10):
            res[f"toolkit_cpu_min_N{n}"] = (fixed_cpu + n * per_export) / 60
            res[f"handscaled_cpu_min_N{n}"] = n * per / 60
        marg = per - per_export
        res["break_even_N"] = math.ceil(fixed_cpu / marg) if marg > 0 else None
    return res


def plot(df, front: list[dict], budgets, path: Path, host: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    style = {"toolkit": ("*", "C0"), "toolkit+verify": ("P", "C1"), "uniform-W8A8": ("s", "C2"),
             "uniform-W4A4": ("D", "C3"), "uniform-W2A2": ("v", "C4"), "hand-scaled-float32": ("o", "C5"),
             "hand-scaled-int8": ("X", "C6")}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    fr = sorted(front, key=lambda r: r["latency_ms"])
    ax.plot([r["latency_ms"] for r in fr], [r["top1"] for r in fr], "-", color="0.6", lw=1,
            label="searched front (predicted latency, held-out top-1)")
    ok = df.dropna(subset=["measured_ms"]) if "measured_ms" in df else df.iloc[0:0]
    for name, (marker, color) in style.items():
        d = ok[ok["approach"] == name]
        if len(d):
            default = d["config"] == "default"
            if (~default).any():
                ax.scatter(d.loc[~default, "measured_ms"], d.loc[~default, "top1_test"], marker=marker, color=color,
                           label=name + ("" if name.startswith(("toolkit", "uniform")) else " (fastest config)"),
                           zorder=4 if name == "toolkit" else 3, s=90 if name == "toolkit" else 60)
            if default.any():
                ax.scatter(d.loc[default, "measured_ms"], d.loc[default, "top1_test"], marker=marker, s=60, zorder=3,
                           facecolors="none", edgecolors=color, label=name + " (default config)")
    for b in budgets:
        ax.axvline(b, color="r", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("measured latency (ms, this host; red: budgets)")
    ax.set_ylabel("test top-1 (%, from the .tflite)")
    ax.set_title(host, fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def report(df, budgets, cost: dict, regret: list[dict]) -> None:
    cols = ["budget_ms", "approach", "config", "measured_ms", "top1_test", "bytes", "spec"]
    print(df[[c for c in cols if c in df]].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for b in budgets if "measured_ms" in df else ():
        d = df[(df["budget_ms"] == b) & df["measured_ms"].notna()]
        a = d[d["approach"] == "toolkit"]
        others = d[~d["approach"].str.startswith("toolkit") & (d["measured_ms"] <= b)]
        if len(a) and len(others):
            best = others.loc[others["top1_test"].idxmax()]
            print(f"{b:g} ms: toolkit {a['top1_test'].iloc[0]:.2f}% at {a['measured_ms'].iloc[0]:.3f} ms vs best other "
                  f"within the budget {best['approach']} ({best.get('config')}) {best['top1_test']:.2f}% at "
                  f"{best['measured_ms']:.3f} ms: {a['top1_test'].iloc[0] - best['top1_test']:+.2f} points")
    print("design cost (CPU-min): " + json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in cost.items()}))
    for r in regret:
        print(f"regret {r['budget_ms']:g} ms: pick {r['regret_pick']:.2f}, verify {r['regret_verify']:.2f} points "
              f"(of {r['k']} labelled); tau {r['tau']:.2f} / bound {r['tau_bound']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
