"""NSGA-II (pymoo) over subnet genomes: predicted accuracy vs measured-table latency vs size.

The whole front is searched once per (checkpoint, predictor, tables) and saved; every budget
after that is answered from the saved set (the paper's zero marginal cost per new budget).
Several runtime configurations of one deployment target are searched in one run (:class:`Fastest`).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from qfa.core.cost import CostModel, LatencyModel
from qfa.nas.predictor import Predictor, searched_pairs
from qfa.nas.pareto import ParetoSet, SearchError, pareto_base, pareto_key
from qfa.core.space import FP, SearchSpace

__all__ = ["Fastest", "make_problem", "search_front", "saved_or_search", "ParetoSet", "SearchError", "pareto_base",
           "pareto_key", "deployed_bytes", "formats_report", "describe_formats", "per_configuration",
           "describe_deployments"]

OBJECTIVES = ("top1", "latency_ms", "bytes")


class Fastest:
    """Several runtime configurations (delegate, threads) of one deployment target as one latency
    model: a subnet runs in its fastest configuration's time. The configuration is a gene of the
    search resolved per genome: accuracy and size do not depend on it, so of one architecture
    NSGA-II would keep only its fastest configuration anyway, and taking the minimum spends no
    population on the others. ``tables``: {name: latency model}, all of one target and space."""

    def __init__(self, tables: dict[str, LatencyModel]) -> None:
        if not tables:
            raise SearchError("no latency table to search")
        self.names, self.tables = list(tables), list(tables.values())
        targets = sorted({t.target_name for t in self.tables})
        if len(targets) > 1:
            raise SearchError(f"the tables deploy different targets ({', '.join(targets)}): one target per search, "
                              "the one its labels score")
        if len({t.space.hash for t in self.tables}) > 1:
            raise SearchError("the tables are for different search spaces")
        self.space = self.tables[0].space

    @property
    def resolutions(self) -> list[int]:
        return sorted({r for t in self.tables for r in t.resolutions})

    @property
    def target_name(self) -> str:
        return self.tables[0].target_name

    @property
    def runtime(self) -> dict:
        return self.tables[0].runtime

    def each(self, genomes: np.ndarray) -> np.ndarray:
        """(configurations, genomes) predicted ms, inf where a table cannot say."""
        return np.nan_to_num(np.stack([t.predict_many(genomes) for t in self.tables]), nan=np.inf)

    def predict_many(self, genomes: np.ndarray) -> np.ndarray:
        ms = self.each(genomes).min(0)
        return np.where(np.isinf(ms), np.nan, ms)

    def configurations(self, genomes: np.ndarray) -> dict[str, Any]:
        """Each genome's fastest configuration (``table`` name and ``runtime``) and its ms on every one."""
        ms = self.each(genomes)
        which = ms.argmin(0)
        return {"table": [self.names[i] for i in which], "runtime": [self.tables[i].runtime for i in which],
                "latency_by_table": [{n: None if np.isinf(v) else v for n, v in zip(self.names, col)} for col in ms.T.tolist()]}


def deployed_bytes(cost: CostModel, genomes: np.ndarray, fp_bytes: int = 1) -> np.ndarray:
    """Weight + bias bytes as TFLite stores them: every quantized weight one byte whatever its
    nominal bitwidth, an FP conv's ``fp_bytes`` (1: an int8 target's 8-bit grid; 4: float32;
    2: fp16), biases int32 (the nominal-bit size is ``CostModel(...)["bytes"]``)."""
    s = cost.space

    def bytes_at(qi: int, keep_fp: bool = False) -> np.ndarray:  # every searchable conv at pair qi
        g = np.array(s.layout.rows(genomes), copy=True)
        genes = g[:, s.layout.pair_genes]
        fp = np.isin(genes, [i for i, q in enumerate(s.bit_pairs) if q.w == FP]) if keep_fp else False
        g[:, s.layout.pair_genes] = np.where(fp, genes, qi)
        return cost(g)["bytes"]

    by_w = {q.w: i for i, q in enumerate(s.bit_pairs) if q.w != FP}
    if 8 in by_w:
        int8 = bytes_at(by_w[8])
        if fp_bytes == 1:
            return int8
        fp_weights = (bytes_at(by_w[8], keep_fp=True) - int8) / 3  # an FP weight counts 4 bytes, an int8 one 1
        return int8 + (fp_bytes - 1) * fp_weights
    (w1, i1), (w2, i2) = sorted(by_w.items())[:2]  # bytes are linear in the weight width: extrapolate to 8
    b1, b2 = bytes_at(i1), bytes_at(i2)
    return b1 + (b1 - b2) / (w1 - w2) * (8 - w1)


