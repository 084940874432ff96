"""Weight-owning elastic primitives: each holds one max-size tensor and slices it per call.

The same classes, built at exactly one subnet's sizes, are the layers of an extracted subnet
(``qfa.nn.supernet.extract``): there is one forward path, so a subnet and the supernet compute the same
arithmetic. Sizes and precision arrive as call arguments; no module stores an "active" state.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from qfa.nn.quant import (Calibrated, LSQWeight, QuantBank, deploy_quant, deploy_quant_unit, deploy_quant_weight,
                          make_act_quantizer)
from qfa.core.space import FP, QBits

__all__ = ["ACTIVATIONS", "ElasticBatchNorm2d", "ElasticConv2d"]

ACTIVATIONS = {
    None: lambda x: x,
    "relu": F.relu,
    "hswish": F.hardswish,
    "hsigmoid": F.hardsigmoid,
}


class ElasticBatchNorm2d(Calibrated):
    """BatchNorm over the leading channels of a max-size layer.

    Training and calibration normalise with batch statistics (running buffers are never
    updated by training, as in QFA); calibration averages them into the running buffers.
    """

    def __init__(self, max_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(max_channels))
        self.bias = nn.Parameter(torch.zeros(max_channels))
        self.register_buffer("running_mean", torch.zeros(max_channels))
        self.register_buffer("running_var", torch.ones(max_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        w, b = self.weight[:c], self.bias[:c]
        if self.training or self.calibrating:
            if self.calibrating:
                xd = x.detach()
                self._accumulate(x.shape[0], mean=xd.mean((0, 2, 3)), sq=(xd * xd).mean((0, 2, 3)))
            return F.batch_norm(x, None, None, w, b, True, 0.0, self.eps)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], w, b, False, 0.0, self.eps)

    def _finish(self, means: dict[str, torch.Tensor]) -> None:
        c = means["mean"].shape[0]
        var = (means["sq"] - means["mean"] ** 2).clamp(min=0)
        self.running_mean[:c] = means["mean"].to(self.running_mean)
        self.running_var[:c] = var.to(self.running_var)


class ElasticConv2d(nn.Module):
    """Conv (+ BN) (+ activation) with elastic in/out channels, kernel and precision.

    The input activation and the weight are fake-quantized by the bank entry for the call's
    QBits (per kernel size for depthwise). Depthwise kernels shrink by OFA's kernel transform:
    the centre of the larger kernel times a learned (k*k x k*k) matrix, 7 -> 5 -> 3.

    Args:
        max_in, max_out: channel counts of the latent weight.
        kernels: kernel sizes offered (largest first in the latent weight).
        w_bits, a_bits: bitwidths the weight / input-activation banks serve (32 = FP, no module).
        act_signed: whether this conv's input sits on a signed integer grid (QFA's rule by position).
        act_quant: activation quantizer kind ("bq", "minmax", "lsq").
    """

    def __init__(self, max_in: int, max_out: int, kernels: tuple[int, ...] = (1,), stride: int = 1, *,
                 w_bits: tuple[int, ...], a_bits: tuple[int, ...], act_signed: bool, act_quant: str,
                 depthwise: bool = False, bn: bool = True, bias: bool = False, act: str | None = None) -> None:
        super().__init__()
        self.kernels, self.stride, self.depthwise, self.act = tuple(sorted(kernels)), stride, depthwise, act
        kmax = self.kernels[-1]
        self.weight = nn.Parameter(torch.empty(max_out, 1 if depthwise else max_in, kmax, kmax))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        self.bn = ElasticBatchNorm2d(max_out) if bn else None
        for k_big, k_small in zip(self.kernels[:0:-1], self.kernels[-2::-1]):
            self.register_parameter(f"transform_{k_big}to{k_small}",
                                    nn.Parameter(torch.eye(k_small * k_small)))
        bank_kernels = self.kernels if depthwise else None
        make_aq = make_act_quantizer(act_quant)
        self.aq = QuantBank(lambda b, k: make_aq(b, act_signed), a_bits, bank_kernels)
        # LSQ's gradient scale counts the full max-size weight (at this kernel size).
        n_full = self.weight.shape[0] * self.weight.shape[1]
        self.wq = QuantBank(lambda b, k: LSQWeight(b, n_full * (k or kmax) ** 2), w_bits, bank_kernels)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1]}->{self.weight.shape[0]}, kernels={self.kernels}, stride={self.stride}, "
                f"depthwise={self.depthwise}, act={self.act}")

    def kernel_weight(self, kernel: int, out_ch: int) -> torch.Tensor:
        """Latent weight of the leading ``out_ch`` filters at ``kernel`` (transformed if smaller)."""
        w = self.weight[:out_ch]
        k = self.kernels[-1]
        for k_small in reversed(self.kernels[:-1]):
            if k <= kernel:
                break
            start = (k - k_small) // 2
            w = w[:, :, start:start + k_small, start:start + k_small]
            if self.depthwise:  # OFA transforms depthwise kernels only
                t = getattr(self, f"transform_{k}to{k_small}")
                w = F.linear(w.reshape(*w.shape[:2], -1), t).reshape(*w.shape[:2], k_small, k_small)
            k = k_small
        if k != kernel:
            raise ValueError(f"kernel {kernel} not offered by this layer ({self.kernels})")
        return w

    def active_weight(self, in_ch: int, out_ch: int, kernel: int) -> torch.Tensor:
        w = self.kernel_weight(kernel, out_ch)
        return w if self.depthwise else w[:, :in_ch]

    def forward(self, x: torch.Tensor, out_ch: int, q: QBits, kernel: int | None = None,
                deployed: bool = False) -> torch.Tensor:
        """``deployed``: also quantize what an int8 target's file quantizes here and training
        otherwise keeps real: an FP input and FP weights (8-bit), a hard-swish pre-activation,
        a hard-sigmoid output (its fixed 1/255 grid)."""
        in_ch = x.shape[1]
        kernel = kernel or self.kernels[-1]
        if self.depthwise:
            out_ch = in_ch
        qk = kernel if self.depthwise else None
        x = deploy_quant(x) if deployed and q.a == FP else self.aq(x, q.a, qk)
        w = self.wq(self.active_weight(in_ch, out_ch, kernel), q.w, qk)
        if deployed and q.w == FP:
            w = deploy_quant_weight(w)
        bias = None if self.bias is None else self.bias[:out_ch]
        y = F.conv2d(x, w, bias, self.stride, kernel // 2, 1, in_ch if self.depthwise else 1)
        if self.bn is not None:
            y = self.bn(y)
        if deployed and self.act == "hswish":
            y = deploy_quant(y)
        y = ACTIVATIONS[self.act](y)
        return deploy_quant_unit(y) if deployed and self.act == "hsigmoid" else y

    @torch.no_grad()
    def init_weight_quantizers(self) -> None:
        """LSQ step initialisation from the full latent weight, per bitwidth and kernel size."""
        for key, wq in self.wq.q.items():
            k = int(key.split("_")[0][1:]) if self.depthwise else self.kernels[-1]
            wq.init_from(self.kernel_weight(k, self.weight.shape[0]))

    def extract_tensor(self, name: str, shape: torch.Size) -> torch.Tensor | None:
        """The tensor a subnet layer of ``shape`` takes for parameter ``name`` (None: default rule)."""
        if name == "weight":
            return self.active_weight(shape[1], shape[0], shape[-1])
        return None

