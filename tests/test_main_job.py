"""The main job end to end on a tiny configuration (real training steps, real data, the shipped
measured table, real NSGA-II, a real .tflite run by LiteRT), plus its error paths."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _qfa(*args, timeout=540):
    return subprocess.run([sys.executable, "-m", "qfa", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_main_job_tiny_end_to_end_and_resume(tmp_path):
    run = tmp_path / "run"
    r = _qfa("run", "--tiny", "--run", str(run), "--json")
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
    # agreement above the tiny job's threshold, a feasible spec, the Pareto outputs
    assert s["agreement"] >= 50.0
    assert s["predicted_latency_ms"] <= s["budget_ms"]
    assert Path(s["pareto_png"]).stat().st_size > 1000 and Path(s["pareto_csv"]).exists()
    assert s["measured_latency_ms"] > 0
    # rerun resumes: no training, no labelling, the saved Pareto set answers
    r2 = _qfa("run", "--tiny", "--run", str(run), "--json")
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "answering from the saved Pareto set" in r2.stderr and "labelling" not in r2.stderr
    assert json.loads(r2.stdout)["hash"] == s["hash"]
    # an infeasible budget: one line naming the fastest latency on the table
    r3 = _qfa("run", "--tiny", "--run", str(run), "--latency-ms", "0.0001")
    assert r3.returncode == 1
    err = [ln for ln in r3.stderr.splitlines() if not ln.startswith("[qfa run]") and "INFO" not in ln and ln.strip()]
    assert len(err) == 1 and "fastest achievable on this table is" in err[0], r3.stderr[-1000:]


def test_main_job_bad_input_is_one_line(tmp_path):
    r = _qfa("run", "--checkpoint", str(tmp_path / "nope.pt"), "--run", str(tmp_path / "r"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "checkpoint not found" in r.stderr
    (tmp_path / "bad.pt").write_bytes(b"junk")
    r = _qfa("run", "--checkpoint", str(tmp_path / "bad.pt"), "--run", str(tmp_path / "r"))
    err = [ln for ln in r.stderr.splitlines() if not ln.startswith("[qfa run]")]
    assert r.returncode == 2 and len(err) == 1
    r = _qfa("search", "--checkpoint", str(tmp_path / "bad.pt"), "--table", str(tmp_path / "none.csv"), "--latency-ms", "1")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
