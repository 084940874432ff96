"""Calibrate-then-measure: top-1 of subnets on a dataset (no retraining, ever)."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from qfa.nn.calibrate import DEFAULT_CALIB_IMAGES, calibrate
from qfa.nn.data import ImageSet, resize
from qfa.core.space import SubnetSpec
from qfa.nn.supernet import Supernet

__all__ = ["calib_batches", "calib_seeds", "accuracy", "calibrate_best", "evaluate_specs", "score", "CALIB_SEED",
           "ModelFor"]

CALIB_SEED = 1234

# After calibration, the model a subnet is scored as: None scores the supernet's fake-quant
# forward; export.deploy gives one that scores it as deployed (what the .tflite computes).
ModelFor = Callable[[Supernet, SubnetSpec], torch.nn.Module]


def calib_seeds(draws: int) -> list[int]:
    """The seeds of the first ``draws`` calibration draws (the first is the default draw)."""
    return [CALIB_SEED + 97 * k for k in range(max(draws, 1))]


def calib_batches(train: ImageSet, n_images: int, batch: int = 64, seed: int = CALIB_SEED,
                  workers: int = 0) -> Iterator[torch.Tensor]:
    """A fixed random subset of ``n_images`` training images (with the training augmentation,
    as QFA calibrates), in batches."""
    pos = np.random.default_rng(seed).permutation(len(train))[:n_images]
    sub = train.subset(np.sort(pos))
    sub.set_epoch(0)
    for x, _ in DataLoader(sub, batch_size=batch, num_workers=workers):
        yield x


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: ImageSet, resolution: int, n_images: int | None = None,
             device: str | torch.device = "cpu", batch: int = 128, workers: int = 0) -> float:
    """Top-1 (%) of ``model`` (eval mode, calibrated) on the first ``n_images`` of ``data``
    (batch 128: big batches cost more in page faults than they save on a CPU)."""
    if n_images is not None and n_images < len(data):
        data = data.subset(np.arange(n_images))
    correct = total = 0
    for x, y in DataLoader(data, batch_size=batch, num_workers=workers):
        out = model(resize(x.to(device), resolution))
        correct += int((out.argmax(1).cpu() == y).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)


def calibrate_best(net: Supernet, spec: SubnetSpec, data: dict[str, ImageSet],
                   calib_images: int = DEFAULT_CALIB_IMAGES,
                   draws: int = 1, select_images: int | None = None, device: str | torch.device = "cpu",
                   on_draw: Callable[[int, float], None] | None = None,
                   model_for: ModelFor | None = None) -> dict:
    """Calibrate ``spec`` on ``calib_images`` training images; with ``draws`` > 1, on each of
    that many random draws, keeping the one with the best top-1 on the held-out split, scored
    as the subnet will be scored (``model_for``: as deployed; the fake-quant model may prefer
    another draw).

    At 2 bits, which images calibrate a subnet moves its top-1, and a draw that is good on the
    held-out split tends to be good on the test set; only training data is used to choose. ``on_draw(seed,
    held-out top-1)`` is called while the net holds each draw's calibration (in eval mode)."""
    seeds = calib_seeds(draws)
    holdout = []
    for seed in seeds:
        calibrate(net, spec, calib_batches(data["train"], calib_images, seed=seed), calib_images)
        if len(seeds) > 1:
            holdout.append(score(net, spec, data["holdout"], select_images, device, model_for))
            if on_draw:
                on_draw(seed, holdout[-1])
    info = {"images": calib_images, "seed": seeds[0], "draws": len(seeds)}
    if holdout:
        best = int(np.argmax(holdout))
        info.update(seed=seeds[best], holdout_top1=holdout[best], holdout_top1_draws=holdout)
        if best != len(seeds) - 1:  # calibration is deterministic per draw: redo the chosen one
            calibrate(net, spec, calib_batches(data["train"], calib_images, seed=seeds[best]), calib_images)
    return info


def score(net: Supernet, spec: SubnetSpec, data: ImageSet, n_images: int | None = None,
          device: str | torch.device = "cpu", model_for: ModelFor | None = None) -> float:
    """Top-1 of calibrated ``spec`` on ``data``: its fake-quant forward, or ``model_for``'s model."""
    net.eval()
    if model_for is not None:
        return accuracy(model_for(net, spec), data, spec.resolution, n_images, device)
    with net.active(spec):
        return accuracy(net, data, spec.resolution, n_images, device)


def evaluate_specs(net: Supernet, specs: Sequence[SubnetSpec], data: dict[str, ImageSet],
                   calib_images: int = DEFAULT_CALIB_IMAGES, test_images: int | None = None,
                   device: str | torch.device = "cpu", progress=None, calib_draws: int = 1,
                   model_for: ModelFor | None = None) -> list[dict]:
    """For each spec: calibrate on training images (the best of ``calib_draws`` draws on the
    held-out split), then top-1 on the test set (as ``model_for`` scores it)."""
    rows = []
    for spec in specs:
        cal = calibrate_best(net, spec, data, calib_images, calib_draws, device=device, model_for=model_for)
        top1 = score(net, spec, data["test"], test_images, device, model_for)
        rows.append({"hash": spec.hash, "spec": str(spec), "top1": top1, "calibration": cal})
        if progress:
            progress(rows[-1])
    return rows
