"""Per-subnet calibration of BatchNorm statistics and activation-quantizer ranges.

Like OFA's BN re-calibration, extended to BatchQuant's ranges as in QFA: the subnet runs in
batch-statistics mode over N training images at its own resolution, and each BatchNorm /
quantizer writes the sample-weighted average of its per-batch statistics into its running
buffers. Only buffers change; no parameter (shared weight) is touched.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn as nn

from qfa.nn.data import resize
from qfa.nn.quant import Calibrated
from qfa.core.space import SubnetSpec
from qfa.nn.supernet import Subnet, Supernet

__all__ = ["calibrate", "DEFAULT_CALIB_IMAGES"]

# Large enough that which images are drawn hardly moves a low-bit subnet's accuracy (2,000 did:
# docs/results.md, "Predictor"; bench/label_noise.py measures it). Exports, `qfa eval` and
# predictor labels all calibrate this way.
DEFAULT_CALIB_IMAGES = 8000


@torch.no_grad()
def calibrate(net: Supernet | Subnet, spec: SubnetSpec, batches: Iterable[torch.Tensor],
              n_images: int = DEFAULT_CALIB_IMAGES) -> int:
    """Calibrate ``spec`` in ``net`` on up to ``n_images`` images drawn from ``batches``.

    ``batches`` yields NCHW image tensors (labels, if any, are ignored); each is resized to
    the spec's resolution. Returns the number of images used. The previous train/eval mode
    and active subnet are restored.
    """
    mods = [m for m in net.modules() if isinstance(m, Calibrated)]
    was_training = net.training
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    device = next(net.parameters()).device
    seen = 0
    net.calibrated_for = None
    try:
        net.train()  # batch statistics everywhere ...
        for m in dropouts:
            m.eval()  # ... but no dropout
        for m in mods:
            m.begin_calibration()
        with net.active(spec) if isinstance(net, Supernet) else contextlib.nullcontext():  # a Subnet is its spec
            for batch in batches:
                if isinstance(batch, (tuple, list)):
                    batch = batch[0]
                batch = batch[: n_images - seen].to(device)
                net(resize(batch, spec.resolution))
                seen += batch.shape[0]
                if seen >= n_images:
                    break
    finally:
        for m in mods:
            m.end_calibration()
        net.train(was_training)
    if seen == 0:
        raise ValueError("calibration received no images")
    net.calibrated_for = spec.hash
    return seen
