"""The folded integer graph: the one form both the exporter and the latency tables lower.

Every tensor is int8 with a scale and zero point, plus the integer clamp range ``[qmin, qmax]``
that a sub-8-bit grid imposes (a b-bit grid sits at the bottom of int8: ``qmin = -128``,
``qmax = -128 + 2^b - 1``). Ops carry integer weights with per-channel scales and real biases;
a full-precision conv also carries its real weights (``fweight``), which a float target
deploys (:func:`export.lower.to_float` turns such ops and the tensors between them float32).
numpy only: no torch, no TensorFlow, so devices and the table builder can use it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["QTensor", "Op", "Graph", "grid_qparams", "range_qparams", "OP_KINDS", "IRError"]

OP_KINDS = ("conv", "hswish", "add", "addc", "mean", "mul", "requant", "dequant")
# relu_0_to_1: a float hard-sigmoid (an int8 one is relu_n1_to_1 onto a [0, 1] grid)
FUSED_ACTS = ("none", "relu", "relu_n1_to_1", "relu_0_to_1")


class IRError(ValueError):
    """A malformed folded graph."""


@dataclass
class QTensor:
    """An int8 activation tensor (NHWC). ``scale is None`` until calibration fixes its range.
    ``dtype`` "float32": a float tensor of a float target (no grid, no scale)."""

    name: str
    shape: tuple[int, ...]
    scale: float | None = None
    zero_point: int = 0
    qmin: int = -128
    qmax: int = 127
    bits: int = 8            # the nominal grid the trained model used (8 for calibrated tensors)
    learned: bool = False    # scale/zero point come from a trained quantizer (not calibration)
    zp_error: float = 0.0    # |learned zero point - rounded one| in LSB (BatchQuant's offset)
    shift: float = 0.0       # the int8 values represent (true value + shift): see grid_qparams
    dtype: str = "int8"      # int8 | float32

    @property
    def fixed(self) -> bool:
        return self.scale is not None or self.is_float

    @property
    def is_float(self) -> bool:
        return self.dtype == "float32"

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Real values -> int8 (round half away from zero, as TFLite's requantization does);
        a float32 tensor keeps them."""
        if self.is_float:
            return np.asarray(x, np.float32)
        v = x / self.scale
        v = np.sign(v) * np.floor(np.abs(v) + 0.5) + self.zero_point
        return np.clip(v, self.qmin, self.qmax).astype(np.int8)

    def dequantize(self, v: np.ndarray) -> np.ndarray:
        if self.is_float:
            return v.astype(np.float64)
        return (v.astype(np.float64) - self.zero_point) * self.scale


