"""One QFA training step: the sandwich of subnets, distillation, accumulated gradients.

Shared by the trainer and ``bench/train_step.py``. Nothing here reads a value back to the host:
the summed loss stays a device tensor until the caller logs it.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from qfa.nn.data import resize
from qfa.core.space import SubnetSpec
from qfa.nn.supernet import Subnet, Supernet

__all__ = ["SandwichStep", "soft_cross_entropy", "param_groups"]


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(1).mean()


def param_groups(net: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv weights and kernel transforms only: not on BN, biases or quantizer scalars."""
    decay, no_decay = [], []
    for p in net.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class SandwichStep:
    """Forward/backward every subnet of a sandwich on one batch, accumulating gradients.

    Args:
        net: the supernet (``model`` may wrap it in DistributedDataParallel).
        teacher: frozen float teacher; None means in-place distillation from the first
            (max) subnet of the sandwich, used while training the float supernet itself.
        kd_ratio, label_smoothing: loss = CE_ls(out, y) + kd_ratio * soft-CE(out, teacher).
        amp: bf16 autocast (GPU).
        deploy_quant: train with the int8 file's other 8-bit tensors quantized
            (:attr:`Supernet.deploy_quant`), for this step only.
    """

    def __init__(self, net: Supernet, model: nn.Module | None = None, teacher: Subnet | None = None,
                 kd_ratio: float = 1.0, label_smoothing: float = 0.1, amp: bool = False,
                 channels_last: bool = False, deploy_quant: bool = False) -> None:
        self.net, self.model, self.teacher = net, model or net, teacher
        self.kd_ratio, self.label_smoothing = kd_ratio, label_smoothing
        self.amp, self.channels_last, self.deploy_quant = amp, channels_last, deploy_quant

    def _autocast(self, device: torch.device):
        if self.amp and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, x: torch.Tensor, y: torch.Tensor, specs: Sequence[SubnetSpec]) -> torch.Tensor:
        """Accumulate gradients of all ``specs``; returns the summed loss (a device tensor)."""
        self.net.deploy_quant = self.deploy_quant
        try:
            return self._step(x, y, specs)
        finally:
            self.net.deploy_quant = False  # calibration and evaluation run the trained model

    def _step(self, x: torch.Tensor, y: torch.Tensor, specs: Sequence[SubnetSpec]) -> torch.Tensor:
        total = torch.zeros((), device=x.device)
        soft_by_res: dict[int, torch.Tensor] = {}
        ddp = hasattr(self.model, "no_sync")
        for i, spec in enumerate(specs):
            xr = resize(x, spec.resolution)
            if self.channels_last:
                xr = xr.contiguous(memory_format=torch.channels_last)
            soft = None
            if self.kd_ratio > 0 and self.teacher is not None:
                if spec.resolution not in soft_by_res:
                    with torch.no_grad(), self._autocast(x.device):
                        soft_by_res[spec.resolution] = F.softmax(self.teacher(xr).float(), dim=1)
                soft = soft_by_res[spec.resolution]
            elif self.kd_ratio > 0 and i > 0:
                soft = soft_by_res.get(-1)
            sync = contextlib.nullcontext() if not ddp or i == len(specs) - 1 else self.model.no_sync()
            with sync:
                self.net.set_active(spec)
                with self._autocast(x.device):
                    out = self.model(xr).float()
                loss = F.cross_entropy(out, y, label_smoothing=self.label_smoothing)
                if soft is not None:
                    loss = loss + self.kd_ratio * soft_cross_entropy(out, soft)
                loss.backward()
            if self.teacher is None and i == 0:  # in-place distillation target: the max subnet
                soft_by_res[-1] = F.softmax(out.detach(), dim=1)
            total = total + loss.detach()
        return total
