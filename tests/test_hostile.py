"""Every bad input found by hand (issue 19), each a case: one line on stderr, the documented exit
status (2 bad input, 1 a failed device or output), nothing written where it should not be, the
table as it was. Generated inputs are in test_fuzz.py; kill -9 during profiling at the end."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from tests.hostile import ROOT, SPACE, call, check, digest, make_search_world, tree


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_search_world(tmp_path_factory.mktemp("hostile"))


def _table_copy(world, tmp_path):
    csv = tmp_path / "t.csv"
    shutil.copy(world.table, csv)
    shutil.copy(world.table.with_suffix(".json"), csv.with_suffix(".json"))
    return csv


def _cell(row: int, col: str, val: str):
    def edit(csv, meta):
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        df.loc[row, col] = val
        df.to_csv(csv, index=False)
    return edit


def _meta(**changes):
    """Edit metadata fields (None: drop the field)."""
    def edit(csv, meta):
        m = json.loads(meta.read_text())
        m.update(changes)
        meta.write_text(json.dumps({k: v for k, v in m.items() if v is not None}))
    return edit


def _raw(which: str, data: bytes):
    def edit(csv, meta):
        (csv if which == "csv" else meta).write_bytes(data)
    return edit


def _drop_column(col: str):
    def edit(csv, meta):
        pd.read_csv(csv).drop(columns=[col]).to_csv(csv, index=False)
    return edit


@pytest.mark.parametrize("edit, message", [
    (_cell(5, "min_us", "-2.85"), "row 7 field 'min_us': must be a finite latency > 0 us, got '-2.85'"),
    (_cell(5, "min_us", "0"), "row 7 field 'min_us'"),
    (_cell(5, "min_us", "inf"), "row 7 field 'min_us'"),
    (_cell(5, "min_us", "nan"), "row 7 field 'min_us'"),
    (_cell(5, "min_us", ""), "row 7 field 'min_us'"),
    (_cell(9, "key", "mb|s1mb"), "row 11 field 'key': not a table key: 'mb|s1mb'"),
    (_meta(target="nope"), "field 'target': unknown target 'nope'"),
    (_meta(calibration=[]), "field 'calibration': must be dict"),
    (_meta(resolutions="abc"), "field 'resolutions': must be list"),
    (_meta(resolutions=[]), "field 'resolutions': must be a non-empty list"),
    (_meta(resolutions=[24, 99]), "field 'resolutions' holds [99]"),
    (_meta(calibration={"coef": ["a", 1, 0, 0]}), "field 'calibration.coef': must be 4 numbers"),
    (_meta(calibration={"coef": [1, 0]}), "field 'calibration.coef': must be 4 numbers"),
    (_meta(overhead_us="x"), "field 'overhead_us': must be a number"),
    (_meta(overhead_us=-1), "field 'overhead_us': must be a latency >= 0 us"),
    (_meta(threads=0), "field 'threads': must be >= 1"),
    (_meta(stat="mean_us"), "field 'stat': unknown statistic 'mean_us'"),
    (_meta(space="nope", space_json=None), "unknown search space in metadata"),  # an older table: by name
    (_meta(space="nope", space_json={"name": "nope"}), "unknown search space in metadata"),
    (_raw("json", b"{"), "metadata: malformed JSON"),
    (_raw("json", b""), "metadata: malformed JSON"),
    (_raw("json", b"[1, 2]"), "metadata: must be a JSON object"),
    (_raw("json", b'{"space": "fmnist", "space_hash": NaN}'), "NaN is not a number"),
    (_raw("csv", bytes(range(256)) * 4), "not UTF-8 text"),
    (_raw("csv", b""), "header: not a latency table"),
    (_drop_column("key"), "header: not a latency table"),
    (_drop_column("min_us"), "header: not a latency table"),
])
def test_a_broken_table_is_one_line_naming_file_row_and_field(world, tmp_path, edit, message):
    csv = _table_copy(world, tmp_path)
    edit(csv, csv.with_suffix(".json"))
    kept = digest([csv, csv.with_suffix(".json")])
    for argv in (world.argv("--latency-ms", "0.5", table=csv),
                 ["profile", "--device", "t", "--out-dir", str(tmp_path), "--validate", "1"]):
        r = call(argv)
        check(r, {2}, argv)
        assert message in r.errors[0] and str(csv.with_suffix("")) in r.errors[0], r.errors[0]
    assert digest([csv, csv.with_suffix(".json")]) == kept


def test_a_table_cut_mid_row_loses_that_row_only(world, tmp_path):
    csv = _table_copy(world, tmp_path)
    raw = csv.read_bytes()
    csv.write_bytes(raw[: raw.rfind(b"\n", 0, len(raw) - 1) + 40])  # the last row, 40 bytes of it
    r = call(world.argv("--latency-ms", "0.5", table=csv))
    check(r, {0})
    assert "dropped a half-written last row" in r.err and json.loads(r.out)["predicted_latency_ms"] > 0


@pytest.mark.parametrize("flags, message", [
    (["--margin", "-1"], "argument --margin: must be >= 0"),
    (["--pop", "0"], "argument --pop: must be an integer >= 4"),
    (["--pop", "1"], "argument --pop"),
    (["--gens", "0"], "argument --gens: must be an integer >= 1"),
    (["--gens", "-1"], "argument --gens"),
    (["--latency-ms", "-1"], "argument --latency-ms: must be > 0"),
    (["--latency-ms", "nan"], "argument --latency-ms: expected a number"),
    (["--max-bytes", "0"], "argument --max-bytes: must be > 0"),
    (["--bits", "8.0"], "argument --bits: expected an integer"),
    (["--latency-ms", "0.0001"], "no subnet meets 0.0001 ms"),  # infeasible: bad input, exit 2
    (["--latency-ms", "0.0001", "--max-bytes", "10"], "and 10 file bytes"),
])
def test_search_flags(world, flags, message):
    argv = world.argv("--latency-ms", "0.5") + flags
    r = call(argv)
    check(r, {2}, argv)
    assert message in r.errors[0], r.errors[0]


@pytest.mark.parametrize("flags, message", [
    (["--threads", "0"], "argument --threads"), (["--runs", "0"], "argument --runs"),
    (["--validate", "-1"], "argument --validate"), (["--validate", "0"], "argument --validate"),
    (["--estimate", "-1"], "argument --estimate"), (["--device", "d" * 300], "a table name is"),
    (["--device", "a;touch x"], "a table name is"), (["--device", "../elsewhere/t"], "a table name is"),
    (["--target", "adb:emulator-5554", "--runtime", "benchmark_model:/missing"], "no such file"),
    (["--target", "adb:emulator-5554"], "adb needs --runtime benchmark_model:PATH"),
    (["--out-dir", "9" * 400], "File name too long"),
])
def test_profile_flags(tmp_path, flags, message):
    argv = ["profile", "--device", "t", "--out-dir", str(tmp_path / "tables"), "--validate", "1", *flags]
    r = call(argv)
    check(r, {2}, argv)
    assert message in r.errors[0] and not (tmp_path / "tables").exists(), r.errors[0]
    (tmp_path / "file").write_text("")
    r = call(["profile", "--device", "t", "--out-dir", str(tmp_path / "file"), "--validate", "1"])
    check(r, {2})
    assert "exists and is not a folder" in r.errors[0]


def test_specs_and_outputs(world, tmp_path):
    os.chdir(tmp_path)
    before = tree(tmp_path)
    cases = [
        (["cost", "--spec", "a" * 300], "cannot read 'aaaa"),
        (["cost", "--spec", "x/" * 200], "spec file not found"),
        (["space", "sample", "--n", "-5"], "argument --n: must be an integer in 1..1000000, got -5"),
        (["cost", "--spec", "r28\x1b[31m"], "cannot read 'r28\\x1b[31m'"),  # escaped, not a colour
        (["export", "--checkpoint", str(world.ckpt), "--spec", "x", "--out", str(tmp_path)], "must end in .tflite"),
        (["export", "--checkpoint", str(world.ckpt), "--spec", "x", "--out", "/nonexistent/dir/x.tflite"],
         "folder /nonexistent/dir/ does not exist"),
        (["export", "--checkpoint", str(world.ckpt), "--spec", "x", "--out", "m.tflite", "--onnx", "/proc/m.onnx"],
         "--onnx: cannot write /proc/m.onnx"),
    ]
    (tmp_path / "d.tflite").mkdir()
    cases.append((["export", "--checkpoint", str(world.ckpt), "--spec", "x", "--out", "d.tflite"], "is a folder"))
    (tmp_path / "bin.json").write_bytes(bytes(range(128, 256)))
    cases.append((["cost", "--spec", "bin.json"], "spec file bin.json is not UTF-8 text"))
    for argv, message in cases:
        r = call(argv)
        check(r, {2}, argv)
        assert message in r.errors[0], (argv, r.errors[0])
    assert tree(tmp_path) == before | {"d.tflite", "bin.json"} and not os.path.exists("/nonexistent")


def test_stdout_on_a_full_device_is_one_line_and_exit_1():
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "qfa", "space", "sample", "--n", "2000"], stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 1 and r.stderr.strip() == "qfa space: error: cannot write: No space left on device", r.stderr


def test_checkpoint_messages_are_whole_and_name_both_spaces(tmp_path):
    from qfa.nn.checkpoint import save_checkpoint
    from qfa.nn.supernet import Supernet

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))
    torch.save({"format": "qfa-ckpt/1", "x": Evil()}, tmp_path / "evil.pt")
    r = call(["export", "--checkpoint", str(tmp_path / "evil.pt"), "--spec", "x", "--out", str(tmp_path / "m.tflite")])
    check(r, {2})
    assert r.errors[0].endswith("it holds pickled Python objects, which qfa never loads: only tensors and plain data)")
    assert not (tmp_path / "PWNED").exists()
    # fmnist weights under the paper space's name: both spaces named
    save_checkpoint(tmp_path / "wrong.pt", {"space_json": json.dumps(__import__("qfa.core.space", fromlist=["x"])
                                                                     .get_space("paper").to_json()),
                                            "model": Supernet(SPACE).state_dict(), "act_quant": "bq"})
    r = call(["export", "--checkpoint", str(tmp_path / "wrong.pt"), "--spec", "x", "--out", str(tmp_path / "m.tflite")])
    check(r, {2})
    assert "search space it names, 'paper'" in r.errors[0] and "they are the weights of space 'fmnist'" in r.errors[0]
    # garbage and a truncated checkpoint: said in a few words, not torch's paragraphs
    (tmp_path / "junk.pt").write_bytes(b"x\n")
    raw = (tmp_path / "wrong.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    for name in ("junk.pt", "cut.pt"):
        r = call(["eval", "--checkpoint", str(tmp_path / name), "--sample", "max"])
        check(r, {2})
        assert r.errors[0].endswith("not a readable qfa checkpoint (not a torch file, or truncated)"), r.errors[0]


# ---- kill -9 while profiling ---------------------------------------------------------------
ROWS = 2 * 441  # of profile_cmd's table: 441 entries, 2 sweeps


def profile_cmd(out_dir, cache) -> tuple[list[str], dict]:
    """The r24 table of the fmnist space (441 entries, 2 sweeps), short timings, no calibration subnets."""
    return ([sys.executable, str(ROOT / "hw" / "profile.py"), "--device", "t", "--out-dir", str(out_dir),
             "--resolution", "24", "--runs", "5", "--warmup", "1", "--calib-subnets", "0", "--sweeps", "2",
             "--delegate", "xnnpack", "--threads", "1", "--json"],
            {**os.environ, "QFA_CACHE": str(cache)})


def kill_and_resume(out_dir, cache, rng: np.random.Generator, kills: int) -> list[str]:
    """Kill -9 the profiler at ``kills`` random points (some right at a row write: the file cut
    mid-row, as a kill inside the write would leave it), then resume to the end. Returns notes."""
    from hw.table import read_rows
    cmd, env = profile_cmd(out_dir, cache)
    csv, notes = out_dir / "t.csv", []
    for k in range(kills):
        have = csv.read_bytes().count(b"\n") if csv.exists() else 0
        # kill at a random row still to come, spread over what is left, or now and then during start-up
        left = max(1, ROWS + 1 - have)
        at = have + 1 + int(rng.integers(0, max(1, 2 * left // (kills - k + 1)))) if rng.random() < 0.85 else None
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        t0 = time.time()
        while p.poll() is None and time.time() - t0 < 120:
            if at is None and time.time() - t0 > rng.uniform(0.2, 2.0):
                break
            if at is not None and csv.exists() and csv.read_bytes().count(b"\n") >= at:
                break
            time.sleep(0.005)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:  # it finished first
            pass
        p.wait()
        if csv.exists() and rng.random() < 0.4:  # the kill fell inside a row write
            raw = csv.read_bytes()
            if raw.count(b"\n") > 2:
                csv.write_bytes(raw[: -int(rng.integers(2, 60))])
        rows = read_rows(csv)[0] if csv.exists() else {}
        notes.append(f"killed {'at row ' + str(at) if at else 'during start-up'} after {time.time() - t0:.1f}s: "
                     f"{len(rows)} whole rows")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stderr[-2000:]
    return notes


def test_kill_9_while_profiling_loses_and_corrupts_nothing(tmp_path, block_cache):
    from hw.table import LatencyTable, read_rows
    cmd, env = profile_cmd(tmp_path / "whole", block_cache)
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=500).returncode == 0
    kill_and_resume(tmp_path / "killed", block_cache, np.random.default_rng(0), kills=4)
    whole, killed = read_rows(tmp_path / "whole" / "t.csv"), read_rows(tmp_path / "killed" / "t.csv")
    assert whole[1] == killed[1] == b"" and set(whole[0]) == set(killed[0]) and len(killed[0]) == 441
    raw = (tmp_path / "killed" / "t.csv").read_bytes()
    assert raw.count(b"\n") == ROWS + 1 and raw.count(b"key,") == 1 and LatencyTable.load(tmp_path / "killed" / "t.csv").rows.keys() == whole[0].keys()


@pytest.mark.parametrize("override, message", [
    ("batch_size=abc", "batch_size must be int, got 'abc'"), ("batch_size=1.5", "batch_size must be int"),
    ("seed=true", "seed must be int, got True"), ("stage0.epochs=x", "stages[1].epochs must be float"),
    ("holdout_fraction=nan", "holdout_fraction must be float, got nan"), ("stages=3", "stages must be a list"),
    ("threads=0", "threads must be auto or an integer >= 1"), ("nokey=1", "unknown config key 'nokey'"),
])
def test_training_config_values_are_checked_before_anything_is_written(tmp_path, override, message):
    r = call(["train", "fmnist", "--out", str(tmp_path / "run"), "--set", override])
    check(r, {2})
    assert message in r.errors[0] and not (tmp_path / "run").exists(), r.errors[0]
