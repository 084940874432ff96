"""Accuracy predictor: labels from the held-out split of the TRAINING set, a ridge regression or
MLP on a one-hot genome (the paper's encoding, plus resolution interactions), numpy inference
for search.

Encoding ``onehot+res+cost/2`` (documented, stable): ``SearchSpace.encode`` gives one integer
gene per choice; each gene becomes a one-hot block of ``genome_upper()[i]`` entries; the genes
of inactive block slots (beyond a stage's depth) are all-zero blocks, so two genomes of the same
subnet encode identically. Then the same one-hot again once per resolution, zero unless the
subnet runs at that resolution: what a choice costs depends on the resolution, which one
coefficient per gene cannot express. Appended: log
MACs, log BitOPs and log parameters from the cost model, standardised with the training set's
mean and std (stored with the predictor). ``onehot+cost/1`` (no resolution copies) for spaces
of more than 4 resolutions. The ``split+...`` variants give each (w, a) gene two blocks, weight
bits and activation bits, instead of one per pair: what a 2-bit activation costs hardly depends
on the weight bits beside it, and fewer features are learned from the same labels. Neither wins
everywhere, so ``fit`` chooses by cross-validation.

Target: the model is fitted to ``-1/(100 - top1)``, not to top-1. Quantization errors compound:
a low-bit layer costs more points in a subnet that already errs more, and an additive model of
the reciprocal error rate fits that better than one of top-1.

Model: encoding x model chosen by 5-fold cross-validated Kendall tau on the training subnets,
the models being ridge regressions (a one-layer network) and a ReLU MLP. How each encoding,
response and model fares: ``python bench/predictor.py`` and docs/results.md.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from qfa.core.fileio import append_csv_row, atomic_write
from qfa.core.space import FP, BlockSpec, QBits, SearchSpace, SubnetSpec
from export.targets import DEFAULT_RUNTIME, FAKE_QUANT

__all__ = ["ENCODING", "ENCODINGS", "RESPONSES", "features", "onehot", "split_onehot", "strata_specs", "collect", "distributed_env",
           "load_rows", "scoring_of", "scoring_name", "label", "Predictor", "models", "default_encodings", "fit",
           "searched_pairs", "searches_fp", "PredictorError"]

FIELDS = ["hash", "spec", "top1", "images", "calib_images", "stratum", "scored"]


def scoring_of(rows: Sequence[dict]) -> str:
    """How a label file's subnets were scored: "fake-quant" or the target they were scored as
    deployed for (one file, one scoring: a mix is refused where it would arise)."""
    kinds = {r.get("scored") or FAKE_QUANT for r in rows}  # files from before the field: fake-quant
    if len(kinds) > 1:
        raise PredictorError(f"labels scored in several ways ({', '.join(sorted(kinds))}): use one label file per scoring")
    return kinds.pop() if kinds else FAKE_QUANT


def scoring_name(scored: str, delegate: str = DEFAULT_RUNTIME["delegate"]) -> str:
    """How a label file names its scoring: the target, and the runtime configuration where it is
    not the default (``tflite-int8@builtin``): the builtin kernels round otherwise than XNNPACK,
    up to ~1 point apart on one subnet, so their labels are not mixed with XNNPACK's."""
    return scored if scored == FAKE_QUANT or delegate == DEFAULT_RUNTIME["delegate"] else f"{scored}@{delegate}"


class PredictorError(ValueError):
    """Unusable predictor data or file."""


def searched_pairs(space: SearchSpace, fp: bool = False) -> tuple[QBits, ...]:
    """The bit pairs search and predictor data use. Full precision only with ``fp``: where the
    final training stage trained it and the target deploys it in float (an int8 target
    approximates FP convs on an 8-bit grid, which no training saw)."""
    return tuple(q for q in space.bit_pairs if fp or (q.w != FP and q.a != FP))


def searches_fp(net, scored: str) -> bool:
    """Whether labels scored for ``scored`` include full precision: the target deploys FP convs
    in float and the supernet's final training stage trained FP (``Supernet.final_bits``)."""
    from export.targets import TARGETS
    return scored in TARGETS and TARGETS[scored].float_io and FP in getattr(net, "final_bits", ())


_COST_MODELS: dict[str, object] = {}


