"""Property-based fuzzing of the CLI entry points, in-process (hypothesis): malformed specs,
tables (CSV and JSON), budgets and search flags, device names, output paths. Every call keeps
the promise of :func:`tests.hostile.check` (exit status per the convention, never 3, no
traceback, one error line, no raw control characters), writes nothing outside its output
folder and leaves the table files as they were. ``bench/fuzz.py --n 10000`` runs the same
properties longer and prints the counts."""
from __future__ import annotations

import os
import shutil
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.hostile import (NASTY, SPACE, bad_spec, bad_table_edit, call, check, digest, make_search_world,
                           nasty_text, tree)

EXAMPLES = int(os.environ.get("QFA_FUZZ_EXAMPLES", "60"))
COUNTS: Counter = Counter()  # (property, exit status) -> calls; bench/fuzz.py prints it
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_search_world(tmp_path_factory.mktemp("fuzz"))
    r = call(w.argv("--latency-ms", "0.5"))  # the saved Pareto set the budget properties answer from
    check(r, {0})
    return w


def _in(world, name: str, argv_of, codes: set[int], must_fail: bool = False):
    """Run one generated call in ``world`` and check the promise and the files around it."""
    before = tree(world.root)
    tables = digest([world.table, world.table.with_suffix(".json")])
    argv = argv_of()
    r = call(argv)
    COUNTS[name, r.code] += 1
    check(r, {2} if must_fail else codes, argv)
    new = tree(world.root) - before
    assert all(p.startswith("run/pareto") for p in new), f"wrote outside the output folder: {sorted(new)[:5]}; {argv}"
    assert digest([world.table, world.table.with_suffix(".json")]) == tables, f"a table file changed: {argv}"
    return r


def fuzz_spec(world):
    @FUZZ
    @given(text=bad_spec())
    def prop(text):
        r = _in(world, "spec", lambda: ["cost", "--spec", text, "--json"], {0, 2})
        if r.code == 0:  # accepted only if it is exactly a spec
            assert SPACE.parse(text).hash in r.out
    return prop


def fuzz_spec_file(world):
    @FUZZ
    @given(data=st.binary(max_size=600), bom=st.booleans())
    def prop(data, bom):
        f = world.root / "run" / "spec.json"
        f.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
        _in(world, "spec-file", lambda: ["cost", "--spec", str(f)], {0, 2})
    return prop


def fuzz_table(world):
    @FUZZ
    @given(edit=bad_table_edit())
    def prop(edit):
        what, apply, must_fail = edit
        bad = world.root / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        bad.mkdir()
        csv = bad / "t.csv"
        shutil.copy(world.table, csv)
        shutil.copy(world.table.with_suffix(".json"), csv.with_suffix(".json"))
        apply(csv, csv.with_suffix(".json"))
        kept = digest([csv, csv.with_suffix(".json")])
        _in(world, "table", lambda: world.argv("--latency-ms", "0.5", table=csv), {0, 2}, must_fail)
        assert digest([csv, csv.with_suffix(".json")]) == kept, f"the command changed the table ({what})"
    return prop


def fuzz_budget(world):
    number = st.one_of(st.sampled_from(NASTY), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.floats(0.01, 5).map(lambda v: f"{v:.3f}"))
    small = st.one_of(st.integers(-3, 12).map(str), st.sampled_from(NASTY))
    flags = st.fixed_dictionaries({}, optional={"--max-bytes": number, "--margin": number, "--pop": small,
                                                "--gens": small, "--seed": small,
                                                "--bits": st.sampled_from(["8", "2,4", "4,8,32", "5", "", "8,x",
                                                                           "\uff18", "-8"])})

    @FUZZ
    @given(budget=number, extra=flags)
    def prop(budget, extra):
        argv = world.argv("--latency-ms", budget)
        for k, v in extra.items():
            argv += [k, v]
        _in(world, "budget", lambda: argv, {0, 2})
    return prop


def fuzz_device(world):
    @FUZZ
    @given(name=nasty_text, out_dir=st.one_of(st.just("tables"), nasty_text), validate=st.booleans())
    def prop(name, out_dir, validate):
        os.chdir(world.root / "run")  # relative --out-dir stays inside the run folder, if anywhere
        try:  # --validate/--estimate never measure here: the table is missing or the name is refused
            act = ["--validate", "1"] if validate else ["--estimate", "0"]
            r = _in(world, "device", lambda: ["profile", "--device", name, "--out-dir", out_dir, *act], {2})
        finally:
            os.chdir(world.root)
        assert r.code == 2
    return prop


def fuzz_output(world):
    @FUZZ
    @given(out=st.one_of(nasty_text, nasty_text.map(lambda s: s + ".tflite"),
                         st.sampled_from([".", "run", "run.tflite", "/", "/dev/full", "/proc/x.tflite",
                                          "/nonexistent/dir/x.tflite", "a" * 300 + ".tflite"])))
    def prop(out):
        os.chdir(world.root / "run")
        try:
            _in(world, "output", lambda: ["export", "--checkpoint", str(world.ckpt), "--spec", "x", "--out", out], {2})
        finally:
            os.chdir(world.root)
    return prop


def fuzz_paths(world):
    path = st.one_of(nasty_text, st.sampled_from(["/", "/dev/null", "/proc/self/mem", "run", "table.csv", "a" * 300,
                                                  "x/" * 300, "run/last.pt/"]))

    @FUZZ
    @given(ckpt=path, table=path, pred=path, which=st.integers(0, 2))
    def prop(ckpt, table, pred, which):  # one real file and two of the given paths, or all three given
        # (some given paths are real: "run" is the run folder, "table.csv" the table; so 0 or 2)
        argv = ["search", "--checkpoint", ckpt if which else str(world.ckpt), "--table", table if which != 1
                else str(world.table), "--predictor", pred, "--latency-ms", "0.5", "--pop", "8", "--gens", "2"]
        _in(world, "paths", lambda: argv, {0, 2})
    return prop


PROPERTIES = {"spec": fuzz_spec, "spec-file": fuzz_spec_file, "table": fuzz_table, "budget": fuzz_budget,
              "device": fuzz_device, "output": fuzz_output,
              "paths": fuzz_paths}


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_fuzz(world, name):
    PROPERTIES[name](world)()
