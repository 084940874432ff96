"""Search across deployments vs a single one: at several budgets, the subnet `qfa search` picks
from each table alone and from all tables together, each exported as it would ship and timed
end to end here under the runtime configuration of the table it came from.

    python bench/deployments.py --checkpoint RUN \\
        --table latency_tables/amd-epyc-zen4-1t-hswish-decomposed.csv \\
        --table latency_tables/amd-epyc-zen4-1t-builtin-hswish-decomposed.csv [--budgets 0.15,0.3,0.6]
        [--predictor P1 --predictor P2]

Each table is one deployment (lowering + delegate + threads). ``--predictor``, once per table,
gives each table the predictor whose labels were scored for its target (e.g. an int8 table and a
float target's table, whose labels include FP subnets); all tables together are searched (one
NSGA-II run, each subnet in its fastest configuration) when they share a predictor (tables of
two targets: that row is qfa search's refusal). Prints one row per (budget,
tables): the chosen deployment, predicted and measured latency, predicted held-out top-1 and
the .tflite's test top-1 (all 10,000 images), and writes deployments.csv.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _qfa(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "qfa", *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1]}
    return json.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--table", action="append", required=True)
    ap.add_argument("--budgets", default="0.15,0.3,0.6")
    ap.add_argument("--predictor", action="append", help="the predictor of each --table, in order (default: RUN's)")
    ap.add_argument("--csv", default="deployments.csv")
    args = ap.parse_args()
    preds = args.predictor or [None] * len(args.table)
    if len(preds) != len(args.table):
        ap.error("give --predictor once per --table, or not at all")
    from hw.runner import time_model
    from hw.table import LatencyTable
    from hw.transport import Local, RunConfig
    f = Local("local", RunConfig()).facts()
    print(f"{f.get('cpu')} ({f.get('cpu_id')}, {f.get('cores')} cores), {f.get('runtime')}")
    choices = [([t], p) for t, p in zip(args.table, preds)]
    if len(args.table) > 1 and len(set(preds)) == 1:
        choices.append((args.table, preds[0]))
    rows, shipped = [], {}
    print(f"{'budget':>7s} {'searched tables':40s} {'chosen deployment':34s} {'pred ms':>8s} {'meas ms':>8s} "
          f"{'pred top1':>9s} {'test top1':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for budget in (float(b) for b in args.budgets.split(",")):
            for tables, pred in choices:
                flags = [a for t in tables for a in ("--table", t)] + (["--predictor", pred] if pred else [])
                s = _qfa("search", "--checkpoint", args.checkpoint, *flags, "--latency-ms", str(budget))
                name = " + ".join(Path(t).stem for t in tables)
                if "error" in s:
                    print(f"{budget:7.3f} {name:40s} {s['error'][:90]}")
                    rows.append({"budget_ms": budget, "tables": name, "error": s["error"]})
                    continue
                key = (s["pareto"], s["index"])
                if key not in shipped:  # the same pick from another search is exported once
                    out = Path(tmp) / f"m{len(shipped)}.tflite"
                    x = _qfa("export", "--checkpoint", args.checkpoint, "--pareto", s["pareto"], "--index",
                             str(s["index"]), "--out", str(out), "--verify", "--threshold", "0")
                    rt = s["runtime"]
                    x["measured_ms"] = time_model(str(out), rt["threads"], delegate=rt["delegate"])[LatencyTable.load(s["table"]).stat] / 1000
                    shipped[key] = x
                x = shipped[key]
                dep = f"{s['target'].removeprefix('tflite-')} {s['runtime']['delegate']} {s['runtime']['threads']}t"
                print(f"{budget:7.3f} {name:40s} {dep:34s} {s['predicted_latency_ms']:8.3f} {x['measured_ms']:8.3f} "
                      f"{s['predicted_top1']:9.2f} {x['verify']['tflite_top1']:9.2f}", flush=True)
                rows.append({"budget_ms": budget, "tables": name, "chosen_table": s["table"],
                             "delegate": s["runtime"]["delegate"], "threads": s["runtime"]["threads"],
                             "target": s["target"], "spec": s["spec_str"], "predicted_ms": s["predicted_latency_ms"],
                             "measured_ms": x["measured_ms"], "within_budget": x["measured_ms"] <= budget,
                             "predicted_top1_holdout": s["predicted_top1"], "tflite_top1_test": x["verify"]["tflite_top1"],
                             "bytes": x["bytes"], "float_convs": s.get("formats", {}).get("float_convs", 0)})
    import pandas as pd
    pd.DataFrame(rows).to_csv(args.csv, index=False)
    print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