def formats_report(spec, table: LatencyModel, predictor: Predictor) -> dict[str, Any]:
    """How ``spec`` deploys on ``table``'s target (how many searchable convs run in float32 or
    fp16, the rest int8), and why that mix: the same architecture all W8A8 and all FP, as the
    table and the predictor see them (predicted ms and top-1)."""
    from export.targets import TARGETS
    target = TARGETS[table.target_name]
    bits = spec.all_bits()
    rep: dict[str, Any] = {"float_convs": sum(q.w == FP for q in bits) if target.float_io else 0, "convs": len(bits),
                           "float_format": target.fp if target.float_io else None}
    if target.float_io:
        for name, twin in (("w8a8", spec.with_bits(8)), ("fp", spec.with_bits(FP))):
            rep[name] = {"latency_ms": float(table.predict_many(spec.space.encode(twin)[None])[0]),
                         "top1": float(predictor.predict(twin))}
    return rep


def describe_formats(rep: dict[str, Any]) -> str:
    """:func:`formats_report` in one line."""
    twins = "; ".join(f"all {'W8A8' if k == 'w8a8' else rep['float_format']}: {rep[k]['latency_ms']:.3f} ms, "
                      f"{rep[k]['top1']:.2f}%" for k in ("w8a8", "fp"))
    return (f"{rep['float_convs']} of {rep['convs']} searchable convs {rep['float_format']}, the rest int8 (the same "
            f"architecture, predicted: {twins})")


def make_problem(space: SearchSpace, predictor: Predictor, table: LatencyModel, bits: Sequence[int] | None = None):
    """A vectorised pymoo Problem: one call scores a whole population (minimise -top1,
    latency, bytes). Pair genes index the allowed bit pairs (``bits`` restricts them, e.g.
    (8,) for W8A8-only deployments); ``problem.to_genome`` maps a solution to a space genome."""
    from pymoo.core.problem import Problem
    from export.targets import TARGETS
    target = TARGETS[table.target_name]  # FP where the target deploys it in float and the labels have it
    fp = target.float_io and bool(predictor.meta.get("fp"))
    pairs = [q for q in searched_pairs(space, fp) if bits is None or (q.w in bits and q.a in bits)]
    if not pairs:
        raise SearchError(f"no trained bit pair uses only bits {list(bits)}")
    allowed = np.array([space.bit_pairs.index(q) for q in pairs])
    upper = space.genome_upper().copy()
    pair_genes = space.layout.pair_genes
    upper[pair_genes] = len(allowed)
    res_ok = [i for i, r in enumerate(space.resolutions) if r in table.resolutions]
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
            size = deployed_bytes(cost, g, target.fp_weight_bytes)
            out["F"] = np.column_stack([-acc, np.nan_to_num(lat, nan=1e9), size])

    problem = _P(n_var=space.genome_len, n_obj=3, xl=lo, xu=upper - 1, vtype=int)
    problem.to_genome, problem.allowed, problem.pair_genes = to_genome, allowed, pair_genes
    return problem


