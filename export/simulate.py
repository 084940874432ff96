"""A lowered integer graph run in PyTorch: the subnet as its .tflite computes it ("as deployed").

Float ops (float targets) compute in float32 with the file's weights (fp16-rounded for fp16
targets). Every tensor the file quantizes is rounded (half away from zero) onto its int8 grid, convs
accumulate integers with their int32 bias and requantize as the runtime configuration does
(XNNPACK: the float32 scale; the builtin kernels: a fixed-point multiplier, :func:`fixed_point`),
ADD constants are the file's int8 constants, the input is quantized as the sidecar says:
measured op by op against ai-edge-litert, the same integers (under XNNPACK but for rare 1-LSB
differences: docs/results.md, "Export fidelity"). What ``qfa eval``, predictor labels and
``qfa export --verify`` score "as deployed" is this model of the very graph the file is written
from, so no second placement of quantizers has to be kept in step with the lowering. The same
pass, with tensors left real where no range is fixed yet, calibrates those ranges
(:func:`calibrate_ranges`).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from export.ir import Graph, QTensor
from export.lower import requant_scale
from export.reference import fix_ranges, quantized_const
from export.targets import TARGETS

__all__ = ["ARCHS", "DeployedModel", "calibrate_ranges"]

# CPU architectures whose kernels the simulation computes (platform.machine() names); they differ
# in the builtin kernels' CONV_2D rounding only (XNNPACK's integers measured the same on both)
ARCHS = ("x86_64", "aarch64")

SAMPLE_VALUES = 64  # values per tensor and image kept to choose its 8-bit range
RANGE_BATCH = 64  # images per range-pass batch (256: 3x slower rounding, memory traffic; Zen 4, 2 cores)


def _round(v: torch.Tensor) -> torch.Tensor:
    """Round half away from zero, as TFLite's requantization does."""
    return v.abs().add_(0.5).floor_().copysign_(v)  # in place on a fresh tensor (fewer temporaries)


