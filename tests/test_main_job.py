"""The main job end to end on a tiny configuration (real training steps, real data, the shipped
measured table, real NSGA-II, a real .tflite run by LiteRT), plus its error paths."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOAT, INT8 = "tflite-f32-hswish-decomposed", "tflite-int8-hswish-decomposed"  # the default target, and int8 alone


def _qfa(*args, timeout=540):
    return subprocess.run([sys.executable, "-m", "qfa", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_main_job_tiny_end_to_end_and_resume(tmp_path):
    import pandas as pd
    from latency_tables import SHIPPED
    from qfa.app.main_job import DEFAULT_TABLE
    run = tmp_path / "run"
    # --allow-over-budget: whether this host meets the budget depends on its speed today (CI's
    # machines differ); the summary must say which, and the over-budget path is tested below
    r = _qfa("run", "--tiny", "--run", str(run), "--json", "--allow-over-budget")
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    # a valid .tflite that the interpreter runs, with its sidecar
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=s["model"])
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    it.invoke()
    side = json.loads(Path(s["sidecar"]).read_text())
    assert side["hash"] == s["hash"] and len(side["labels"]) == 10
    # the file computes what the labels scored (the subnet as deployed, under the configuration it
    # ships in) on nearly every image, the fake-quant model less exactly; a feasible spec, the Pareto outputs
    assert s["deployed_agreement"] >= 99.0 and s["agreement"] >= 50.0
    labels = run / "predictor_data.csv"
    assert set(pd.read_csv(labels)["scored"]) == {json.loads(DEFAULT_TABLE.with_suffix(".json").read_text())["target"]}
    # the default target deploys FP convs as float ops: the short schedule's last stage trains FP too
    # (what the search may deploy is trained last), and the summary says how the subnet deploys
    from qfa.nn.supernet import Supernet
    assert "trains FP too" in r.stderr and 32 in Supernet.from_checkpoint(run / "last.pt").final_bits
    assert json.loads(Path(s["sidecar"]).read_text())["target"] == FLOAT and "formats" in s
    assert s["predicted_latency_ms"] <= s["budget_ms"]
    assert Path(s["pareto_png"]).stat().st_size > 1000 and Path(s["pareto_csv"]).exists()
    assert s["measured_latency_ms"] > 0 and s["within_budget"] == (s["measured_latency_ms"] <= s["budget_ms"])
    # every configuration shipped for this CPU searched (or the one profiled here), the most accurate
    # under the budget shipped and measured under its own configuration
    from qfa.app.main_job import shipped_for_this_host
    here = shipped_for_this_host(json.loads(DEFAULT_TABLE.with_suffix(".json").read_text()))
    configs = s["configurations"]
    assert [c["table"] for c in configs] == ([str(p) for p in here] or [s["table"]])
    # a table profiled here is named for the target too: a later run for another target gets its own
    assert here or all(Path(c["table"]).stem.endswith(FLOAT.removeprefix("tflite")) for c in configs)
    [chosen] = [c for c in configs if c["chosen"]]
    assert chosen["table"] == s["table"] and chosen["hash"] == s["hash"] and chosen["runtime"] == {
        k: v for k, v in s["runtime"].items() if k != "interpreter"}
    assert chosen["top1"] == max(c["top1"] for c in configs if c["top1"] is not None)
    # predicted at this host's speed now: the table's prediction times the speed check's factor;
    # the saved Pareto set keeps the table's own (a rerun does not scale it twice)
    from hw.table import LatencyTable
    table = LatencyTable.load(s["table"])
    table_ms = table.predict(table.space.parse(s["spec"]))
    assert 0.5 <= s["speed_factor"] <= 2 and s["predicted_latency_ms"] == pytest.approx(table_ms * s["speed_factor"])
    saved = [json.loads(ln) for ln in Path(s["pareto_csv"]).with_suffix(".jsonl").read_text().splitlines()]
    assert [r["latency_ms"] for r in saved if r["hash"] == s["hash"]] == [pytest.approx(table_ms)]
    # rerun resumes: no training, no labelling, the saved Pareto set answers
    r2 = _qfa("run", "--tiny", "--run", str(run), "--json", "--allow-over-budget")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "answering from the saved Pareto set" in r2.stderr and "labelling" not in r2.stderr
    assert json.loads(r2.stdout)["hash"] == s["hash"]
    # --max-bytes is the size of the file qfa export writes: asked of the job's own Pareto set (its
    # table and bits), the answer fits, its export is that size to the byte, and one byte less than
    # the smallest file under the budget is refused. A tiny run leaves offsets untrained: the sizer
    # reads them from the checkpoint
    size = Path(s["model"]).stat().st_size
    by_size = ("search", "--checkpoint", str(run), "--table", s["table"], "--latency-ms", str(s["budget_ms"]),
               "--bits", "8", "--json", "--max-bytes")  # the job's own Pareto set (--tiny searches W8A8)
    rb = _qfa(*by_size, str(size))
    assert rb.returncode == 0, rb.stderr[-3000:]
    b = json.loads(rb.stdout)
    assert b["file_bytes"] <= size and b["file_bytes"] > b["bytes"]
    xb = tmp_path / "sized.tflite"
    re_ = _qfa("export", "--checkpoint", str(run), "--pareto", b["pareto"], "--index", str(b["index"]), "--out", str(xb),
               "--calib-images", "64", "--json", "--verify", "--test-images", "100")
    assert re_.returncode == 0, re_.stderr[-3000:]
    xr = json.loads(re_.stdout)
    assert xb.stat().st_size == b["file_bytes"] and 0 < xr["bytes_gzip"] < b["file_bytes"]
    # verified under the configuration its table measured (the one model.json tells the app to build)
    assert xr["verify"]["delegate"] == s["runtime"]["delegate"] and xr["verify"]["deployed_agreement"] >= 99.0
    rows = [json.loads(ln) for ln in Path(b["pareto"]).read_text().splitlines()]
    assert any(r.get("file_bytes") == b["file_bytes"] for r in rows)  # kept for later queries
    r_small = _qfa(*by_size, "1000")
    assert r_small.returncode == 2 and "1,000 file bytes" in r_small.stderr and "the smallest is" in r_small.stderr
    # --verify K: the K best-predicted under the budget labelled on the held-out split, the best
    # label answers; asked again, the labels come from the saved set
    search = ("search", "--checkpoint", str(run), "--table", s["table"], "--latency-ms", str(s["budget_ms"]),
              "--bits", "8", "--verify", "3", "--calib-images", "64", "--json")
    rv = _qfa(*search)
    assert rv.returncode == 0, rv.stderr[-3000:]
    v = json.loads(rv.stdout)
    assert "search: generation" not in rv.stderr  # the main job's saved set
    assert 1 <= len(v["verified"]) <= 3 and not any(x["cached"] for x in v["verified"])
    assert v["holdout_top1"] == max(x["holdout_top1"] for x in v["verified"]) and v["verify_calib_images"] == 64
    assert v["hash"] in {x["hash"] for x in v["verified"] if x["holdout_top1"] == v["holdout_top1"]}
    rv2 = _qfa(*search)
    v2 = json.loads(rv2.stdout)
    assert all(x["cached"] for x in v2["verified"]) and v2["hash"] == v["hash"]
    # qfa run --verify ships the best-labelled of its K (labelled as its export calibrates)
    r_v = _qfa("run", "--tiny", "--run", str(run), "--json", "--allow-over-budget", "--verify", "2")
    assert r_v.returncode == 0, r_v.stderr[-3000:]
    sv = json.loads(r_v.stdout)
    assert 1 <= len(sv["verified"]) <= 2 and sv["holdout_top1"] == max(x["holdout_top1"] for x in sv["verified"])
    assert sv["hash"] in {x["hash"] for x in sv["verified"]}
    # an infeasible budget is bad input: one line naming the fastest latency on the table, exit 2
    r3 = _qfa("run", "--tiny", "--run", str(run), "--latency-ms", "0.0001")
    assert r3.returncode == 2
    err = [ln for ln in r3.stderr.splitlines() if not ln.startswith("[qfa run]") and "INFO" not in ln and ln.strip()]
    assert len(err) == 1 and "fastest achievable on this table is" in err[0], r3.stderr[-1000:]
    # a table that promises 10x the speed this host has, taken as it is (--speed-check 0; else it
    # would be out of the speed check's band and this host profiled): the shipped file is measured
    # over the budget, which is one line and exit status 1 unless --allow-over-budget (made from the
    # first table the job searched, which describes this host: shipped for its CPU, or profiled)
    fast, used = tmp_path / "fast.csv", Path(configs[0]["table"])  # the one the labels were scored for
    df = pd.read_csv(used)
    df[["min_us", "median_us"]] /= 10
    df.to_csv(fast, index=False)
    meta = json.loads(used.with_suffix(".json").read_text())
    meta["overhead_us"] /= 10
    meta.pop("calibration", None)  # the plain sum, a tenth of what this host measured
    fast.with_suffix(".json").write_text(json.dumps(meta))
    r4 = _qfa("run", "--tiny", "--run", str(run), "--table", str(fast), "--speed-check", "0")
    err = [ln for ln in r4.stderr.splitlines() if not ln.startswith("[qfa run]") and "INFO" not in ln and ln.strip()]
    assert r4.returncode == 1 and len(err) == 1 and "over the" in err[0] and "budget" in err[0], r4.stderr[-1000:]
    r5 = _qfa("run", "--tiny", "--run", str(run), "--table", str(fast), "--allow-over-budget", "--json", "--speed-check", "0")
    assert r5.returncode == 0, r5.stderr[-2000:]
    s5 = json.loads(r5.stdout)
    assert not s5["within_budget"] and s5["measured_latency_ms"] > s5["budget_ms"] >= s5["predicted_latency_ms"]
    # tables of two targets are refused before anything is profiled: the labels score one
    i8 = next(SHIPPED.glob("*-1t-hswish-decomposed.csv"))
    r7 = _qfa("run", "--tiny", "--run", str(run), "--table", s["table"], "--table", str(i8))
    err = [ln for ln in r7.stderr.splitlines() if not ln.startswith("[qfa run]") and "INFO" not in ln and ln.strip()]
    assert r7.returncode == 2 and len(err) == 1 and "different targets" in err[0], r7.stderr[-1000:]
    assert "profiling" not in r7.stderr
    r8 = _qfa("run", "--tiny", "--run", str(run), "--table", s["table"], "--deploy", INT8)
    err = [ln for ln in r8.stderr.splitlines() if not ln.startswith("[qfa run]") and "INFO" not in ln and ln.strip()]
    assert r8.returncode == 2 and len(err) == 1 and f"--deploy {INT8}" in err[0], r8.stderr[-1000:]
    # labels scored another way are refused, not mixed into the predictor: one line, exit 2
    df = pd.read_csv(labels)
    df["scored"] = "fake-quant"
    df.to_csv(labels, index=False)
    r6 = _qfa("run", "--tiny", "--run", str(run))
    err = [ln for ln in r6.stderr.splitlines() if not ln.startswith("[qfa run]") and "INFO" not in ln and ln.strip()]
    assert r6.returncode == 2 and len(err) == 1 and "scored as fake-quant" in err[0], r6.stderr[-1000:]


def test_main_job_bad_input_is_one_line(tmp_path):
    r = _qfa("run", "--checkpoint", str(tmp_path / "nope.pt"), "--run", str(tmp_path / "r"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "checkpoint not found" in r.stderr
    (tmp_path / "bad.pt").write_bytes(b"junk")
    r = _qfa("run", "--checkpoint", str(tmp_path / "bad.pt"), "--run", str(tmp_path / "r"))
    err = [ln for ln in r.stderr.splitlines() if not ln.startswith("[qfa run]")]
    assert r.returncode == 2 and len(err) == 1
    r = _qfa("search", "--checkpoint", str(tmp_path / "bad.pt"), "--table", str(tmp_path / "none.csv"), "--latency-ms", "1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_the_main_job_takes_every_configuration_shipped_for_this_cpu(tmp_path):
    """Where the user names no table, the main job searches every shipped table measured on this
    CPU for the default's target and space, one per runtime configuration, the default's own
    configuration first; a table of another CPU, target or space, or one measured over a transport
    (another device), is not one of them."""
    import shutil
    from hw.transport import Local, RunConfig
    from qfa.app.main_job import DEFAULT_TABLE, shipped_for_this_host
    like = json.loads(DEFAULT_TABLE.with_suffix(".json").read_text())
    here = {**like, "device_facts": Local("local", RunConfig()).facts()}
    other = {**like, "device_facts": {**here["device_facts"], "cpu_id": "family 0 model 0 stepping 0"}}
    for name, meta in [("a-other-cpu", other), ("b-builtin", {**here, "delegate": "builtin"}),
                       ("c-over-ssh", {**here, "transport": "ssh"}), ("d-here", here), ("e-2t", {**here, "threads": 2}),
                       ("f-other-target", {**here, "target": "tflite-f32"}), ("g-other-space", {**here, "space_hash": "0"})]:
        shutil.copy(DEFAULT_TABLE, tmp_path / f"{name}.csv")
        (tmp_path / f"{name}.json").write_text(json.dumps(meta))
    assert shipped_for_this_host(like, tmp_path) == [tmp_path / f"{n}.csv" for n in ("d-here", "b-builtin", "e-2t")]
    for n in ("b-builtin", "d-here", "e-2t"):
        (tmp_path / f"{n}.json").write_text(json.dumps(other))
    assert shipped_for_this_host(like, tmp_path) == []


def _int8_tables_here():
    from qfa.app.main_job import DEFAULT_TABLE, shipped_for_this_host
    return shipped_for_this_host({**json.loads(DEFAULT_TABLE.with_suffix(".json").read_text()), "target": INT8})


@pytest.mark.slow
@pytest.mark.skipif(not _int8_tables_here(), reason="no int8 table is shipped for this CPU: the job would profile "
                    "one under each delegate (~8 min on 2 cores)")
def test_an_int8_target_trains_no_fp_last_and_searches_every_int8_table_of_this_cpu(tmp_path):
    """qfa run --deploy INT8: nothing deploys FP convs in float, so the short schedule's last
    stage trains the low bits alone, the labels are scored as the int8 file computes, and every
    int8 table shipped for this CPU is searched; the file ships under the chosen one's configuration."""
    import pandas as pd
    from qfa.nn.supernet import Supernet
    run = tmp_path / "run"
    r = _qfa("run", "--tiny", "--run", str(run), "--json", "--allow-over-budget", "--deploy", INT8)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    assert "trains FP too" not in r.stderr and 32 not in Supernet.from_checkpoint(run / "last.pt").final_bits
    assert set(pd.read_csv(run / "predictor_data.csv")["scored"]) <= {INT8, f"{INT8}@builtin"}
    assert [c["table"] for c in s["configurations"]] == [str(p) for p in _int8_tables_here()]
    assert json.loads(Path(s["sidecar"]).read_text())["target"] == INT8 and "formats" not in s