def search_front(space: SearchSpace, predictor: Predictor, table: LatencyModel, pop: int = 500, gens: int = 200,
                 seed: int = 0, progress=None, bits: Sequence[int] | None = None) -> dict[str, Any]:
    """Run NSGA-II and return the non-dominated set: genomes and objectives."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize
    from pymoo.core.callback import Callback
    from pymoo.core.duplicate import DuplicateElimination

    problem = make_problem(space, predictor, table, bits)
    rng = np.random.default_rng(seed)
    x0 = IntegerRandomSampling()(problem, pop, random_state=rng).get("X").astype(np.int64)
    widths = sorted({space.bit_pairs[i].w for i in problem.allowed} & {space.bit_pairs[i].a for i in problem.allowed})
    res_ok = [r for r in space.resolutions if r in table.resolutions]
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

    class _Exact(DuplicateElimination):
        """Integer genomes: a set of rows, not pymoo's O(n^2) float distances (which dominate a large run)."""

        def _do(self, pop, other, is_duplicate):
            seen = set() if other is None else {r.tobytes() for r in np.rint(other.get("X")).astype(np.int64)}
            for i, r in enumerate(np.rint(pop.get("X")).astype(np.int64)):
                key = r.tobytes()
                is_duplicate[i] = key in seen
                seen.add(key)
            return is_duplicate

    algo = NSGA2(pop_size=pop, sampling=x0, crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
                 mutation=PM(eta=20, vtype=float, repair=RoundingRepair()), eliminate_duplicates=_Exact())
    t0 = time.perf_counter()
    res = minimize(problem, algo, ("n_gen", gens), seed=seed, verbose=False, callback=_CB())
    g = problem.to_genome(res.X)
    g, idx = np.unique(g, axis=0, return_index=True)
    f = np.atleast_2d(res.F)[idx]
    priced = np.isfinite(table.predict_many(g))  # a genome the table has no entry for is no answer
    if not priced.any():
        raise SearchError("the latency table lacks entries for every subnet the search reached: profile the "
                          "missing resolutions or precisions (hw/profile.py)")
    g, f = g[priced], f[priced]
    order = np.argsort(f[:, 1])
    front = {"genomes": g[order], "top1": -f[order, 0], "latency_ms": f[order, 1], "bytes": f[order, 2],
             "seconds": time.perf_counter() - t0, "pop": pop, "gens": gens}
    if isinstance(table, Fastest):
        front.update(table.configurations(front["genomes"]))
    return front


def saved_or_search(base: Path, load: Callable[[], tuple[Predictor, LatencyModel]], pop: int, gens: int,
                    seed: int = 0, bits: Sequence[int] | None = None, progress=None,
                    force: bool = False) -> tuple[ParetoSet, dict | None]:
    """The Pareto set saved at ``base`` (see :func:`pareto_base`) or, if there is none (or
    ``force``), a new NSGA-II search over ``load()``'s predictor and latency model (a table, or
    :class:`Fastest` over several). Loading is deferred so that answering from a saved set imports
    and reads nothing heavy. Returns the set and the search's front (None when it was read from
    disk); the caller saves it with its budget."""
    if base.with_suffix(".jsonl").exists() and not force:
        return ParetoSet.load(base), None
    predictor, latency = load()
    if predictor.meta.get("space_hash") != latency.space.hash:
        raise SearchError(f"the latency table is for space {latency.space.name!r} ({latency.space.hash}), "
                          f"the predictor for {predictor.meta.get('space_hash')}")
    front = search_front(latency.space, predictor, latency, pop, gens, seed, progress, bits)
    return ParetoSet.from_front(latency.space, front, latency.target_name, latency.runtime), front


def per_configuration(pset: ParetoSet, latency_ms: float, margin: float, tables: dict[str, tuple[Path, dict]],
                      chosen: dict) -> list[dict]:
    """What each configuration searched (``{name: (table path, runtime)}``) offers under the
    budget: the most accurate subnet of the set on that configuration's table (at this host's
    speed now), or nothing; ``chosen``: the row shipped. Says why the configuration shipped is
    the one: the most accurate, the faster among equals."""
    limit = latency_ms / (1.0 + margin)
    out = []
    for name, (path, runtime) in tables.items():
        f = pset.factors.get(name, 1.0)
        on = [(r, (r["latency_by_table"].get(name) or np.nan) * f if "latency_by_table" in r else
               r["latency_ms"] if r.get("table", name) == name else np.nan) for r in pset.rows]
        ok = [(r, ms) for r, ms in on if ms <= limit]
        if not ok:
            out.append({"table": str(path), "chosen": False, "runtime": runtime, "top1": None})
            continue
        r, ms = min(ok, key=lambda t: (-t[0]["top1"], t[1]))
        out.append({"table": str(path), "chosen": name == chosen.get("table"), "runtime": runtime, "top1": r["top1"],
                    "latency_ms": ms, "hash": r["hash"]})
    return out


def describe_deployments(candidates: Sequence[dict]) -> str:
    """:func:`per_configuration`'s candidates in one line: why this configuration."""
    return "; ".join(f"{Path(c['table']).stem} " + (f"{c['top1']:.2f}% at {c['latency_ms']:.3f} ms"
                                                    + (" (chosen)" if c["chosen"] else "")
                                                    if c["top1"] is not None else "nothing under the budget")
                     for c in candidates)