def cost_features(space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
    from qfa.core.cost import CostModel
    model = _COST_MODELS.get(space.hash)
    if model is None:  # building the lookup tables takes 0.2 s for the paper space: once per space
        model = _COST_MODELS[space.hash] = CostModel(space)
    c = model(space.layout.rows(genomes))
    return np.column_stack([np.log(c["macs"]), np.log(c["bitops"]), np.log(c["params"])]).astype(np.float32)


def onehot(space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
    """One block per gene (the paper's genome encoding)."""
    g = space.canonical(genomes)
    upper = space.genome_upper()
    offsets = np.concatenate([[0], np.cumsum(upper)[:-1]])
    x = np.zeros((len(g), int(upper.sum())), np.float32)
    rows, cols = np.nonzero(space.active_genes(g))
    x[rows, offsets[cols] + g[rows, cols]] = 1.0
    return x


def split_onehot(space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
    """Architecture genes one block each; each (w, a) gene a weight-bits and an activation-bits
    block."""
    g = space.canonical(genomes)
    prec, nb = space.layout.pair_genes, len(space.bits)
    w_of = np.array([space.bits.index(q.w) for q in space.bit_pairs])
    a_of = np.array([space.bits.index(q.a) for q in space.bit_pairs])
    width = np.where(prec, 2 * nb, space.genome_upper())
    offsets = np.concatenate([[0], np.cumsum(width)[:-1]])
    x = np.zeros((len(g), int(width.sum())), np.float32)
    active = space.active_genes(g)
    rows, cols = np.nonzero(active & ~prec)
    x[rows, offsets[cols] + g[rows, cols]] = 1.0
    rows, cols = np.nonzero(active & prec)
    x[rows, offsets[cols] + w_of[g[rows, cols]]] = 1.0
    x[rows, offsets[cols] + nb + a_of[g[rows, cols]]] = 1.0
    return x


ENCODING = "onehot+res+cost/2"
ENCODINGS: dict[str, tuple[Callable[[SearchSpace, np.ndarray], np.ndarray], bool]] = {
    "onehot+cost/1": (onehot, False),  # name -> (gene blocks, one copy per resolution?)
    ENCODING: (onehot, True),
    "split+cost/3": (split_onehot, False),
    "split+res+cost/3": (split_onehot, True),
}


def features(space: SearchSpace, genomes: np.ndarray, mu: np.ndarray, sd: np.ndarray,
             encoding: str = ENCODING) -> np.ndarray:
    if encoding not in ENCODINGS:
        raise PredictorError(f"unknown predictor encoding {encoding!r}")
    blocks, by_resolution = ENCODINGS[encoding]
    g = space.layout.rows(genomes)
    x = blocks(space, g)
    parts = [x]
    if by_resolution:
        res = g[:, 0]
        parts += [x * (res == r)[:, None] for r in range(len(space.resolutions))]
    parts.append((cost_features(space, g) - mu) / sd)
    return np.concatenate(parts, axis=1, dtype=np.float32)


def _inverse_error(top1: np.ndarray) -> np.ndarray:
    return -1.0 / np.maximum(100.0 - top1, 1e-2)


def _from_inverse_error(t: np.ndarray) -> np.ndarray:
    return 100.0 + 1.0 / np.clip(t, -1e2, -1e-2)  # outputs past the range: 0% and 99.99%


RESPONSES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "top1": (lambda v: v, lambda v: v),  # name -> (from top-1 to the target, back)
    "inverse_error": (_inverse_error, _from_inverse_error),
}


def strata_specs(space: SearchSpace, n: int, seed: int = 0, fp: bool = False) -> list[tuple[str, SubnetSpec]]:
    """QFA's predictor sampling: a quarter each of uniform-precision, max-depth and
    max-resolution subnets, the rest fully random (all over the searched bit pairs)."""
    rng = np.random.default_rng(seed)
    pairs = searched_pairs(space, fp)
    bits = sorted({q.w for q in pairs})
    out = []
    for i in range(n):
        s = space.sample(rng, bits=bits)
        kind = ("uniform", "max_depth", "max_res", "random")[i % 4]
        if kind == "uniform":
            s = s.with_bits(int(rng.choice(bits)))
        elif kind == "max_depth":
            dmax = max(space.depths)
            def block(si: int) -> BlockSpec:
                q = lambda: pairs[rng.integers(len(pairs))]  # noqa: E731
                return BlockSpec(int(rng.choice(space.kernels)), int(rng.choice(space.expands)), (q(), q(), q()))
            s = s.replace(stages=tuple(st + tuple(block(si) for _ in range(dmax - len(st)))
                                       for si, st in enumerate(s.stages)))
        elif kind == "max_res":
            s = s.replace(resolution=max(space.resolutions))
        out.append((kind, s))
    return out


def distributed_env() -> tuple[int, int, str]:
    """(rank, world size, device) of this process: under torchrun each rank labels its own share
    of the subnets, on its own GPU where there is one."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and os.environ.get("LOCAL_RANK") is not None:
        import torch
        if torch.cuda.is_available():
            return rank, world, f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return rank, world, "cpu"


def load_rows(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("top1")]
    except (UnicodeDecodeError, csv.Error) as e:
        raise PredictorError(f"{p}: not a label CSV ({type(e).__name__})") from None
    for n, r in enumerate(rows, start=2):
        try:
            ok = 0.0 <= float(r["top1"]) <= 100.0 and isinstance(r.get("spec"), str)
        except ValueError:
            ok = False
        if not ok:
            raise PredictorError(f"{p}: row {n}: top1 must be a percentage and spec a spec, got {r.get('top1')!r:.40}")
    return rows


def label(net, spec: SubnetSpec, data: dict, calib_images: int, scored: str = "tflite-int8",
          delegate: str = "xnnpack", calib_draws: int = 1, range_images: int | None = None,
          eval_images: int | None = None, device: str = "cpu") -> float:
    """Held-out top-1 (%) of ``spec`` calibrated as an export calibrates it (``calib_images``
    training images, the best of ``calib_draws`` draws; 8-bit ranges from ``range_images``,
    default ``min(512, calib_images)``) and scored as ``scored`` says: as deployed for that
    target under ``delegate`` (what its .tflite computes), or "fake-quant"."""
    from qfa.nn.evaluate import calibrate_best, score
    model_for = None
    if scored != FAKE_QUANT:
        from export.deploy import RANGE_IMAGES, deployed_model
        n_range = range_images or min(RANGE_IMAGES, calib_images)
        model_for = lambda net_, spec_: deployed_model(net_, spec_, data, scored, n_range, delegate)  # noqa: E731
    calibrate_best(net, spec, data, calib_images, calib_draws, device=device, model_for=model_for)
    return score(net, spec, data["holdout"], eval_images, device, model_for)


def collect(net, data: dict, out: Path, n: int, calib_images: int | None = None,
            eval_images: int | None = None, seed: int = 0, rank: int = 0, world: int = 1,
            progress: Callable[[int, int, dict], None] | None = None, device: str = "cpu",
            scored: str = "tflite-int8", delegate: str = "xnnpack") -> int:
    """Calibrate and evaluate ``n`` stratified specs on the held-out split (all of it by
    default); append rows to ``out`` (CSV, one fsync'd line each); skip specs already there.
    Rank r of a torchrun world takes every world-th spec. Returns the number of rows added.

    ``scored``: a target (each subnet scored as deployed for it: what its .tflite computes
    under ``delegate``) or "fake-quant" (the PyTorch model). With the default calibration, the one an export uses, a
    label is the held-out top-1 of the subnet as it ships."""
    from qfa.nn.calibrate import DEFAULT_CALIB_IMAGES
    calib_images = calib_images or DEFAULT_CALIB_IMAGES
    n_eval = min(eval_images or len(data["holdout"]), len(data["holdout"]))
    rows = load_rows(out)
    other = {int(r["calib_images"]) for r in rows if r.get("calib_images")} - {calib_images}
    if other:  # one file, one labelling: a predictor fitted on a mix learns the calibration size
        raise PredictorError(f"{out} holds labels calibrated on {sorted(other)} images, not {calib_images}; "
                             f"pass --calib-images {max(other)} to extend it, or another --data-csv")
    name = scoring_name(scored, delegate)
    have = scoring_of(rows) if rows else name
    if have != name:
        raise PredictorError(f"{out} holds labels scored as {have}, not {name}; score them the same way to extend "
                             f"it, or use another --data-csv")
    fields = FIELDS if not rows or "scored" in rows[0] else FIELDS[:-1]  # extend a file in its own columns
    done = {r["hash"] for r in rows}
    added = 0
    plan = strata_specs(net.space, n, seed, searches_fp(net, scored))
    for i, (kind, spec) in enumerate(plan):
        if i % world != rank or spec.hash in done:
            continue
        top1 = label(net, spec, data, calib_images, scored, delegate, eval_images=eval_images, device=device)
        row = {"hash": spec.hash, "spec": spec.dumps(), "top1": f"{top1:.4f}", "images": n_eval,
               "calib_images": calib_images, "stratum": kind, "scored": name}
        append_csv_row(out, fields, row)
        done.add(spec.hash)
        added += 1
        if progress:
            progress(i + 1, len(plan), row)
    return added


class Predictor:
    """An MLP (ReLU) held as numpy arrays; ``predict_many(genomes)`` -> top-1 (%).

    ``link`` (knots x, y): a monotone map from the model's output to top-1, fitted on
    out-of-fold predictions. Increasing between its knots, so it keeps every ranking there,
    and flat beyond them: a search drives an additive model to subnets it scores past every
    label, and a flat top predicts the best accuracy seen instead."""

    def __init__(self, weights: list[tuple[np.ndarray, np.ndarray]], mean: float, std: float, meta: dict,
                 link: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.weights, self.mean, self.std, self.meta, self.link = weights, mean, std, meta, link

    def predict_many(self, space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
        if space.hash != self.meta["space_hash"]:
            raise PredictorError(f"predictor was fitted on space {self.meta['space_hash']}, not {space.hash}")
        x = features(space, genomes, np.asarray(self.meta["cost_mu"]), np.asarray(self.meta["cost_sd"]),
                     self.meta.get("encoding", "onehot+cost/1"))
        from_target = RESPONSES[self.meta.get("target", "top1")][1]  # files before targets: top-1
        raw = from_target(_forward(self.weights, x) * self.std + self.mean)
        return raw if self.link is None else np.interp(raw, *self.link)

    def predict(self, spec: SubnetSpec) -> float:
        return float(self.predict_many(spec.space, spec.space.encode(spec)[None])[0])

    def save(self, path: Path) -> None:
        from safetensors.numpy import save
        tensors = {f"w{i}": w for i, (w, _) in enumerate(self.weights)} | {f"b{i}": b for i, (_, b) in enumerate(self.weights)}
        if self.link is not None:
            tensors |= {"link_x": self.link[0], "link_y": self.link[1]}
        meta = {**{k: json.dumps(v) for k, v in self.meta.items()}, "mean": str(self.mean), "std": str(self.std),
                "format": "qfa-predictor/1", "layers": str(len(self.weights))}
        atomic_write(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Predictor":
        from safetensors import safe_open
        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
                if meta.get("format") != "qfa-predictor/1":
                    raise PredictorError(f"{path}: not a qfa predictor file")
                n = int(meta["layers"])
                weights = [(f.get_tensor(f"w{i}"), f.get_tensor(f"b{i}")) for i in range(n)]
                link = (f.get_tensor("link_x"), f.get_tensor("link_y")) if "link_x" in f.keys() else None
        except FileNotFoundError:
            raise PredictorError(f"predictor not found: {path} (run `qfa predictor fit` first)") from None
        except PredictorError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors' own error types
            raise PredictorError(f"{path}: unreadable predictor ({type(e).__name__})") from None
        try:
            other = {k: json.loads(v) for k, v in meta.items() if k not in ("mean", "std", "format", "layers")}
            return cls(weights, float(meta["mean"]), float(meta["std"]), other, link)
        except (ValueError, KeyError, TypeError) as e:
            raise PredictorError(f"{path}: unreadable predictor metadata ({type(e).__name__})") from None


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> list[tuple[np.ndarray, np.ndarray]]:
    m = y.mean()
    w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ (y - m))
    return [(w[:, None].astype(np.float32), np.array([m], np.float32))]


def _mlp(x: np.ndarray, y: np.ndarray, hidden: int, layers: int, epochs: int, seed: int,
         weight_decay: float = 1e-2) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch
    torch.manual_seed(seed)
    dims = [x.shape[1]] + [hidden] * layers + [1]
    mods: list[torch.nn.Module] = []
    for i in range(len(dims) - 1):
        mods.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            mods.append(torch.nn.ReLU())
    mlp = torch.nn.Sequential(*mods)
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-3, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, tt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            torch.nn.functional.mse_loss(mlp(xt[idx])[:, 0], tt[idx]).backward()
            opt.step()
        sched.step()
    return [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
            for m in mlp if isinstance(m, torch.nn.Linear)]


def _forward(weights, x: np.ndarray) -> np.ndarray:
    h = x
    for i, (w, b) in enumerate(weights):
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    return h[:, 0]


def models(hidden: int = 256, layers: int = 2, epochs: int = 150,
           seed: int = 0) -> dict[str, Callable[[np.ndarray, np.ndarray], list]]:
    """The candidates ``fit`` chooses among: name -> (features, standardised top-1) -> weights."""
    out = {f"ridge(lambda={lam})": (lambda xx, yy, lam=lam: _ridge(xx, yy, lam))
           for lam in (3.0, 10.0, 30.0, 100.0, 300.0)}
    out[f"mlp({layers}x{hidden})"] = lambda xx, yy: _mlp(xx, yy, hidden, layers, epochs, seed)
    return out


def _isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: knots (block mean x, block mean y) of the least-squares
    non-decreasing fit of y on x; block means of y strictly increase."""
    order = np.argsort(x, kind="stable")
    blocks: list[list[float]] = []  # [sum x, sum y, count]
    for xi, yi in zip(x[order], y[order]):
        blocks.append([xi, yi, 1.0])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            last = blocks.pop()
            blocks[-1] = [a + b for a, b in zip(blocks[-1], last)]
    b = np.array(blocks)
    return b[:, 0] / b[:, 2], b[:, 1] / b[:, 2]


def default_encodings(space: SearchSpace) -> tuple[str, ...]:
    """What ``fit`` chooses among: with up to 4 resolutions the resolution copies; with more
    (paper: 25) a copy per resolution would multiply the features (and the search's cost) by
    that many."""
    if len(space.resolutions) <= 4:
        return "onehot+res+cost/2", "split+res+cost/3"
    return "onehot+cost/1", "split+cost/3"


def fit(space: SearchSpace, rows: Sequence[dict], hidden: int = 256, layers: int = 2, epochs: int = 150,
        val_fraction: float = 0.2, seed: int = 0, encodings: Sequence[str] | None = None,
        target: str = "inverse_error") -> tuple[Predictor, dict]:
    """Choose (encoding x model, by 5-fold CV tau on the training subnets) and train the
    predictor on ``rows``; report RMSE / Kendall tau / Spearman rho on held-out subnets (never
    used for training or any choice). ``target``: a key of RESPONSES, what the model is fitted to."""
    to_target, from_target = RESPONSES[target]
    from scipy.stats import kendalltau, spearmanr
    if len(rows) < 10:
        raise PredictorError(f"only {len(rows)} labelled subnets: collect at least 10 (qfa predictor collect)")
    specs = [space.parse(r["spec"]) for r in rows]
    g = np.stack([space.encode(s) for s in specs])
    y = np.array([float(r["top1"]) for r in rows], np.float64)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(rows))
    n_val = max(2, int(round(val_fraction * len(rows))))
    val, tr = perm[:n_val], perm[n_val:]
    cf = cost_features(space, g[tr])
    mu, sd = cf.mean(0), cf.std(0) + 1e-6
    xs = {enc: features(space, g, mu, sd, enc) for enc in (encodings or default_encodings(space))}
    u = to_target(y)
    mean, std = float(u[tr].mean()), float(u[tr].std() + 1e-12)
    t = (u - mean) / std
    candidates = models(hidden, layers, epochs, seed)
    folds = np.array_split(rng.permutation(tr), 5) if len(tr) >= 25 else [tr[: len(tr) // 2]]
    cv, oof = {}, {}
    for enc, x in xs.items():
        for name, make in candidates.items():
            key = (enc, name)
            taus, oof[key] = [], np.full(len(y), np.nan)
            for f in folds:
                rest = np.setdiff1d(tr, f)
                oof[key][f] = from_target(_forward(make(x[rest], t[rest]), x[f]) * std + mean)
                taus.append(kendalltau(oof[key][f], y[f])[0])
            cv[key] = float(np.nanmean(taus))
    enc, best = max(cv, key=cv.get)
    weights = candidates[best](xs[enc][tr], t[tr])
    meta = {"space_hash": space.hash, "scored": scoring_of(rows), "encoding": enc, "target": target,
            "fp": any(q.w == FP for s in specs for q in s.all_bits()), "cost_mu": mu.tolist(),
            "cost_sd": sd.tolist(), "model": best, "cv_kendall_tau": {f"{m} on {e}": v for (e, m), v in cv.items()}}
    seen = ~np.isnan(oof[enc, best])
    pred = Predictor(weights, mean, std, meta, _isotonic(oof[enc, best][seen], y[seen]))
    pv = pred.predict_many(space, g[val])
    metrics = {"n": len(rows), "n_train": len(tr), "n_val": len(val), "model": best, "encoding": enc,
               "target": target, "rmse": float(np.sqrt(np.mean((pv - y[val]) ** 2))),
               "kendall_tau": float(kendalltau(pv, y[val])[0]), "spearman_rho": float(spearmanr(pv, y[val])[0]),
               "val_top1_range": [float(y[val].min()), float(y[val].max())]}
    pred.meta["metrics"] = metrics
    return pred, metrics