def quantize_multiplier(m) -> tuple[np.ndarray, np.ndarray]:
    """TFLite's QuantizeMultiplier: ``m = M * 2^(shift - 31)`` with M a 31-bit integer (rounded
    half away from zero), for the builtin kernels' fixed-point requantization."""
    frac, shift = np.frexp(np.atleast_1d(np.asarray(m, np.float64)))
    q = np.floor(frac * 2.0 ** 31 + 0.5).astype(np.int64)
    over = q == 2 ** 31
    return np.where(over, q // 2, q), shift.astype(np.int64) + over


def fixed_point(acc: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor, ties_up: bool,
                left_first: bool = True) -> torch.Tensor:
    """int64 ``acc`` times ``mult * 2^(shift - 31)`` as TFLite's builtin kernels round it: in two
    steps, the product's top bits, then a rounding right shift. ``ties_up``: both steps round
    half upward (ruy: CONV_2D, DEPTHWISE_CONV_2D, MEAN's 16-channel vector lanes); otherwise
    gemmlowp's SaturatingRoundingDoublingHighMul and RoundingDivideByPOT, the second rounding
    half away from zero (MUL, MEAN's channels past the last multiple of 16). Measured exact on
    every value of these ops in ai-edge-litert 2.1 on x86 (docs/results.md, "Export fidelity").
    A multiplier above 1 shifts ``acc`` left first, or (``left_first=False``, arm64's depthwise
    and GEMV kernels) the rounded product."""
    one = torch.ones_like(shift)
    right, left = (-shift).clamp(min=0), one << shift.clamp(min=0)
    p = acc * left * mult if left_first else acc * mult
    if ties_up:
        top = (p + 2 ** 30) >> 31
        return ((top if left_first else top * left) + ((one << right) >> 1)) >> right
    y = torch.div(p + torch.where(p >= 0, 2 ** 30, 1 - 2 ** 30), 2 ** 31, rounding_mode="trunc")
    mask = (one << right) - 1
    return (y >> right) + ((y & mask) > (mask >> 1) + (y < 0)).long()


def single_rounding(acc: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """int64 ``acc`` times ``mult * 2^(shift - 31)`` rounded once, half upward: ruy's arm64 int8
    GEMM kernels (the builtin kernels' CONV_2D with more than one output pixel on ARM; measured
    exact under qemu-user, docs/results.md "On ARM")."""
    total = 31 - shift
    return (acc * mult + (torch.ones_like(shift) << (total - 1))) >> total


def _quantize(y: torch.Tensor, t: QTensor) -> torch.Tensor:
    return _round(y / t.scale).add_(t.zero_point).clamp_(t.qmin, t.qmax).sub_(t.zero_point).mul_(t.scale)


def _f64(v) -> np.ndarray:
    """float32 scales as the runtime reads them from the file, widened to float64 (as TFLite
    computes its requantization multipliers)."""
    return np.asarray(v, np.float32).astype(np.float64)


def _oihw(op, w: np.ndarray) -> np.ndarray:
    """TFLite's weight layout (O, kh, kw, I), depthwise (1, kh, kw, C), as PyTorch's (O, I|1, kh, kw)."""
    return w.transpose(3, 0, 1, 2) if op.depthwise else w.transpose(0, 3, 1, 2)


def runtime_table(t_in: QTensor, t_out: QTensor, kind: str, delegate: str) -> torch.Tensor:
    """The runtime's own int8 -> int8 function of a one-input op between two grids, over the
    256 input codes (a one-op .tflite run under ``delegate``): exact where its fixed-point
    arithmetic is not worth re-deriving (HARD_SWISH: 1 LSB off the formula on 0.13% of values;
    QUANTIZE between two grids: on up to 51 of the 256 codes, the builtin kernels otherwise than XNNPACK)."""
    from export.ir import Op
    from export.tflite import to_tflite
    from export.verify import TFLiteModel
    a = QTensor("a", (1, 16, 16, 1), scale=t_in.scale, zero_point=t_in.zero_point)
    b = QTensor("b", (1, 16, 16, 1), scale=t_out.scale, zero_point=t_out.zero_point, qmin=t_out.qmin, qmax=t_out.qmax)
    m = TFLiteModel(to_tflite(Graph({"a": a, "b": b}, [Op(kind, ["a"], "b")], "a", "b")), delegate=delegate)
    codes = m.invoke_q(np.arange(-128, 128, dtype=np.int8).reshape(1, 16, 16, 1)).reshape(-1)
    return torch.from_numpy(codes.astype(np.float32))


class DeployedModel(torch.nn.Module):
    """``graph`` (folded and lowered for one target) as a module: NCHW real-valued images in,
    the dequantized int8 logits out, as the .tflite gives them under ``delegate`` on a CPU of
    ``arch`` (:data:`ARCHS`). Inference only.

    Convolutions between fixed tensors are computed as the runtime computes them: the int32
    accumulator of integer inputs (minus their zero point) and integer weights, exact in
    float32 (below 2^24), plus the int32 bias, requantized onto the output grid (XNNPACK: times
    the float32 scale, rounded; builtin: :func:`fixed_point`, as also their int8 MUL and MEAN).
    HARD_SWISH and int8 QUANTIZE are the runtime's own tables (:func:`runtime_table`). The
    other ops work on dequantized values, each rounded onto its output grid."""

    def __init__(self, graph: Graph, delegate: str = "xnnpack", arch: str = "x86_64") -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown CPU architecture {arch!r}; expected one of {ARCHS}")
        self.graph, self.arch = graph, arch
        self._convs: dict[str, tuple] = {}
        self._consts: dict[str, torch.Tensor] = {}
        self._tables: dict[str, torch.Tensor] = {}
        self._builtin: dict[str, tuple] = {}  # MUL, MEAN: the builtin kernels' fixed-point multipliers
        self.delegate = delegate
        g = graph
        for op in g.ops:
            if op.kind == "conv" and op.is_float:
                real_w = np.ascontiguousarray(_oihw(op, op.real_weight()), np.float32)
                self._convs[op.output] = ("real", torch.from_numpy(real_w), torch.from_numpy(np.asarray(op.bias, np.float32)))
            elif op.kind == "conv":
                w = _oihw(op, op.weight.astype(np.float32))
                tin, tout = g.tensors[op.inputs[0]], g.tensors[op.output]
                if tin.fixed and tout.fixed:
                    bq, _ = op.int32_bias(tin.scale)
                    mult = requant_scale(g, op).astype(np.float32)
                    lo, hi = self._act_range(op.act, tout)
                    fixed = None
                    if self._builtin_conv(op):
                        mq = quantize_multiplier(_f64(tin.scale) * _f64(op.w_scale) / _f64(tout.scale))
                        fixed = tuple(torch.from_numpy(v).view(1, -1, 1, 1) for v in mq)
                    self._convs[op.output] = ("int", torch.from_numpy(np.ascontiguousarray(w)),
                                              torch.from_numpy(bq.astype(np.float32)),
                                              torch.from_numpy(mult).view(1, -1, 1, 1), lo, hi, fixed)
                else:  # calibration: the output range is not fixed yet
                    bias = np.multiply(*op.int32_bias(tin.scale)) if tin.fixed else op.bias
                    real_w = np.ascontiguousarray(w * op.w_scale[:, None, None, None], np.float32)
                    self._convs[op.output] = ("real", torch.from_numpy(real_w), torch.from_numpy(np.asarray(bias, np.float32)))
            elif op.kind == "addc":
                c = np.asarray(op.const if op.is_float else quantized_const(op.const, g.tensors[op.output].scale), np.float32)
                self._consts[op.output] = torch.from_numpy(np.ascontiguousarray(np.transpose(
                    c.reshape((1,) * (4 - c.ndim) + c.shape), (0, 3, 1, 2))))
            elif (op.kind in ("hswish", "requant") and not op.is_float and not g.tensors[op.inputs[0]].is_float
                  and g.tensors[op.inputs[0]].fixed and g.tensors[op.output].fixed):
                self._tables[op.output] = runtime_table(g.tensors[op.inputs[0]], g.tensors[op.output], op.kind, delegate)
            elif delegate == "builtin" and op.kind in ("mul", "mean") and self._fixed_int8(op):
                ins, tout = [g.tensors[i] for i in op.inputs], g.tensors[op.output]
                if op.kind == "mul":
                    mq = quantize_multiplier(_f64(ins[0].scale) * _f64(ins[1].scale) / _f64(tout.scale))
                    self._builtin[op.output] = tuple(torch.from_numpy(v) for v in mq)
                else:  # optimized_integer_ops::Mean: float32 multiplier and zero-point bias
                    f = np.float32
                    n = ins[0].shape[1] * ins[0].shape[2]
                    temp = f(f(ins[0].zero_point * f(ins[0].scale)) / f(tout.scale))
                    bias = tout.zero_point - int(temp + f(0.5) if temp > 0 else temp - f(0.5))
                    mq = quantize_multiplier(f(f(ins[0].scale) / f(f(n) * f(tout.scale))))
                    self._builtin[op.output] = (*(torch.from_numpy(v) for v in mq), bias)

    def _builtin_conv(self, op) -> bool:
        """Whether the builtin kernels run int8 conv ``op``: all of them under ``builtin``, and
        INT4-weight CONV_2D under XNNPACK too, which leaves those to them (measured: XNNPACK and
        builtin files give the same integers there)."""
        target = TARGETS.get(self.graph.meta.get("target"))
        return self.delegate == "builtin" or (target is not None and target.int4_packs(op))

    def _fixed_int8(self, op) -> bool:
        """Whether ``op`` is an int8 op between tensors whose ranges are fixed."""
        ts = [self.graph.tensors[t] for t in (*op.inputs, op.output)]
        return not op.is_float and all(t.fixed and not t.is_float for t in ts)

    @staticmethod
    def _codes(t: QTensor, v: torch.Tensor) -> torch.Tensor:
        """The int8 codes minus the zero point of ``t``'s real values ``v``, as int64."""
        return torch.round(v / t.scale).long()

    @staticmethod
    def _act_range(act: str, t: QTensor) -> tuple[int, int]:
        """The integer output range of a fused activation (TFLite's CalculateActivationRangeQuantized)."""
        lo, hi = t.qmin, t.qmax
        if act == "relu":
            lo = max(lo, t.zero_point)
        elif act == "relu_n1_to_1":
            lo = max(lo, t.zero_point + int(np.round(-1.0 / t.scale)))
            hi = min(hi, t.zero_point + int(np.round(1.0 / t.scale)))
        return lo, hi

    def _conv(self, op, x: torch.Tensor) -> torch.Tensor:
        kind, w, b, *rest = (v.to(x.device) if isinstance(v, torch.Tensor) else v for v in self._convs[op.output])
        groups = w.shape[0] if op.depthwise else 1
        if kind == "real":
            y = F.conv2d(x, w, b, op.stride, op.pad, 1, groups)
            lo, hi = {"relu": (0, None), "relu_n1_to_1": (-1, 1), "relu_0_to_1": (0, 1)}.get(op.act, (None, None))
            return y if lo is None else y.clamp(lo, hi)
        mult, lo, hi, fixed = rest
        tin, tout = self.graph.tensors[op.inputs[0]], self.graph.tensors[op.output]
        q = torch.round(x / tin.scale)  # the input's integers minus its zero point
        acc = F.conv2d(q, w, b, op.stride, op.pad, 1, groups)  # integers: exact in float32 below 2^24
        if fixed is None:  # XNNPACK: the float32 scale, rounded half away from zero
            out = (_round(acc * mult) + tout.zero_point).clamp(lo, hi)
        elif self.arch == "aarch64" and not op.depthwise and acc.shape[2] * acc.shape[3] > 1:  # ruy's arm64 GEMM
            out = (single_rounding(acc.long(), *fixed) + tout.zero_point).clamp(lo, hi).float()
        else:  # the builtin kernels (ruy on x86; depthwise and one-pixel GEMV on arm64): fixed point
            out = fixed_point(acc.long(), *fixed, ties_up=True, left_first=self.arch != "aarch64")
            out = (out + tout.zero_point).clamp(lo, hi).float()
        return ((out - tout.zero_point) * tout.scale).float()

    def op_output(self, op, args: list[torch.Tensor]) -> torch.Tensor:
        """``op`` of the graph on NCHW real values ``args`` (before rounding onto its output grid)."""
        if op.kind == "conv":
            return self._conv(op, args[0])
        if op.kind == "addc":
            y = args[0] + self._consts[op.output].to(args[0].device)
            return y.clamp(min=0) if op.act == "relu" else y
        if op.output in self._tables:  # int8 -> int8 HARD_SWISH / QUANTIZE: the runtime's own function
            tin, tout = self.graph.tensors[op.inputs[0]], self.graph.tensors[op.output]
            idx = (torch.round(args[0] / tin.scale) + tin.zero_point + 128).clamp(0, 255).long()
            return (self._tables[op.output].to(idx.device)[idx] - tout.zero_point) * tout.scale
        if op.kind == "hswish":
            return args[0] * (args[0] + 3).clamp(0, 6) / 6
        if op.kind == "add":
            return args[0] + args[1]
        if op.kind == "mul" and op.output in self._builtin:
            a, b = (self._codes(self.graph.tensors[i], v) for i, v in zip(op.inputs, args))
            m, sh = (v.to(a.device) for v in self._builtin[op.output])
            return fixed_point(a * b, m, sh, ties_up=False) * self.graph.tensors[op.output].scale
        if op.kind == "mul":
            return args[0] * args[1]
        if op.kind == "mean":
            tin, tout = self.graph.tensors[op.inputs[0]], self.graph.tensors[op.output]
            if tin.is_float or not (tin.fixed and tout.fixed):
                return args[0].mean((2, 3), keepdim=True)
            if op.output in self._builtin:  # the sum of the codes times a fixed-point multiplier, plus a bias
                m, sh, bias = self._builtin[op.output]
                raw = (self._codes(tin, args[0]) + tin.zero_point).sum((2, 3), keepdim=True)
                c = raw.shape[1]
                vec = torch.arange(c, device=raw.device).view(1, -1, 1, 1) < c // 16 * 16
                m, sh = m.to(raw.device), sh.to(raw.device)
                v = torch.where(vec, fixed_point(raw, m, sh, True), fixed_point(raw, m, sh, False)) + bias
                return (v.clamp(-128, 127) - tout.zero_point) * tout.scale
            # as XNNPACK: the sum of the codes times a float32 multiplier plus a float32 offset,
            # rounded (a float mean of real values lands on the other side of near-ties)
            n = args[0].shape[2] * args[0].shape[3]
            codes = torch.round(args[0] / tin.scale).sum((2, 3), keepdim=True) + n * tin.zero_point
            f = np.float32
            v = codes * float(f(tin.scale / (tout.scale * n))) + float(f(tout.zero_point - tin.zero_point * tin.scale / tout.scale))
            return (_round(v) - tout.zero_point) * tout.scale
        if op.kind in ("requant", "dequant"):  # the rounding is the output tensor's (none for float32)
            return args[0]
        raise ValueError(f"unknown op {op.kind}")

    @torch.no_grad()
    def forward(self, x: torch.Tensor, stats: dict[str, list[np.ndarray]] | None = None,
                trace: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits of NCHW ``x``. Tensors whose range is not fixed yet stay real; their values
        are sampled into ``stats`` (the calibration pass). ``trace`` receives every tensor's value."""
        g = self.graph
        env: dict[str, torch.Tensor] = {} if trace is None else trace

        def store(name: str, y: torch.Tensor) -> None:
            t = g.tensors[name]
            if t.is_float:
                y = y.float()
            elif t.fixed:
                y = _quantize(y, t)
            elif stats is not None:
                stats.setdefault(name, []).append(_sample(y))
            env[name] = y

        tin = g.tensors[g.input]  # quantized as the sidecar says: q = floor((x + shift) / scale + 0.5) + zp
        if tin.is_float:
            env[g.input] = x.float()
        elif tin.fixed:
            q = (torch.floor((x.double() + tin.shift) / tin.scale + 0.5) + tin.zero_point).clamp(tin.qmin, tin.qmax)
            env[g.input] = ((q - tin.zero_point) * tin.scale).float()
        else:
            store(g.input, x.float() + tin.shift)
        for op in g.ops:
            store(op.output, self.op_output(op, [env[i] for i in op.inputs]))
        return env[g.output].flatten(1)


def _sample(y: torch.Tensor) -> np.ndarray:
    """Up to ``SAMPLE_VALUES`` per image of ``y``'s values (a fixed-seed draw), always with its min and max."""
    v, n = y.detach().flatten(), SAMPLE_VALUES * y.shape[0]
    if v.numel() > n:
        g = torch.Generator().manual_seed(v.numel())
        v = torch.cat([v[torch.randint(v.numel(), (n,), generator=g)], v.min()[None], v.max()[None]])
    return v.float().cpu().numpy()


def calibrate_ranges(graph: Graph, batches: Iterable[torch.Tensor]) -> Graph:
    """Fix the 8-bit range of every unfixed tensor of ``graph`` from NCHW batches of real images.

    All unfixed tensors are measured in one pass, with their upstream unfixed tensors kept real,
    then fixed (fixing them one topological level at a time would be exact but slower): what is
    left is 8-bit rounding of upstream intermediates."""
    stats: dict[str, list[np.ndarray]] = {}
    model = DeployedModel(graph)
    for xb in batches:
        model(xb, stats)
    return fix_ranges(graph, stats)
