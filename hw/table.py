"""Latency tables: CSV rows (one per measured entry) + JSON metadata, and fast prediction.

Prediction = c0 * S + c1 + c2 * pieces + c3 * clamped, with S = overhead + sum of (entry -
overhead), ``pieces`` the number of entries and ``clamped`` the number of convs whose input
grid is below 8 bits (each adds a MINIMUM op that XNNPACK does not take, splitting its
partitions differently in a whole model than in a piece). The coefficients are fitted at
profiling time on whole subnets measured end to end (plain sum when none were measured).
"""
from __future__ import annotations

import csv
import json
import os
from itertools import product
from pathlib import Path
from typing import Sequence

import numpy as np

from export.targets import TARGETS, Target
from qfa.core.fileio import append_csv_row
from qfa.core.space import SearchSpace, SubnetSpec, get_space

from hw.entries import TOKENS, Entry, entries, token

__all__ = ["fit_correction", "LatencyTable", "TableError", "FIELDS", "FEATURES", "append_row", "clamped"]


def clamped(spec: SubnetSpec) -> int:
    """Searched convs of ``spec`` whose input grid is below 8 bits."""
    return sum(q.a < 8 for q in spec.all_bits())

FIELDS = list(Entry._fields) + ["key", "median_us", "p10_us", "p90_us", "count", "cv"]
FEATURES = ("sum_us", "1", "pieces", "clamped_convs")  # of the fitted correction (LatencyTable.features)


class TableError(ValueError):
    """A latency table that cannot be used (missing, malformed, other space, missing entry)."""


def append_row(path: Path, row: dict) -> None:
    """Append one measured row atomically (see ``qfa.core.fileio.append_csv_row``)."""
    append_csv_row(path, FIELDS, row)


