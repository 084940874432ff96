"""Accuracy predictor: labels from the held-out split of the TRAINING set, an MLP on a one-hot
genome (the paper's encoding), numpy inference for search.

Encoding (documented, stable): ``SearchSpace.encode`` gives one integer gene per choice;
each gene becomes a one-hot block of ``genome_upper()[i]`` entries; the genes of inactive
block slots (beyond a stage's depth) are all-zero blocks, so two genomes of the same subnet
encode identically.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .space import FP, BlockSpec, QBits, SearchSpace, SubnetSpec

__all__ = ["onehot", "strata_specs", "collect", "load_rows", "Predictor", "fit", "searched_pairs", "PredictorError"]

FIELDS = ["hash", "spec", "top1", "images", "calib_images", "stratum"]


class PredictorError(ValueError):
    """Unusable predictor data or file."""


def searched_pairs(space: SearchSpace) -> tuple[QBits, ...]:
    """The bit pairs search and predictor data use: those the final training stage trained
    (full precision is excluded: after stage 1 it is no longer trained, and deploys as int8)."""
    return tuple(q for q in space.bit_pairs if q.w != FP and q.a != FP)


def _active_genes(space: SearchSpace, g: np.ndarray) -> np.ndarray:
    ns, dmax = len(space.stages), max(space.depths)
    depth = np.asarray(space.depths)[g[:, 1:1 + ns]]
    slot_active = (np.arange(dmax)[None, None, :] < depth[:, :, None]).reshape(len(g), ns * dmax)
    mask = np.ones(g.shape, bool)
    mask[:, 1 + ns:-4] = np.repeat(slot_active, space.SLOT_GENES, axis=1)
    return mask


def onehot(space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
    g = space.canonical(np.asarray(genomes, dtype=np.int64).reshape(-1, space.genome_len))
    upper = space.genome_upper()
    offsets = np.concatenate([[0], np.cumsum(upper)[:-1]])
    x = np.zeros((len(g), int(upper.sum())), np.float32)
    rows, cols = np.nonzero(_active_genes(space, g))
    x[rows, offsets[cols] + g[rows, cols]] = 1.0
    return x


def strata_specs(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[str, SubnetSpec]]:
    """QFA's predictor sampling: a quarter each of uniform-precision, max-depth and
    max-resolution subnets, the rest fully random (all over the searched bit pairs)."""
    rng = np.random.default_rng(seed)
    pairs = searched_pairs(space)
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


def load_rows(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("top1")]


def collect(net, data: dict, out: Path, n: int, calib_images: int = 500, eval_images: int = 2000,
            seed: int = 0, rank: int = 0, world: int = 1, progress: Callable[[int, int, dict], None] | None = None,
            device: str = "cpu") -> int:
    """Calibrate and evaluate ``n`` stratified specs on the held-out split; append rows to
    ``out`` (CSV, one fsync'd line each); skip specs already there. Rank r of a torchrun world
    takes every world-th spec. Returns the number of rows added."""
    from .calibrate import calibrate
    from .evaluate import accuracy, calib_batches
    done = {r["hash"] for r in load_rows(out)}
    added = 0
    plan = strata_specs(net.space, n, seed)
    for i, (kind, spec) in enumerate(plan):
        if i % world != rank or spec.hash in done:
            continue
        calibrate(net, spec, calib_batches(data["train"], calib_images), calib_images)
        net.eval()
        with net.active(spec):
            top1 = accuracy(net, data["holdout"], spec.resolution, eval_images, device)
        row = {"hash": spec.hash, "spec": spec.dumps(), "top1": f"{top1:.4f}",
               "images": min(eval_images, len(data["holdout"])), "calib_images": calib_images, "stratum": kind}
        new = not out.exists() or out.stat().st_size == 0
        buf = []
        w = csv.DictWriter(_Lines(buf), FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)
        with open(out, "a", newline="") as f:
            f.write("".join(buf))
            f.flush()
            os.fsync(f.fileno())
        done.add(spec.hash)
        added += 1
        if progress:
            progress(i + 1, len(plan), row)
    return added


class _Lines:
    def __init__(self, buf: list) -> None:
        self.buf = buf

    def write(self, s: str) -> None:
        self.buf.append(s)


class Predictor:
    """An MLP (ReLU) held as numpy arrays; ``predict_many(genomes)`` -> top-1 (%)."""

    def __init__(self, weights: list[tuple[np.ndarray, np.ndarray]], mean: float, std: float, meta: dict) -> None:
        self.weights, self.mean, self.std, self.meta = weights, mean, std, meta

    def predict_many(self, space: SearchSpace, genomes: np.ndarray) -> np.ndarray:
        if space.hash != self.meta["space_hash"]:
            raise PredictorError(f"predictor was fitted on space {self.meta['space_hash']}, not {space.hash}")
        h = onehot(space, genomes)
        for i, (w, b) in enumerate(self.weights):
            h = h @ w + b
            if i < len(self.weights) - 1:
                np.maximum(h, 0, out=h)
        return h[:, 0] * self.std + self.mean

    def predict(self, spec: SubnetSpec) -> float:
        return float(self.predict_many(spec.space, spec.space.encode(spec)[None])[0])

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file
        tensors = {f"w{i}": w for i, (w, _) in enumerate(self.weights)} | {f"b{i}": b for i, (_, b) in enumerate(self.weights)}
        meta = {**{k: json.dumps(v) for k, v in self.meta.items()}, "mean": str(self.mean), "std": str(self.std),
                "format": "qfa-predictor/1", "layers": str(len(self.weights))}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)

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
        except FileNotFoundError:
            raise PredictorError(f"predictor not found: {path} (run `qfa predictor fit` first)") from None
        except PredictorError:
            raise
        except Exception as e:  # noqa: BLE001 - safetensors' own error types
            raise PredictorError(f"{path}: unreadable predictor ({type(e).__name__})") from None
        other = {k: json.loads(v) for k, v in meta.items() if k not in ("mean", "std", "format", "layers")}
        return cls(weights, float(meta["mean"]), float(meta["std"]), other)


def fit(space: SearchSpace, rows: Sequence[dict], hidden: int = 400, layers: int = 3, epochs: int = 600,
        val_fraction: float = 0.2, seed: int = 0) -> tuple[Predictor, dict]:
    """Train the MLP on ``rows``; report RMSE / Kendall tau / Spearman rho on held-out subnets."""
    import torch
    from scipy.stats import kendalltau, spearmanr
    if len(rows) < 10:
        raise PredictorError(f"only {len(rows)} labelled subnets: collect at least 10 (qfa predictor collect)")
    specs = [space.parse(r["spec"]) for r in rows]
    g = np.stack([space.encode(s) for s in specs])
    y = np.array([float(r["top1"]) for r in rows], np.float32)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(rows))
    n_val = max(2, int(round(val_fraction * len(rows))))
    val, tr = perm[:n_val], perm[n_val:]
    x = torch.from_numpy(onehot(space, g))
    mean, std = float(y[tr].mean()), float(y[tr].std() + 1e-6)
    t = torch.from_numpy((y - mean) / std)
    torch.manual_seed(seed)
    dims = [x.shape[1]] + [hidden] * layers + [1]
    mods: list[torch.nn.Module] = []
    for i in range(len(dims) - 1):
        mods.append(torch.nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            mods.append(torch.nn.ReLU())
    mlp = torch.nn.Sequential(*mods)
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, tt = x[tr], t[tr]
    for _ in range(epochs):
        for idx in torch.randperm(len(tr)).split(128):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(mlp(xt[idx])[:, 0], tt[idx])
            loss.backward()
            opt.step()
        sched.step()
    lin = [m for m in mlp if isinstance(m, torch.nn.Linear)]
    weights = [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in lin]
    metrics = {"n": len(rows), "n_train": len(tr), "n_val": len(val)}
    pred = Predictor(weights, mean, std, {"space_hash": space.hash, "encoding": "onehot-genome/1"})
    pv = pred.predict_many(space, g[val])
    metrics.update({"rmse": float(np.sqrt(np.mean((pv - y[val]) ** 2))), "kendall_tau": float(kendalltau(pv, y[val])[0]),
                    "spearman_rho": float(spearmanr(pv, y[val])[0]), "val_top1_range": [float(y[val].min()), float(y[val].max())]})
    pred.meta["metrics"] = metrics
    return pred, metrics