@dataclass
class Op:
    """One TFLite-level op. Conv weights are integers: (O, kh, kw, I), depthwise (1, kh, kw, C)."""

    kind: str
    inputs: list[str]
    output: str
    weight: np.ndarray | None = None      # int8 values on the nominal grid
    w_scale: np.ndarray | None = None     # per output channel, > 0
    w_bits: int = 8
    bias: np.ndarray | None = None        # real-valued bias per output channel
    stride: int = 1
    pad: int = 0                          # symmetric zero padding (PyTorch's k // 2)
    depthwise: bool = False
    act: str = "none"                     # fused: none | relu | relu_n1_to_1
    layer: str = ""                       # the PyTorch layer it comes from (for reports)
    const: np.ndarray | None = None       # addc: real constant, (1,1,1,1) or (1,H,W,C)
    fweight: np.ndarray | None = None     # a full-precision conv's real weights (layout of ``weight``)
    is_float: bool = False                # computed in float32 (export.lower.to_float)

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[1]) if self.weight is not None else 1

    def int32_bias(self, in_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """The conv bias as TFLite stores it: int32 on the grid (input scale x weight scale),
        and that grid. The one place the bias rounding is defined (file, reference, ONNX)."""
        grid = in_scale * self.w_scale
        return np.round(self.bias / grid).clip(-2**31, 2**31 - 1).astype(np.int32), grid

    def grid_weight(self) -> np.ndarray:
        """The real values of the integer weights (what an int8 op computes with)."""
        w = self.weight.astype(np.float64)
        return w * self.w_scale if self.depthwise else w * self.w_scale[:, None, None, None]

    def real_weight(self) -> np.ndarray:
        """The weights the op computes with: a float FP conv's ``fweight``, else the grid's."""
        return self.fweight if self.is_float and self.fweight is not None else self.grid_weight()


@dataclass
class Graph:
    """A sequential-with-skips int8 graph; ``ops`` in execution order."""

    tensors: dict[str, QTensor]
    ops: list[Op]
    input: str
    output: str
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "Graph":
        known = {self.input}
        for op in self.ops:
            if op.kind not in OP_KINDS or op.act not in FUSED_ACTS:
                raise IRError(f"unknown op {op.kind!r} / activation {op.act!r}")
            missing = [t for t in op.inputs if t not in known]
            if missing:
                raise IRError(f"op {op.kind} -> {op.output} reads {missing} before they are produced")
            if op.output not in self.tensors:
                raise IRError(f"op {op.kind} writes {op.output}, which the graph does not declare")
            dtypes = [self.tensors[t].is_float for t in (*op.inputs, op.output)]
            fits = {"requant": not dtypes[-1], "dequant": dtypes == [False, True]}.get(
                op.kind, all(d == op.is_float for d in dtypes))
            if not fits:
                raise IRError(f"op {op.kind} -> {op.output}: its tensors' types do not fit it (float32 op: all "
                              "float32; int8 op: all int8; requant: -> int8; dequant: int8 -> float32)")
            if op.kind == "conv":
                if op.weight is None or op.w_scale is None or op.bias is None:
                    raise IRError(f"conv {op.output} lacks weight, scale or bias")
                if np.any(op.w_scale <= 0) or not np.all(np.isfinite(op.w_scale)):
                    raise IRError(f"conv {op.output}: weight scales must be positive and finite")
            known.add(op.output)
        unfixed = [t.name for t in self.tensors.values() if not t.fixed]
        if unfixed:
            raise IRError(f"tensors without quantization parameters: {unfixed[:5]}")
        return self

    def consumers(self, name: str) -> list[Op]:
        return [op for op in self.ops if name in op.inputs]

    def summary(self) -> dict[str, Any]:
        """Op counts and per-layer precision (what an app developer and a report need)."""
        kinds: dict[str, int] = {}
        for op in self.ops:
            kinds[op.kind] = kinds.get(op.kind, 0) + 1
        layers = [{"layer": op.layer, "w_bits": op.w_bits, "a_bits": self.tensors[op.inputs[0]].bits,
                   "kernel": op.kernel, "depthwise": op.depthwise, "out_channels": int(op.weight.shape[0 if not op.depthwise else 3]),
                   "format": "float" if op.is_float else "int8"}
                  for op in self.ops if op.kind == "conv"]
        zp = [t.zp_error for t in self.tensors.values() if t.learned]
        return {"ops": kinds, "layers": layers, "max_zero_point_rounding_lsb": max(zp, default=0.0)}


def grid_qparams(scale: float, zero: float, qmin: int, qmax: int) -> dict[str, Any]:
    """Place a learned b-bit grid x = (q - zero) * scale, q in [qmin, qmax], at the bottom of int8.

    TFLite needs an integer zero point, BatchQuant learns a real one. Rounding it moves every
    rounding boundary (measured: a trained W2A2 fmnist subnet drops from 79.5% to 12.5%), so
    instead the int8 values represent the SHIFTED value x + (zero - round(zero)) * scale, which
    has an integer zero point; :func:`export.lower.apply_shifts` adds the shift where the tensor
    is produced and removes it where it is consumed. ``zp_error`` reports the fractional part.
    """
    z = float(np.clip(np.round(zero), qmin, qmax))
    off = -128 - qmin
    return dict(scale=float(scale), zero_point=int(z) + off, qmin=-128, qmax=-128 + (qmax - qmin),
                bits=int(np.log2(qmax - qmin + 1)), learned=True, zp_error=float(abs(zero - z)),
                shift=float((zero - z) * scale))


def range_qparams(lo: float, hi: float) -> dict[str, Any]:
    """8-bit affine parameters covering [lo, hi] (widened to hold 0 exactly, as TFLite needs)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / 255.0
    zp = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return dict(scale=scale, zero_point=zp)


def to_json(graph: Graph) -> dict[str, Any]:
    """A JSON view of the graph without weight values (for sidecars and debugging)."""
    return {"input": graph.input, "output": graph.output,
            "tensors": {k: {f.name: getattr(t, f.name) for f in dataclasses.fields(t)} for k, t in graph.tensors.items()},
            "ops": [{"kind": o.kind, "inputs": o.inputs, "output": o.output, "layer": o.layer, "w_bits": o.w_bits,
                     "stride": o.stride, "act": o.act} for o in graph.ops],
            "meta": json.loads(json.dumps(graph.meta, default=str))}
