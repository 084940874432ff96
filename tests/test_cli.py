import json
import subprocess
import sys

import pytest

from qfa.core.space import get_space


def qfa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qfa", *args], capture_output=True, text=True, timeout=120)


def test_space_summary_json_reports_exact_count():
    r = qfa("space", "--space", "paper", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert int(info["count_blocks_exact"]) == (6561 ** 2 + 6561 ** 3 + 6561 ** 4) ** 5
    assert info["hash"] == get_space("paper").hash


def test_space_sample_prints_valid_json_lines():
    r = qfa("space", "sample", "--space", "fmnist", "--n", "5", "--seed", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 5
    space = get_space("fmnist")
    specs = [space.parse(l) for l in lines]
    assert len({s.hash for s in specs}) == 5
    assert qfa("space", "sample", "--space", "fmnist", "--n", "5", "--seed", "3").stdout == r.stdout


def test_cost_accepts_file_json_and_compact(tmp_path):
    spec = get_space("fmnist").min_spec()
    f = tmp_path / "s.json"
    f.write_text(spec.dumps())
    outs = [json.loads(qfa("cost", "--spec", arg, "--json").stdout) for arg in (str(f), spec.dumps(), str(spec))]
    assert outs[0] == outs[1] == outs[2] and outs[0]["hash"] == spec.hash


@pytest.mark.parametrize("spec, needle", [
    ("{\"resolution\": ", "malformed spec JSON"),
    (get_space("paper").min_spec().dumps(), "belongs to space 'paper'"),
    (get_space("fmnist").min_spec().dumps().replace("[2,2]", "[5,2]", 1), "not in allowed bits"),
    ("r28 b0=w4a4-w4a4", "lacks 'head'"),
    ("/nonexistent/spec.json", "spec file not found"),
])
def test_bad_input_is_one_clear_line(spec, needle):
    r = qfa("cost", "--space", "fmnist", "--spec", spec)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_help_everywhere():
    for args in ([], ["space"], ["cost"], ["run"]):
        r = qfa(*args, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout
