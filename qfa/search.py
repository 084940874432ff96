"""NSGA-II (pymoo) over subnet genomes: predicted accuracy vs measured-table latency vs size.

The whole front is searched once per (checkpoint, predictor, table) and saved; every budget
after that is answered from the saved set (the paper's zero marginal cost per new budget).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hw.table import LatencyTable

from .cost import CostModel
from .predictor import Predictor, searched_pairs
from .space import QBits, SearchSpace

__all__ = ["make_problem", "search_front", "ParetoSet", "SearchError", "pareto_key", "deployed_bytes"]

OBJECTIVES = ("top1", "latency_ms", "bytes")


class SearchError(ValueError):
    """No spec meets the request (message names the best achievable value)."""


def deployed_bytes(cost: CostModel, genomes: np.ndarray) -> np.ndarray:
    """Weight + bias bytes as TFLite int8 stores them: every weight one byte whatever its
    nominal bitwidth, biases int32 (the nominal-bit size is ``CostModel(...)["bytes"]``)."""
    s = cost.space
    g = np.array(genomes, dtype=np.int64, copy=True).reshape(-1, s.genome_len)
    i8 = s.bit_pairs.index(QBits(8, 8))
    ns = len(s.stages)
    slots = g[:, 1 + ns:-4].reshape(len(g), -1, s.SLOT_GENES)
    slots[..., 2:] = i8
    g[:, 1 + ns:-4] = slots.reshape(len(g), -1)
    g[:, -4:] = i8
    return cost(g)["bytes"]


def make_problem(space: SearchSpace, predictor: Predictor, table: LatencyTable, bits: Sequence[int] | None = None):
    """A vectorised pymoo Problem: one call scores a whole population (minimise -top1,
    latency, bytes). Pair genes index the allowed bit pairs (``bits`` restricts them, e.g.
    (8,) for W8A8-only deployments); ``problem.to_genome`` maps a solution to a space genome."""
    from pymoo.core.problem import Problem
    pairs = [q for q in searched_pairs(space) if bits is None or (q.w in bits and q.a in bits)]
    if not pairs:
        raise SearchError(f"no trained bit pair uses only bits {list(bits)}")
    allowed = np.array([space.bit_pairs.index(q) for q in pairs])
    upper = space.genome_upper().copy()
    pair_genes = np.zeros(space.genome_len, bool)
    ns = len(space.stages)
    pair_genes[1 + ns:-4] = np.tile([False, False, True, True, True], (len(upper) - ns - 5) // 5)
    pair_genes[-4:] = True
    upper[pair_genes] = len(allowed)
    res_ok = [i for i, r in enumerate(space.resolutions) if r in table.meta.get("resolutions", space.resolutions)]
    lo = np.zeros(space.genome_len, int)
    lo[0], upper[0] = min(res_ok), max(res_ok) + 1
    cost = CostModel(space)

    def to_genome(x: np.ndarray) -> np.ndarray:
        g = np.rint(np.atleast_2d(x)).astype(np.int64)
        g[:, pair_genes] = allowed[g[:, pair_genes]]
        return space.canonical(g)

    class _P(Problem):
        def _evaluate(self, x, out, *args, **kwargs):
            g = to_genome(x)
            acc = predictor.predict_many(space, g)
            lat = table.predict_many(g)
            size = deployed_bytes(cost, g)
            out["F"] = np.column_stack([-acc, np.nan_to_num(lat, nan=1e9), size])

    problem = _P(n_var=space.genome_len, n_obj=3, xl=lo, xu=upper - 1, vtype=int)
    problem.to_genome, problem.allowed, problem.pair_genes = to_genome, allowed, pair_genes
    return problem


def search_front(space: SearchSpace, predictor: Predictor, table: LatencyTable, pop: int = 500, gens: int = 200,
                 seed: int = 0, progress=None, bits: Sequence[int] | None = None) -> dict[str, Any]:
    """Run NSGA-II and return the non-dominated set: genomes and objectives."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize
    from pymoo.core.callback import Callback

    problem = make_problem(space, predictor, table, bits)
    rng = np.random.default_rng(seed)
    x0 = IntegerRandomSampling()(problem, pop, random_state=rng).get("X").astype(np.int64)
    widths = sorted({space.bit_pairs[i].w for i in problem.allowed} & {space.bit_pairs[i].a for i in problem.allowed})
    res_ok = [r for r in space.resolutions if r in table.meta.get("resolutions", space.resolutions)]
    seeds = [space.min_spec(bits=min(widths)).replace(resolution=min(res_ok)),
             space.max_spec(bits=max(widths)).replace(resolution=max(res_ok))]
    for i, sp in enumerate(seeds):  # genome -> solution: pair genes back to allowed positions
        g = space.encode(sp)
        g[problem.pair_genes] = np.searchsorted(problem.allowed, g[problem.pair_genes])
        x0[i] = g

    class _CB(Callback):
        def notify(self, algorithm):
            if progress:
                progress(algorithm.n_gen, gens)

    algo = NSGA2(pop_size=pop, sampling=x0, crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                 mutation=PM(eta=20, vtype=float, repair=RoundingRepair()), eliminate_duplicates=True)
    t0 = time.perf_counter()
    res = minimize(problem, algo, ("n_gen", gens), seed=seed, verbose=False, callback=_CB())
    g = problem.to_genome(res.X)
    g, idx = np.unique(g, axis=0, return_index=True)
    f = np.atleast_2d(res.F)[idx]
    order = np.argsort(f[:, 1])
    return {"genomes": g[order], "top1": -f[order, 0], "latency_ms": f[order, 1], "bytes": f[order, 2],
            "seconds": time.perf_counter() - t0, "pop": pop, "gens": gens}


def pareto_key(checkpoint: Path, predictor_path: Path, table_csv: Path) -> str:
    """Identity of a Pareto set: checkpoint file (size, mtime), predictor and table contents."""
    h = hashlib.sha256()
    st = checkpoint.stat()
    h.update(f"{checkpoint.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    for p in (predictor_path, table_csv, table_csv.with_suffix(".json")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


class ParetoSet:
    """A saved front: ``NAME.jsonl`` (one spec + objectives a line) and ``NAME.csv``."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    @classmethod
    def from_front(cls, space: SearchSpace, front: dict) -> "ParetoSet":
        rows = []
        for i, g in enumerate(front["genomes"]):
            spec = space.decode(g)
            rows.append({"index": i, "hash": spec.hash, "top1": float(front["top1"][i]),
                         "latency_ms": float(front["latency_ms"][i]), "bytes": int(front["bytes"][i]),
                         "spec_str": str(spec), "spec": json.loads(spec.dumps())})
        return cls(rows)

    def save(self, base: Path, budget_ms: float | None = None) -> None:
        base.parent.mkdir(parents=True, exist_ok=True)
        import csv
        import io
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "hash", "top1", "latency_ms", "bytes", "spec"])
        w.writerows([r["index"], r["hash"], f"{r['top1']:.4f}", f"{r['latency_ms']:.4f}", r["bytes"], r["spec_str"]]
                    for r in self.rows)
        for suffix, text in ((".jsonl", "".join(json.dumps(r) + "\n" for r in self.rows)), (".csv", buf.getvalue())):
            tmp = base.with_suffix(suffix + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, base.with_suffix(suffix))
        self.plot(base.with_suffix(".png"), budget_ms)

    @classmethod
    def load(cls, base: Path) -> "ParetoSet":
        p = base.with_suffix(".jsonl")
        return cls([json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()])

    def answer(self, latency_ms: float, max_bytes: float | None = None) -> dict:
        ok = [r for r in self.rows if r["latency_ms"] <= latency_ms and (max_bytes is None or r["bytes"] <= max_bytes)]
        if not ok:
            fastest = min(self.rows, key=lambda r: r["latency_ms"])
            smallest = min(self.rows, key=lambda r: r["bytes"])
            msg = (f"no subnet meets {latency_ms:g} ms" + (f" and {max_bytes:,.0f} bytes" if max_bytes else "") +
                   f": the fastest achievable on this table is {fastest['latency_ms']:.3f} ms"
                   + (f", the smallest {smallest['bytes']:,} bytes" if max_bytes else ""))
            raise SearchError(msg)
        return max(ok, key=lambda r: (r["top1"], -r["latency_ms"]))

    def plot(self, path: Path, budget_ms: float | None = None) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        lat = np.array([r["latency_ms"] for r in self.rows])
        acc = np.array([r["top1"] for r in self.rows])
        size = np.array([r["bytes"] for r in self.rows]) / 1e3
        fig, ax = plt.subplots(figsize=(6, 4))
        sc = ax.scatter(lat, acc, c=size, s=10, cmap="viridis")
        fig.colorbar(sc, label="int8 weight bytes (kB)")
        if budget_ms is not None:
            ax.axvline(budget_ms, color="r", ls="--", lw=1, label=f"budget {budget_ms:g} ms")
            ax.legend(loc="lower right")
        ax.set_xlabel("predicted latency (ms, measured table)")
        ax.set_ylabel("predicted top-1 (%, held-out)")
        ax.set_title(f"Pareto set: {len(self.rows)} subnets")
        fig.tight_layout()
        tmp = path.with_name(path.stem + ".tmp.png")
        fig.savefig(tmp, dpi=120)
        plt.close(fig)
        os.replace(tmp, path)
