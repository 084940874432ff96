"""Hostile-input machinery shared by tests/test_hostile.py, tests/test_fuzz.py and bench/fuzz.py:
the CLI entry points called in-process, the promise each call must keep, a search world to
call them in, and hypothesis strategies of bad input."""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from qfa.core.space import get_space

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "latency_tables" / "amd-epyc-zen4-1t-hswish-decomposed"
SHIPPED_ROWS = SHIPPED.with_suffix(".csv").read_bytes().count(b"\n") - 1
SPACE = get_space("fmnist")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def errors(self) -> list[str]:
        """stderr lines that are not progress or warnings."""
        return [ln for ln in self.err.splitlines() if ln.strip() and not ln.startswith(("warning:", "[qfa run]"))
                and ": warning: " not in ln and "INFO:" not in ln]


def call(argv: list[str]) -> Result:
    """``qfa ARGV`` (``qfa profile ...`` is hw/profile.py) in this process, output captured.
    An exception escaping ``main`` is a traceback: it propagates and fails the caller."""
    from qfa.app.cli import main
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse: --help (0) or a usage error (2)
            code = e.code if isinstance(e.code, int) else 2
    return Result(code, out.getvalue(), err.getvalue())


def check(r: Result, codes: set[int], argv: list | None = None) -> None:
    """The promise: an allowed exit status (3, an internal error, never is), no traceback, one
    error line on failure, nothing raw from the input's control characters."""
    where = f"argv={argv!r}\nstderr={r.err[-800:]!r}"
    assert r.code in codes, f"exit {r.code}, expected one of {sorted(codes)}; {where}"
    assert "Traceback" not in r.err, where
    assert not CONTROL.search(r.err.replace("\r", "")), f"control characters on stderr; {where}"
    if r.code != 0:
        assert len(r.errors) == 1 and ": error: " in r.errors[0], f"not one error line; {where}"


def digest(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@dataclass
class SearchWorld:
    """What ``qfa search`` needs, in ``root``: a checkpoint file (only its bytes key the saved
    Pareto sets; search never loads it), a real predictor fitted to synthetic labels (input
    validation does not care how accurate it is) and a copy of the shipped table."""
    root: Path

    @property
    def ckpt(self) -> Path:
        return self.root / "run" / "last.pt"

    @property
    def table(self) -> Path:
        return self.root / "table.csv"

    def argv(self, *extra, table: Path | None = None) -> list[str]:
        return ["search", "--checkpoint", str(self.ckpt), "--table", str(table or self.table), "--pop", "8",
                "--gens", "2", "--json", *extra]


def make_search_world(root: Path) -> SearchWorld:
    from qfa.nas.predictor import fit
    from qfa.core.cost import total_costs
    w = SearchWorld(root)
    w.ckpt.parent.mkdir(parents=True)
    w.ckpt.write_bytes(b"a checkpoint's bytes; qfa search only hashes them")
    rng = np.random.default_rng(0)
    specs = [SPACE.sample(rng) for _ in range(40)]
    rows = [{"spec": str(s), "top1": 60 + 5 * np.log1p(total_costs(s)["macs"] / 1e6) + rng.normal(0, 0.3)}
            for s in specs]
    pred, _ = fit(SPACE, rows, epochs=5)
    pred.save(w.ckpt.parent / "predictor.safetensors")
    shutil.copy(SHIPPED.with_suffix(".csv"), w.table)
    shutil.copy(SHIPPED.with_suffix(".json"), w.table.with_suffix(".json"))
    return w


# ---- strategies ----------------------------------------------------------------------------
NASTY = ["", " ", "-", "--", "-1", "0", "-0", "1e400", "-1e400", "nan", "NaN", "inf", "-inf", "Infinity", "1e-400",
         "8.0", "2.5", "\u0662\u0668", "\uff12\uff18", "0x10", "1_000", "9" * 400, "\x1b[31mred", "a\nb", "\u202e",
         "../x", "/dev/full", "\x00", "\ufeff8", "None", "null", "true", "[]", "{}"]

nasty_text = st.one_of(st.sampled_from(NASTY), st.text(max_size=40),
                       st.text(alphabet=st.characters(codec="utf-8"), max_size=400))
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
json_value = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), c, max_size=4)),
                          max_leaves=12)


