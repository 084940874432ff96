"""Latency tables: CSV rows (one per measured entry) + JSON metadata, and fast prediction.

Prediction = c0 * S + c1 + c2 * pieces + c3 * clamped, with S = overhead + sum of (entry -
overhead), ``pieces`` the number of entries and ``clamped`` the number of convs whose input
grid is below 8 bits (each adds a MINIMUM op that XNNPACK does not take, splitting its
partitions differently in a whole model than in a piece). The coefficients are fitted at
profiling time on whole subnets measured end to end (plain sum when none were measured).
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import sys
from itertools import product
from pathlib import Path
from typing import Sequence

import numpy as np

from export.targets import DELEGATES, TARGETS, Target, runtime_of
from qfa.core.conventions import one_line
from qfa.core.fileio import append_csv_row, atomic_write, strict_json
from qfa.core.space import SearchSpace, SpecError, SubnetSpec, get_space, mid_channels, space_from_json

from hw.entries import FLOAT_TOKENS, TOKENS, Entry, entries, token

__all__ = ["fit_correction", "LatencyTable", "TableError", "FIELDS", "FEATURES", "KEY", "STATS", "add_sweep_column", "append_row", "clamped", "stat_of",
           "read_meta", "read_rows", "read_sweeps"]


def clamped(spec: SubnetSpec) -> int:
    """Searched convs of ``spec`` whose input grid is below 8 bits."""
    return sum(q.a < 8 for q in spec.all_bits())

FIELDS = list(Entry._fields) + ["key", "min_us", "median_us", "p10_us", "p90_us", "count", "cv", "sweep"]
# A profile times every entry in several sweeps over the table, each in another order (a host that
# slows down for a minute inflates whatever it times then); a row per entry and sweep, and an
# entry's latency is its fastest sweep. Tables without the column were timed in one sweep.
# The statistic a table predicts with (its metadata's "stat"): the fastest of the invokes spread
# round-robin over the job (hw.runner); tables measured before it was recorded used the median.
STATS = ("min_us", "median_us")
FEATURES = ("sum_us", "1", "pieces", "clamped_convs")  # of the fitted correction (LatencyTable.features)


def stat_of(meta: dict) -> str:
    """The statistic a table's metadata says its entries are."""
    return meta.get("stat", "median_us")


class TableError(ValueError):
    """A latency table that cannot be used (missing, malformed, other space, missing entry)."""


_TOK = "(?:i8c?|i4c?|f32|f16)"
KEY = re.compile(rf"(stem|first|mb|head)\|s[0-9]{{1,2}}p[01]\|r[0-9]{{1,4}}\|[0-9]{{1,4}}x[0-9]{{1,4}}x[0-9]{{1,5}}>[0-9]{{1,5}}"
                 rf"\|k[0-9]{{1,2}}\|m[0-9]{{1,5}}\|st[12]\|[a-z]{{1,12}}\|se[01]\|sk[01]\|(?:[fi]:)?{_TOK}(?:/{_TOK}){{0,2}}",
                 re.ASCII)
_META_TYPES = {"space": str, "space_hash": str, "target": str, "delegate": str, "device": str, "overhead_us": (int, float),
               "threads": int, "resolutions": list, "calibration": dict, "device_facts": dict, "space_bits": list,
               "space_json": dict, "stat": str}


