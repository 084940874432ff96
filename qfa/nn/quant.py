"""Fake quantizers: BatchQuant and the baselines (MinMax-EMA, LSQ) for activations, LSQ for weights.

Pure layers, independent of any network. Each quantizer module serves ONE layer at ONE
bitwidth; :class:`QuantBank` holds one per bitwidth (and per kernel size for depthwise) over a
shared latent weight, as the QFA release does. Everything stays on the device: no quantizer
reads a value back to the host during a training step.

Calibration protocol: between :meth:`Calibrated.begin_calibration` and
:meth:`Calibrated.end_calibration` a module normalises/quantizes with batch statistics and
accumulates them (weighted by batch size); ``end_calibration`` writes the averages into its
running buffers. BatchNorm layers follow the same protocol (see ``qfa.nn.elastic.ops``).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from qfa.nn import fused
from qfa.core.space import FP

__all__ = [
    "round_ste", "grad_scale", "qrange", "batch_range", "affine_fake_quant", "affine_fake_quant_reference",
    "Calibrated", "BatchQuant", "MinMaxQuant", "LSQActQuant", "LSQWeight", "QuantBank",
    "ACT_QUANTIZERS", "make_act_quantizer", "int8_per_channel",
    "deploy_quant", "deploy_quant_weight", "deploy_quant_unit",
]

_EPS = fused.EPS
_LN2 = math.log(2.0)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through gradient."""
    return (x.round() - x).detach() + x


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``g`` (LSQ's step-size gradient scale)."""
    return (x - x * g).detach() + x * g


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-bit grid: [-2^(b-1), 2^(b-1)-1] signed, [0, 2^b-1] unsigned."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def batch_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchQuant's range: per-channel min/max over (N, H, W), averaged over channels, detached."""
    xd = x.detach().float()  # statistics in float32 even under bf16 autocast
    if xd.dim() > 2:  # reduce the contiguous spatial dims first: faster than one (0, 2, 3) reduction
        sp = tuple(range(2, xd.dim()))
        return xd.amin(dim=sp).amin(0).mean(), xd.amax(dim=sp).amax(0).mean()
    return xd.amin(dim=0).mean(), xd.amax(dim=0).mean()


class _AffineFakeQuant(torch.autograd.Function):
    """Fused BatchQuant fake quantization with hand-written straight-through gradients.

    Same values and gradients as the composed form (:func:`affine_fake_quant_reference`), in
    one autograd node instead of ~20: the per-call scalar arithmetic (range, step, zero point)
    runs outside autograd and the elementwise work is one fused loop each way (:mod:`qfa.nn.fused`).
    """

    @staticmethod
    def forward(ctx, x, lo, hi, alpha, offset, qmin: int, qmax: int):  # type: ignore[override]
        s, z = fused.range_params(lo, hi, qmin, qmax)
        c = alpha / s
        zo = z + offset
        if any(ctx.needs_input_grad):  # not in calibration, evaluation or the teacher
            ctx.save_for_backward(x, c, zo, alpha, s)
            ctx.qrange = (qmin, qmax)
        return fused.affine_forward(x.reshape(-1), c, zo, qmin, qmax).view(x.shape)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, c, zo, alpha, s = ctx.saved_tensors
        gx, xg_minus_yg, g_outside = fused.affine_backward(g.reshape(-1), x.reshape(-1), c, zo, *ctx.qrange)
        # y ~ x inside the range (dy/dalpha = (x - y)/alpha), y = const outside (dy/dalpha = -y/alpha)
        return (gx.view(x.shape), None, None, (xg_minus_yg / alpha).reshape(alpha.shape),
                (g_outside * (-s / alpha)).reshape(alpha.shape), None, None)


def affine_fake_quant(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, alpha: torch.Tensor,
                      offset: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """BatchQuant's fake quantization of ``x`` on the range [lo, hi] (widened to include 0).

    q = round_ste(clamp(alpha*x/s + z + o)), x^ = (q - z - o) * s / alpha, with
    s = (hi - lo)/(qmax - qmin) and integer z = clamp(qmin - round(lo/s)).
    """
    if x.dtype != torch.float32:  # autocast: quantize in float32, hand back the caller's dtype
        return _AffineFakeQuant.apply(x.float(), lo.detach(), hi.detach(), alpha, offset, qmin, qmax).to(x.dtype)
    return _AffineFakeQuant.apply(x, lo.detach(), hi.detach(), alpha, offset, qmin, qmax)


def affine_fake_quant_reference(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, alpha: torch.Tensor,
                                offset: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """The same quantizer composed from autograd ops: the specification the fused one is tested against."""
    s, z = fused.range_params(lo, hi, qmin, qmax)
    v = torch.clamp(alpha * x / s + z + offset, qmin, qmax)
    return (round_ste(v) - z - offset) * s / alpha


class _StraightThrough(torch.autograd.Function):
    """``fn(x)`` forward (no autograd inside), the identity backward: every value lies inside the
    range it is quantized on, so the straight-through gradient has nothing to clip."""

    @staticmethod
    def forward(ctx, x, fn):  # type: ignore[override]
        return fn(x.detach())

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return g, None


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    """Round half away from zero, as TFLite's requantization does (in place on a fresh tensor:
    fewer temporaries). ``export.simulate`` keeps its own copy: export reaches model code only
    through the fold, the one seam."""
    return v.abs().add_(0.5).floor_().copysign_(v)


def int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An FP conv weight on the symmetric 8-bit grid an int8 file gives it: (integers, per output
    channel scales shaped to broadcast against ``w``)."""
    s = (w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) / 127).clamp(min=1e-12)
    return (w / s).round().clamp(-127, 127), s


def _int8_tensor(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.amin().clamp(max=0), x.amax().clamp(min=0)
    s = ((hi - lo) / 255).clamp(min=_EPS)
    z = (-128 - torch.round(lo / s))
    return _round_half_away(x / s).add_(z).clamp_(-128, 127).sub_(z).mul_(s)


def _int8_weight_values(w: torch.Tensor) -> torch.Tensor:
    q, s = int8_per_channel(w)
    return q.mul_(s)


def _unit_grid(v: torch.Tensor) -> torch.Tensor:
    return _round_half_away(v * 255).div_(255)


def deploy_quant(x: torch.Tensor) -> torch.Tensor:
    """An int8 target's quantization of a tensor no trained quantizer owns (training's mirror of
    the file's 8-bit tensors): per tensor, on the batch's range widened to include 0,
    straight-through gradient. The file's ranges are fixed once per subnet and may clip
    (``export.reference.fix_ranges``), so its steps are at most this coarse. A tensor this
    returned is returned as it is (one file tensor, quantized once)."""
    if getattr(x, "on_int8_grid", False):
        return x
    y = _StraightThrough.apply(x, _int8_tensor)
    y.on_int8_grid = True
    return y


def deploy_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """An FP conv's weights as an int8 target writes them: per output channel, symmetric 8-bit."""
    return _StraightThrough.apply(w, _int8_weight_values)


def deploy_quant_unit(x: torch.Tensor) -> torch.Tensor:
    """A [0, 1] tensor on the file's fixed 1/255 grid (the SE gates' hard sigmoid)."""
    return _StraightThrough.apply(x, _unit_grid)


class Calibrated(nn.Module):
    """A module whose eval-time statistics are set per subnet by averaging over batches."""

    def __init__(self) -> None:
        super().__init__()
        self._calib: dict[str, torch.Tensor] | None = None

    @property
    def calibrating(self) -> bool:
        return self._calib is not None

    def begin_calibration(self) -> None:
        self._calib = {}

    def _accumulate(self, n: int, **stats: torch.Tensor) -> None:
        acc = self._calib
        acc["n"] = acc.get("n", 0) + n
        for k, v in stats.items():
            v = v.detach().double() * n
            acc[k] = acc[k] + v if k in acc else v

    def end_calibration(self) -> None:
        acc, self._calib = self._calib, None
        if acc and acc.get("n", 0) > 0:
            self._finish({k: (v / acc["n"]) for k, v in acc.items() if k != "n"})

    def _finish(self, means: dict[str, torch.Tensor]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class _ActQuant(Calibrated):
    """Common state of activation quantizers: bitwidth, signedness, calibrated range."""

    def __init__(self, bits: int, signed: bool) -> None:
        super().__init__()
        self.bits, self.signed = bits, signed
        self.qmin, self.qmax = qrange(bits, signed)
        self.register_buffer("running_min", torch.tensor(float("nan")))
        self.register_buffer("running_max", torch.tensor(float("nan")))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}"

    def _finish(self, means: dict[str, torch.Tensor]) -> None:
        self.running_min.copy_(means["lo"].to(self.running_min))
        self.running_max.copy_(means["hi"].to(self.running_max))

    def _range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training or self.calibrating:
            lo, hi = batch_range(x)
            if self.calibrating:
                self._accumulate(x.shape[0], lo=lo, hi=hi)
            return lo, hi
        return self.running_min, self.running_max


class BatchQuant(_ActQuant):
    """BatchQuant (Bai et al. 2021): batch-derived range, learnable softplus scale and offset.

    alpha = log2(1 + 2^theta) (softplus with beta = ln 2, so alpha = 1 at theta = 0); the
    range is the current batch's in training, the calibrated running range in eval.
    """

    def __init__(self, bits: int, signed: bool) -> None:
        super().__init__(bits, signed)
        self.theta = nn.Parameter(torch.zeros(()))
        self.offset = nn.Parameter(torch.zeros(()))

    @property
    def alpha(self) -> torch.Tensor:
        return F.softplus(self.theta, beta=_LN2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self._range(x)
        return affine_fake_quant(x, lo, hi, self.alpha, self.offset, self.qmin, self.qmax)


class MinMaxQuant(_ActQuant):
    """Ablation baseline: global min/max tracked by EMA (momentum 0.01) while training, no
    learnable parameters; per-subnet calibration re-estimates the range like BatchQuant's."""

    momentum = 0.01

    def __init__(self, bits: int, signed: bool) -> None:
        super().__init__(bits, signed)
        self.register_buffer("one", torch.ones(()), persistent=False)
        self.register_buffer("zero", torch.zeros(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            lo, hi = self._range(x)
        elif self.training:
            xd = x.detach()
            blo, bhi = xd.amin(), xd.amax()
            first = torch.isnan(self.running_min)  # no host sync: where() instead of if
            self.running_min.copy_(torch.where(first, blo, torch.lerp(self.running_min, blo, self.momentum)))
            self.running_max.copy_(torch.where(first, bhi, torch.lerp(self.running_max, bhi, self.momentum)))
            lo, hi = self.running_min, self.running_max
        else:
            lo, hi = self.running_min, self.running_max
        return affine_fake_quant(x, lo, hi, self.one, self.zero, self.qmin, self.qmax)


class LSQActQuant(_ActQuant):
    """Ablation baseline: LSQ+ activations (learned step and offset, initialised once from the
    first training batch's min/max). Calibration has nothing to set: the range is learned."""

    def __init__(self, bits: int, signed: bool) -> None:
        super().__init__(bits, signed)
        self.step = nn.Parameter(torch.ones(()))
        self.beta = nn.Parameter(torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready = False

    def _init_from(self, x: torch.Tensor) -> None:
        if self._ready or bool(self.initialized):  # one host read, before the first init only
            self._ready = True
            return
        lo, hi = batch_range(x)
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        with torch.no_grad():
            self.step.copy_(((hi - lo) / (self.qmax - self.qmin)).clamp(min=1e-4))
            self.beta.copy_(lo - self.qmin * self.step)
            self.initialized.fill_(True)
        self._ready = True

    def begin_calibration(self) -> None:  # nothing to calibrate
        self._calib = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._init_from(x)
        g = 1.0 / math.sqrt(x[0].numel() * self.qmax)
        s = grad_scale(self.step, g).abs().clamp(min=_EPS)
        b = grad_scale(self.beta, g)
        return round_ste(torch.clamp((x - b) / s, self.qmin, self.qmax)) * s + b


ACT_QUANTIZERS: dict[str, type[_ActQuant]] = {"bq": BatchQuant, "minmax": MinMaxQuant, "lsq": LSQActQuant}


def make_act_quantizer(kind: str) -> Callable[[int, bool], nn.Module]:
    if kind not in ACT_QUANTIZERS:
        raise ValueError(f"unknown activation quantizer {kind!r}; choose from {sorted(ACT_QUANTIZERS)}")
    return ACT_QUANTIZERS[kind]


class LSQWeight(nn.Module):
    """LSQ weight quantizer: signed, symmetric, per-tensor step; gradient scale uses the element
    count of the FULL (max-size) latent weight, as in the QFA release."""

    def __init__(self, bits: int, numel_full: int) -> None:
        super().__init__()
        self.bits = bits
        self.qmin, self.qmax = qrange(bits, signed=True)
        self.g = 1.0 / math.sqrt(numel_full * self.qmax)
        self.step = nn.Parameter(torch.ones(()))

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    @torch.no_grad()
    def init_from(self, w: torch.Tensor) -> None:
        """LSQ's initial step 2*mean|w|/sqrt(Qp), from the full latent weight."""
        self.step.copy_((2 * w.abs().mean() / math.sqrt(self.qmax)).clamp(min=1e-8))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _LSQWeightFn.apply(w, self.step, self.qmin, self.qmax, self.g)

    def reference(self, w: torch.Tensor) -> torch.Tensor:
        """The composed-autograd definition the fused forward is tested against."""
        s = grad_scale(self.step, self.g).abs().clamp(min=_EPS)
        return round_ste(torch.clamp(w / s, self.qmin, self.qmax)) * s


class _LSQWeightFn(torch.autograd.Function):
    """LSQ: w^ = round(clamp(w/|s|, Qn, Qp)) * |s|, one autograd node; the step's gradient is
    LSQ's (round(w/s) - w/s inside the range, the clamp bound outside) times the scale g."""

    @staticmethod
    def forward(ctx, w, step, qmin: int, qmax: int, g: float):  # type: ignore[override]
        s = step.abs().clamp(min=_EPS)
        ctx.save_for_backward(w, s, step)
        ctx.qrange, ctx.g = (qmin, qmax), g
        return fused.lsq_forward(w.reshape(-1), s, qmin, qmax).view(w.shape)

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        w, s, step = ctx.saved_tensors
        gw, gsum = fused.lsq_backward(gy.reshape(-1), w.reshape(-1), s, *ctx.qrange)
        return gw.view(w.shape), (gsum * ctx.g * torch.sign(step)).reshape(step.shape), None, None, None


class QuantBank(nn.Module):
    """One quantizer per key (bitwidth, or ``k<kernel>_<bits>`` for depthwise); FP = identity."""

    def __init__(self, make: Callable[[int, int | None], nn.Module], bits: tuple[int, ...],
                 kernels: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.q = nn.ModuleDict()
        for b in bits:
            if b == FP:
                continue
            for k in (kernels or (None,)):
                self.q[self.key(b, k)] = make(b, k)

    @staticmethod
    def key(bits: int, kernel: int | None = None) -> str:
        return f"b{bits}" if kernel is None else f"k{kernel}_b{bits}"

    def get(self, bits: int, kernel: int | None = None) -> nn.Module | None:
        """The quantizer for (bits, kernel), or None for full precision."""
        return None if bits == FP else self.q[self.key(bits, kernel)]

    def forward(self, x: torch.Tensor, bits: int, kernel: int | None = None) -> torch.Tensor:
        q = self.get(bits, kernel)
        return x if q is None else q(x)