class LatencyTable:
    """A measured table for one device, space and target."""

    def __init__(self, rows: dict[str, float], meta: dict, space: SearchSpace) -> None:
        self.rows, self.meta, self.space = rows, meta, space
        self.target: Target = TARGETS[meta.get("target", "tflite-int8")]
        self.overhead = float(meta.get("overhead_us", 0.0))
        self.coef = np.asarray(meta.get("calibration", {}).get("coef", (1.0, 0.0, 0.0, 0.0)), np.float64)
        self._luts: dict | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        """Load ``NAME.csv`` (+ ``NAME.json`` beside it) and validate schema and space."""
        p = Path(path)
        if p.suffix != ".csv":
            p = p.with_suffix(".csv")
        if not p.is_file() or not p.with_suffix(".json").is_file():
            raise TableError(f"latency table not found: {p} (and {p.with_suffix('.json').name} beside it)")
        try:
            meta = json.loads(p.with_suffix(".json").read_text())
            with open(p, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or not {"key", "median_us"} <= set(reader.fieldnames):
                    raise TableError(f"{p}: not a latency table (columns {reader.fieldnames})")
                rows = {r["key"]: float(r["median_us"]) for r in reader}
        except (json.JSONDecodeError, ValueError, KeyError) as e:
            raise TableError(f"{p}: unreadable latency table ({e})") from None
        try:
            space = get_space(meta["space"], meta.get("space_bits"))
        except Exception as e:  # noqa: BLE001 - unknown space name etc.
            raise TableError(f"{p}: unknown search space in metadata ({e})") from None
        if space.hash != meta.get("space_hash"):
            raise TableError(f"{p}: measured for space hash {meta.get('space_hash')}, but {meta['space']!r} is "
                             f"now {space.hash}: re-profile")
        return cls(rows, meta, space)

    @property
    def resolutions(self) -> list[int]:
        """The resolutions this table has entries for."""
        return list(self.meta.get("resolutions", self.space.resolutions))

    @property
    def target_name(self) -> str:
        return self.target.name

    def host_mismatch(self) -> list[str]:
        """How this machine differs from the one this table was measured on (:func:`hw.transport.host_mismatch`)."""
        from hw.transport import host_mismatch
        return host_mismatch(self.meta)

    def check_space(self, space: SearchSpace) -> None:
        if space.hash != self.space.hash:
            raise TableError(f"table is for space {self.space.name!r} ({self.space.hash}), not "
                             f"{space.name!r} ({space.hash})")

    def _entry_us(self, e: Entry) -> float:
        v = self.rows.get(e.key)
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
    def _build_luts(self) -> dict:
        s, tgt = self.space, self.target
        pairs = s.bit_pairs
        tok = {False: np.array([TOKENS.index(token(q, tgt)) for q in pairs]),
               True: np.array([TOKENS.index(token(q, tgt, True)) for q in pairs])}
        nr, nk, ne, nt = len(s.resolutions), len(s.kernels), len(s.expands), len(TOKENS)
        mb = np.full((len(s.stages), 2, nr, nk, ne, nt, nt, nt), np.nan)
        first = np.full((nr, nt, nt), np.nan)
        head = np.full((nr, nt, nt), np.nan)
        stem = np.full(nr, np.nan)
        for ri, r in enumerate(s.resolutions):
            for t0, t1, t2 in product(range(nt), repeat=3):
                for ki, ei in product(range(nk), range(ne)):
                    spec = self.probe(r, s.kernels[ki], s.expands[ei], (t0, t1, t2))
                    for e in entries(spec, tgt) if spec is not None else ():
                        v = self.rows.get(e.key, np.nan) - self.overhead
                        if e.kind == "mb":
                            mb[e.stage - 1, e.pos, ri, ki, ei, t0, t1, t2] = v
                        elif ki == ei == 0 and t2 == 0:
                            if e.kind == "first":
                                first[ri, t0, t1] = v
                            elif e.kind == "head":
                                head[ri, t0, t1] = v
                            else:
                                stem[ri] = v
        # from token tables to pair-index tables
        mb = mb[..., tok[False][:, None, None], tok[True][None, :, None], tok[False][None, None, :]]
        first = first[:, tok[True][:, None], tok[False][None, :]]
        head = head[:, tok[False][:, None], tok[False][None, :]]
        return {"mb": mb, "first": first, "head": head, "stem": stem}

    def _pair(self, t: int, dw: bool = False):
        match = [p for p in self.space.bit_pairs if token(p, self.target, dw) == TOKENS[t]]
        return match[0] if match else None

    def probe(self, r: int, k: int, e: int, toks: tuple[int, int, int]) -> SubnetSpec | None:
        """A spec at max depth whose every block has (k, e) and deployed precision ``toks``
        (expand, depthwise, project; first block and head take the first two): it touches one
        table key of each block shape. None when the target has no such precision."""
        from qfa.core.space import BlockSpec
        s = self.space
        qe, qd, qp, qd0 = self._pair(toks[0]), self._pair(toks[1], True), self._pair(toks[2]), self._pair(toks[0], True)
        if None in (qe, qd, qp, qd0):
            return None
        stages = tuple(tuple(BlockSpec(k, e, (qe, qd, qp)) for _ in range(max(s.depths))) for _ in s.stages)
        return SubnetSpec(s, r, (qd0, self._pair(toks[1])), stages, (qe, self._pair(toks[1])))

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
        us = self.overhead + L["stem"][r] + L["first"][r, t[:, 0], t[:, 1]] + L["head"][r, t[:, 2], t[:, 3]]
        sub8 = np.array([q.a < 8 for q in s.bit_pairs])
        n_clamped = sub8[t].sum(1)
        for si in range(lay.n_stages):
            for d in range(lay.max_depth):
                sl, on = slots[:, si, d], active[:, si, d]
                v = L["mb"][si, min(d, 1), r, sl[:, 0], sl[:, 1], sl[:, 2], sl[:, 3], sl[:, 4]]
                us = us + np.where(on, v, 0.0)
                n_clamped = n_clamped + on * sub8[sl[:, 2:]].sum(1)
        pieces = 3 + active.sum((1, 2))
        return np.column_stack([us, np.ones_like(us), pieces, n_clamped]) @ self.coef / 1000.0

    def predict_specs(self, specs: Sequence[SubnetSpec]) -> np.ndarray:
        return self.predict_many(np.stack([self.space.encode(s) for s in specs]))


def fit_correction(x: np.ndarray, meas: np.ndarray) -> dict:
    """The correction ``measured us = coef . features`` (:data:`FEATURES`) of a table's plain
    sum, fitted on whole subnets measured end to end (``x``: their features, ``meas``: us).

    Least squares of the RELATIVE error, the figure users read (absolute error would let the
    largest subnets decide and leave small ones, i.e. tight budgets, 10-20% off); kept only if it
    beats the plain sum (coef 1, 0, 0, 0) in 2-fold cross-validation over >= 16 subnets."""
    plain = np.array([1.0, 0.0, 0.0, 0.0])
    everyone = np.arange(len(meas))

    def rmse(c: np.ndarray, i: np.ndarray) -> float:
        return float(100 * np.sqrt(np.mean(((x[i] @ c - meas[i]) / meas[i]) ** 2)))

    def fit(i: np.ndarray) -> np.ndarray:
        return np.linalg.lstsq(x[i] / meas[i, None], np.ones(len(i)), rcond=None)[0]
    coef = plain
    if len(meas) >= 16:
        perm = np.random.default_rng(0).permutation(len(meas))  # extremes come first: shuffle the halves
        a, b = np.sort(perm[: len(meas) // 2]), np.sort(perm[len(meas) // 2:])
        if rmse(fit(a), b) + rmse(fit(b), a) < rmse(plain, b) + rmse(plain, a):
            coef = fit(everyone)
    return {"coef": [float(c) for c in coef], "subnets": len(meas), "fit_rmse_pct": rmse(coef, everyone),
            "plain_sum_rmse_pct": rmse(plain, everyone), "features": list(FEATURES),
            "note": "measured us = coef . features, least squares of the relative error on whole subnets "
                    "(random + the min/max subnet of each resolution), kept only if it beats the plain sum "
                    "(coef 1,0,0,0) in 2-fold cross-validation"}