@st.composite
def bad_spec(draw) -> str:
    """Text given to ``--spec``: random, or a valid spec (compact or JSON) with one edit."""
    kind = draw(st.sampled_from(["text", "compact", "json", "json-raw", "valid"]))
    if kind == "text":
        return draw(nasty_text)
    spec = SPACE.sample(np.random.default_rng(draw(st.integers(0, 2**16))))
    if kind == "valid":  # the accepting path is checked too
        return draw(st.sampled_from([str(spec), spec.dumps(), f"  {spec}\n", "\ufeff" + spec.dumps()]))
    if kind == "compact":
        toks = str(spec).split()
        i = draw(st.integers(0, len(toks) - 1))
        how = draw(st.sampled_from(["replace", "duplicate", "drop", "char"]))
        if how == "replace":
            toks[i] = draw(nasty_text)
        elif how == "duplicate":
            toks.insert(i, toks[i])
        elif how == "drop":
            del toks[i]
        else:
            t = toks[i]
            j = draw(st.integers(0, max(len(t) - 1, 0)))
            toks[i] = t[:j] + draw(st.sampled_from(NASTY + ["9", "f", "=", ",", "-", "_"])) + t[j + 1:]
        return " ".join(toks)
    d = json.loads(spec.dumps())
    if kind == "json-raw":  # JSON text edited where a parser's limits are
        text = json.dumps(d)
        return text.replace(str(d["resolution"]), draw(st.sampled_from(["1e400", "NaN", "Infinity", "28.0", "9" * 5000,
                                                                          '"28"', "-28", "[28]"])), 1)
    # replace one node of the spec's JSON by any JSON value
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for k, v in enumerate(node):
                walk(v, path + [k])
    walk(d, [])
    path = draw(st.sampled_from(paths[1:]))
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = draw(json_value)
    return json.dumps(d)


@st.composite
def bad_table_edit(draw):
    """(description, function editing a table copy in place, must_fail): a broken CSV cell,
    a cut-off file, a metadata field replaced or dropped, or bytes of noise."""
    kind = draw(st.sampled_from(["cell", "cut", "meta", "meta-drop", "noise-csv", "noise-json"]))
    if kind == "cell":
        row = draw(st.integers(0, SHIPPED_ROWS - 1))
        col = draw(st.sampled_from(["key", "min_us", "median_us", "cv"]))
        val = draw(st.one_of(st.sampled_from(NASTY + ["-2.5", "0.0", "1e12"]), st.text(max_size=20)))
        must_fail = False
        if col == "min_us":  # the column the shipped table predicts with (its "stat")
            try:
                v = float(val)
                must_fail = not (np.isfinite(v) and 0 < v < 1e9)
            except ValueError:
                must_fail = True
        elif col == "key":
            must_fail = True  # a shipped key is unique in its sweep; anything else is no key or a copy of one

        def edit(csv_path: Path, json_path: Path):
            import pandas as pd
            df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
            df.loc[row, col] = val
            df.to_csv(csv_path, index=False)
        return f"cell row {row} {col}={val!r}", edit, must_fail
    if kind == "cut":
        frac = draw(st.floats(0.0, 1.0))

        def edit(csv_path, json_path):
            raw = csv_path.read_bytes()
            csv_path.write_bytes(raw[: int(len(raw) * frac)])
        return f"cut at {frac:.4f}", edit, False
    if kind in ("meta", "meta-drop"):
        field = draw(st.sampled_from(["space", "space_hash", "target", "overhead_us", "threads", "resolutions",
                                      "calibration", "device_facts", "space_bits"]))
        val = draw(json_value)

        def edit(csv_path, json_path):
            meta = json.loads(json_path.read_text())
            if kind == "meta":
                meta[field] = val
            else:
                meta.pop(field, None)
            json_path.write_text(json.dumps(meta))
        return f"{kind} {field}={val!r}", edit, False
    noise = draw(st.binary(max_size=300))

    def edit(csv_path, json_path):
        (csv_path if kind == "noise-csv" else json_path).write_bytes(noise)
    return f"{kind} {noise[:20]!r}", edit, True