def _bad(path: Path, where: str, why: str) -> TableError:
    return TableError(f"{path}: {where}: {one_line(why, 200)}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TableError(f"cannot read {path}: {e.strerror}") from None


def read_meta(path: Path) -> dict:
    """A table's JSON metadata, validated (types, known target, finite numbers)."""
    try:
        meta = strict_json(_read(path).decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise _bad(path, "metadata", "not UTF-8 text") from None
    except ValueError as e:
        raise _bad(path, "metadata", f"malformed JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _bad(path, "metadata", "must be a JSON object")
    for k in ("space", "space_hash"):
        if k not in meta:
            raise _bad(path, f"field {k!r}", "missing")
    for k, t in _META_TYPES.items():
        if k in meta and (not isinstance(meta[k], t) or isinstance(meta[k], bool)):
            raise _bad(path, f"field {k!r}", f"must be {getattr(t, '__name__', 'a number')}, got {meta[k]!r}")
    if meta.get("target", "tflite-int8") not in TARGETS:
        raise _bad(path, "field 'target'", f"unknown target {meta['target']!r}; known: {', '.join(sorted(TARGETS))}")
    if runtime_of(meta)["delegate"] not in DELEGATES:
        raise _bad(path, "field 'delegate'", f"unknown runtime configuration {meta['delegate']!r}; known: "
                   f"{', '.join(DELEGATES)}")
    if stat_of(meta) not in STATS:
        raise _bad(path, "field 'stat'", f"unknown statistic {meta['stat']!r}; known: {', '.join(STATS)}")
    if not 0 <= meta.get("overhead_us", 0) < 1e9:
        raise _bad(path, "field 'overhead_us'", f"must be a latency >= 0 us, got {meta['overhead_us']}")
    if meta.get("threads", 1) < 1:
        raise _bad(path, "field 'threads'", f"must be >= 1, got {meta['threads']}")
    if "resolutions" in meta and (not meta["resolutions"] or not all(type(r) is int for r in meta["resolutions"])):
        raise _bad(path, "field 'resolutions'", f"must be a non-empty list of integers, got {meta['resolutions']!r}")
    if not all(type(b) is int for b in meta.get("space_bits") or []):
        raise _bad(path, "field 'space_bits'", f"must be a list of integers, got {meta['space_bits']!r}")
    if "calibration" in meta:
        coef = meta["calibration"].get("coef")
        if (not isinstance(coef, list) or len(coef) != len(FEATURES)
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coef)):
            raise _bad(path, "field 'calibration.coef'", f"must be {len(FEATURES)} numbers ({', '.join(FEATURES)}), "
                       f"got {coef!r}")
    return meta


def read_sweeps(path: Path, stat: str = "median_us") -> tuple[dict[tuple[str, int], float], bytes]:
    """``{(key, sweep): latency us}`` (column ``stat``) of a table CSV, and the bytes of a
    half-written last row (dropped, b"" if none). Each row needs a key of :data:`KEY`'s grammar,
    seen once per sweep, a sweep number >= 1 (1 if the table has no such column) and a finite
    latency > 0."""
    raw = _read(path)
    dropped = b""
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        raw, dropped = raw[:cut], raw[cut:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(path, f"byte {e.start}", "not UTF-8 text (not a latency table)") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        names = reader.fieldnames
        if names is None or not {"key", stat} <= set(names):
            raise _bad(path, "header", f"not a latency table (columns {names}; need key and {stat})")
        rows: dict[tuple[str, int], float] = {}
        for n, r in enumerate(reader, start=2):
            if None in r or None in r.values():
                raise _bad(path, f"row {n}", f"has {len(r.get(None) or ()) + len(names)} fields, the header {len(names)}")
            key = r["key"]
            if not KEY.fullmatch(key):
                raise _bad(path, f"row {n} field 'key'", f"not a table key: {key!r}")
            sweep = r.get("sweep", "1")
            if not re.fullmatch(r"[1-9][0-9]{0,2}", sweep):
                raise _bad(path, f"row {n} field 'sweep'", f"must be a sweep number 1-999, got {sweep!r}")
            if (key, int(sweep)) in rows:
                raise _bad(path, f"row {n} field 'key'", f"{key} appears twice in sweep {sweep}")
            try:
                v = float(r[stat])
            except ValueError:
                v = float("nan")
            if not (math.isfinite(v) and 0 < v < 1e9):
                raise _bad(path, f"row {n} field '{stat}'", f"must be a finite latency > 0 us, got {r[stat]!r}")
            rows[key, int(sweep)] = v
    except csv.Error as e:
        raise _bad(path, f"line {reader.line_num}", f"unreadable CSV ({e})") from None
    return rows, dropped


def read_rows(path: Path, stat: str = "median_us") -> tuple[dict[str, float], bytes]:
    """``{key: latency us}`` of a table CSV: each entry's fastest sweep (:func:`read_sweeps`)."""
    sweeps, dropped = read_sweeps(path, stat)
    rows: dict[str, float] = {}
    for (key, _), v in sweeps.items():
        rows[key] = min(v, rows.get(key, v))
    return rows, dropped


def add_sweep_column(path: Path) -> None:
    """Rewrite a table CSV from before sweeps with its rows as sweep 1, so that later sweeps
    can be appended in the same columns (atomic: a crash leaves the old file or the new one)."""
    text = _read(path).decode("utf-8", "replace")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or "sweep" in reader.fieldnames:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows({**r, "sweep": 1} for r in reader)
    atomic_write(path, buf.getvalue())


def append_row(path: Path, row: dict) -> None:
    """Append one measured row atomically (see ``qfa.core.fileio.append_csv_row``)."""
    append_csv_row(path, FIELDS, row)


def _flip(e: Entry) -> Entry:
    """``e`` with its input in the other format (a float target's key names it: ``f:`` / ``i:``)."""
    fin, toks = e.prec.split(":", 1)
    return e._replace(prec={"f": "i", "i": "f"}[fin] + ":" + toks)


class LatencyTable:
    """A measured table for one device, space and target."""

    def __init__(self, rows: dict[str, float], meta: dict, space: SearchSpace) -> None:
        self.rows, self.meta, self.space = rows, meta, space
        self.target: Target = TARGETS[meta.get("target", "tflite-int8")]
        self.overhead = float(meta.get("overhead_us", 0.0))
        self.coef = np.asarray(meta.get("calibration", {}).get("coef", (1.0, 0.0, 0.0, 0.0)), np.float64)
        self._luts: dict | None = None
        self._derived: dict[str, float] | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        """Load ``NAME.csv`` (+ ``NAME.json`` beside it), validated: the metadata's fields and
        types, the space, every row's key grammar and a finite latency > 0. A last row cut off
        mid-write is dropped with a warning on stderr; anything else wrong is a TableError
        naming the file, row and field."""
        p = Path(path)
        if p.suffix != ".csv":
            p = p.with_suffix(".csv")
        if not p.is_file() or not p.with_suffix(".json").is_file():
            raise TableError(f"latency table not found: {p} (and {p.with_suffix('.json').name} beside it)")
        meta = read_meta(p.with_suffix(".json"))
        try:
            space = (space_from_json(meta["space_json"], "space_json") if "space_json" in meta
                     else get_space(meta["space"], meta.get("space_bits")))
        except SpecError as e:
            raise TableError(f"{p.with_suffix('.json')}: unknown search space in metadata ({e})") from None
        if space.hash != meta["space_hash"]:
            raise TableError(f"{p}: measured for space hash {meta['space_hash']!r}, but {meta['space']!r} is "
                             f"now {space.hash}: re-profile")
        bad = [r for r in meta.get("resolutions", []) if r not in space.resolutions]
        if bad:
            raise TableError(f"{p.with_suffix('.json')}: field 'resolutions' holds {bad}, not resolutions of "
                             f"space {space.name!r} {list(space.resolutions)}")
        rows, dropped = read_rows(p, stat_of(meta))
        if not rows:
            raise TableError(f"{p}: holds no measurements: profile it (hw/profile.py)")
        if dropped:
            print(f"warning: {p}: dropped a half-written last row ({len(dropped)} bytes, a cut-off write; "
                  "profiling again measures it)", file=sys.stderr)
        return cls(rows, meta, space)

    @property
    def resolutions(self) -> list[int]:
        """The resolutions this table has entries for."""
        return list(self.meta.get("resolutions", self.space.resolutions))

    @property
    def target_name(self) -> str:
        return self.target.name

    @property
    def runtime(self) -> dict:
        """The runtime configuration the table was measured under (and its subnets ship with)."""
        return runtime_of(self.meta)

    @property
    def stat(self) -> str:
        """The timing statistic of its entries (:data:`STATS`): a file is checked against the
        table by the same one."""
        return stat_of(self.meta)

    def host_mismatch(self) -> list[str]:
        """How this machine differs from the one this table was measured on (:func:`hw.transport.host_mismatch`)."""
        from hw.transport import host_mismatch
        return host_mismatch(self.meta)

    def check_space(self, space: SearchSpace) -> None:
        if space.hash != self.space.hash:
            raise TableError(f"table is for space {self.space.name!r} ({self.space.hash}), not "
                             f"{space.name!r} ({space.hash})")

    def _us(self, key: str) -> float | None:
        """An entry's measured latency, or one derived from measured ones (:meth:`derived`)."""
        v = self.rows.get(key)
        return self.derived.get(key) if v is None else v

    @property
    def derived(self) -> dict[str, float]:
        """Under a float target, the entries a profile does not time: a block whose input is in
        the other format than its project conv's output (it starts with a QUANTIZE or DEQUANTIZE
        of its input, or drops one) costs what its measured twin costs, plus what that change
        costs the smallest block of the same place (stage, position, resolution, precision), the
        :meth:`boundary_shape`, timed both ways. The change converts the block's input, so it
        does not depend on kernel or expand ratio (docs/results.md, "Float tables in less time")."""
        if self._derived is None:
            self._derived = {}
            if self.target.float_io:
                k0, e0 = self.boundary_shape()
                for spec in self.probes(self.resolutions, every_input=True):
                    for e in entries(spec, self.target):
                        if e.kind != "mb" or e.key in self.rows:
                            continue
                        ref = e._replace(kernel=k0, mid=mid_channels(e.c_in, e0))
                        parts = [self.rows.get(x.key) for x in (_flip(e), ref, _flip(ref))]
                        if None not in parts:
                            self._derived[e.key] = parts[0] + parts[1] - parts[2]
        return self._derived

    def boundary_shape(self) -> tuple[int, int]:
        """(kernel, expand) of the blocks a float target's profile times with both input formats."""
        return min(self.space.kernels), min(self.space.expands)

    def _entry_us(self, e: Entry) -> float:
        v = self._us(e.key)
        if v is None:
            raise TableError(f"no measurement for {e.key} (resolutions measured: {self.meta.get('resolutions')}): "
                             "profile it (hw/profile.py --resolution ...)")
        return v - self.overhead

    def features(self, spec: SubnetSpec) -> np.ndarray:
        """[plain sum (us), 1, pieces, clamped convs]: ``features @ coef`` is the prediction (us)."""
        ents = entries(spec, self.target)
        return np.array([self.overhead + sum(self._entry_us(e) for e in ents), 1.0, len(ents), clamped(spec)])

    def predict(self, spec: SubnetSpec) -> float:
        """Predicted end-to-end latency of ``spec`` in milliseconds."""
        self.check_space(spec.space)
        return float(self.features(spec) @ self.coef) / 1000.0

    # ---- vectorised prediction over genomes -------------------------------------------------
    def _slots(self, spec: SubnetSpec) -> list[tuple[Entry, str, tuple[int, ...]]]:
        """(entry, lookup table, index) of each piece of ``spec``: token indices, and for mb and
        head pieces the format of their input (1: float)."""
        s, ents = self.space, entries(spec, self.target)
        ri = s.resolutions.index(spec.resolution)

        def toks(e: Entry) -> tuple[int, ...]:
            return tuple(TOKENS.index(t) for t in e.prec.split(":")[-1].split("/"))
        fin = [int(e.prec.startswith("f:")) for e in ents]
        out = [(ents[0], "stem", (ri,)), (ents[1], "first", (ri, *toks(ents[1])))]
        for i, b in enumerate((b for st in spec.stages for b in st), start=2):
            e = ents[i]
            out.append((e, "mb", (e.stage - 1, e.pos, fin[i], ri, s.kernels.index(b.kernel), s.expands.index(b.expand),
                                  *toks(e))))
        return out + [(ents[-1], "head", (fin[-1], ri, *toks(ents[-1])))]

    def _build_luts(self) -> dict:
        s, tgt = self.space, self.target
        pairs = s.bit_pairs
        tok = {False: np.array([TOKENS.index(token(q, tgt)) for q in pairs]),
               True: np.array([TOKENS.index(token(q, tgt, True)) for q in pairs])}
        nr, nk, ne, nt = len(s.resolutions), len(s.kernels), len(s.expands), len(TOKENS)
        luts = {"mb": np.full((len(s.stages), 2, 2, nr, nk, ne, nt, nt, nt), np.nan),
                "first": np.full((nr, nt, nt), np.nan), "head": np.full((2, nr, nt, nt), np.nan), "stem": np.full(nr, np.nan)}
        for spec in self.probes(s.resolutions, every_input=True):
            for e, name, idx in self._slots(spec):
                v = self._us(e.key)
                luts[name][idx] = np.nan if v is None else v - self.overhead
        # from token tables to pair-index tables
        mb = luts["mb"][..., tok[False][:, None, None], tok[True][None, :, None], tok[False][None, None, :]]
        first = luts["first"][:, tok[True][:, None], tok[False][None, :]]
        head = luts["head"][:, :, tok[False][:, None], tok[False][None, :]]
        floats = np.array([token(q, tgt) in FLOAT_TOKENS for q in pairs])
        return {"mb": mb, "first": first, "head": head, "stem": luts["stem"], "float": floats}

    def _pair(self, t: int, dw: bool = False):
        match = [p for p in self.space.bit_pairs if token(p, self.target, dw) == TOKENS[t]]
        return match[0] if match else None

    def probe(self, r: int, k: int, e: int, toks: tuple[int, int, int], flip: str | None = None) -> SubnetSpec | None:
        """A spec at max depth whose every block has (k, e) and deployed precision ``toks``
        (expand, depthwise, project; the first block and the head take the first and the last):
        it touches one table key of each block shape. None when the target has no such
        precision.

        Under a float target a block's key also names its input's format, the format of the
        piece before it; ``flip`` gives those blocks the other input format, by putting blocks
        whose project conv is of the other format before them: "pos1" (stages B A B ..., the
        later blocks of each stage) or "pos0" (stages A B B ..., the first block of each stage and
        the head). None where the target has one format only."""
        from qfa.core.space import BlockSpec
        s = self.space
        qe, qd, qp = self._pair(toks[0]), self._pair(toks[1], True), self._pair(toks[2])
        if None in (qe, qd, qp):
            return None
        qd0 = self._pair(toks[0], True) or qd  # a depthwise conv has no int4 token
        qx, depth = qp, max(s.depths)
        if flip is not None:
            other = [t for t in TOKENS if (t in FLOAT_TOKENS) != (TOKENS[toks[2]] in FLOAT_TOKENS)]
            qx = next((q for q in s.bit_pairs if token(q, self.target) in other), None)
            if qx is None or depth < 2:
                return None
        a, b = BlockSpec(k, e, (qe, qd, qp)), BlockSpec(k, e, (qe, qd, qx))
        stage = {None: [a] * depth, "pos1": [b if i % 2 == 0 else a for i in range(depth)],
                 "pos0": [a] + [b] * (depth - 1)}[flip]
        return SubnetSpec(s, r, (qd0, qx), tuple(tuple(stage) for _ in s.stages), (qe, qp))

    def probes(self, resolutions: Sequence[int], every_input: bool = False) -> list[SubnetSpec]:
        """Specs that together touch every table key at ``resolutions`` that profiling measures;
        under a float target a block with the input format other than its output's only at the
        :meth:`boundary_shape` (the rest is :meth:`derived`), unless ``every_input``."""
        s, n = self.space, len(TOKENS)
        flips = (None, "pos1", "pos0") if self.target.float_io else (None,)
        ref = self.boundary_shape()
        out = (self.probe(r, k, e, t, f) for r in resolutions for k in s.kernels for e in s.expands
               for t in np.ndindex(n, n, n) for f in flips if f is None or every_input or (k, e) == ref)
        return [p for p in out if p is not None]

    def predict_many(self, genomes: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) of each genome row (``SearchSpace.encode``); NaN where an
        entry is missing."""
        if self._luts is None:
            self._luts = self._build_luts()
        L, s = self._luts, self.space
        lay = s.layout
        g = lay.rows(genomes)
        r, t = g[:, 0], g[:, lay.tail]
        active, slots = s.active_slots(g), lay.slots(g)
        us = self.overhead + L["stem"][r] + L["first"][r, t[:, 0], t[:, 1]]
        sub8 = np.array([q.a < 8 for q in s.bit_pairs])
        n_clamped = sub8[t].sum(1)
        fin = L["float"][t[:, 1]].astype(np.intp)  # each piece's input: the last piece's output format
        for si in range(lay.n_stages):
            for d in range(lay.max_depth):
                sl, on = slots[:, si, d], active[:, si, d]
                v = L["mb"][si, min(d, 1), fin, r, sl[:, 0], sl[:, 1], sl[:, 2], sl[:, 3], sl[:, 4]]
                us = us + np.where(on, v, 0.0)
                n_clamped = n_clamped + on * sub8[sl[:, 2:]].sum(1)
                fin = np.where(on, L["float"][sl[:, 4]], fin).astype(np.intp)
        us = us + L["head"][fin, r, t[:, 2], t[:, 3]]
        pieces = 3 + active.sum((1, 2))
        return np.column_stack([us, np.ones_like(us), pieces, n_clamped]) @ self.coef / 1000.0

    def predict_specs(self, specs: Sequence[SubnetSpec]) -> np.ndarray:
        return self.predict_many(np.stack([self.space.encode(s) for s in specs]))


def fit_correction(x: np.ndarray, meas: np.ndarray, extremes: int = 0) -> dict:
    """The correction ``measured us = coef . features`` (:data:`FEATURES`) of a table's plain
    sum, fitted on whole subnets measured end to end (``x``: their features, ``meas``: us; the
    first ``extremes`` of them the space's min/max subnets, the rest random).

    Least squares of the RELATIVE error, the figure users read (absolute error would let the
    largest subnets decide and leave small ones, i.e. tight budgets, 10-20% off); kept only if it
    beats the plain sum (coef 1, 0, 0, 0) in 2-fold cross-validation over >= 16 random subnets AND
    does no worse than it on the extremes. Judged on all at once, a fit drawn to the extremes won
    there and then predicted random subnets worse than the plain sum (validation RMSE 3.6% vs
    1.9%, 5.1% vs 3.1%); judged on the random ones alone (mostly large), a fit won there and
    predicted a small subnet 29% fast (docs/results.md, "An Intel Xeon host")."""
    plain = np.array([1.0, 0.0, 0.0, 0.0])
    everyone = np.arange(len(meas))

    def rmse(c: np.ndarray, i: np.ndarray) -> float:
        return float(100 * np.sqrt(np.mean(((x[i] @ c - meas[i]) / meas[i]) ** 2)))

    def fit(i: np.ndarray) -> np.ndarray:
        return np.linalg.lstsq(x[i] / meas[i, None], np.ones(len(i)), rcond=None)[0]
    coef = plain
    if len(meas) - extremes >= 16:
        perm = np.random.default_rng(0).permutation(len(meas))  # extremes come first: shuffle the halves
        a, b = np.sort(perm[: len(meas) // 2]), np.sort(perm[len(meas) // 2:])
        halves = ((fit(a), b), (fit(b), a))  # each half predicted by the other half's fit

        def cv(keep) -> tuple[float, float]:  # (the fit's, the plain sum's) error on the subnets kept
            parts = [(c, i) for c, i in ((c, keep(i)) for c, i in halves) if len(i)]
            return sum(rmse(c, i) for c, i in parts), sum(rmse(plain, i) for _, i in parts)
        (fit_random, plain_random), (fit_ends, plain_ends) = cv(lambda i: i[i >= extremes]), cv(lambda i: i[i < extremes])
        if fit_random < plain_random and fit_ends <= plain_ends:
            coef = fit(everyone)
    return {"coef": [float(c) for c in coef], "subnets": len(meas), "fit_rmse_pct": rmse(coef, everyone),
            "plain_sum_rmse_pct": rmse(plain, everyone), "features": list(FEATURES),
            "note": "measured us = coef . features, least squares of the relative error on whole subnets "
                    "(random + the min/max subnet of each resolution), kept only if it beats the plain sum "
                    "(coef 1,0,0,0) on the random ones and does no worse on the min/max ones in 2-fold "
                    "cross-validation"}
