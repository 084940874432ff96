"""numpy executor of the folded graph: the integer reference a .tflite file is checked against,
and the pass that calibrates the 8-bit ranges of tensors no trained quantizer owns."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from export.ir import Graph, Op, QTensor, range_qparams

__all__ = ["run", "calibrate_ranges", "conv_nhwc", "quantized_const", "const_scale"]


def conv_nhwc(x: np.ndarray, w: np.ndarray, stride: int, pad: int, depthwise: bool) -> np.ndarray:
    """Convolution of NHWC ``x`` with real weights (O, kh, kw, I) or depthwise (1, kh, kw, C)."""
    if pad:
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    n, h, wd, _ = x.shape
    k = w.shape[1]
    ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
    out = None
    for dy in range(k):
        for dx in range(k):
            patch = x[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride, :]
            term = patch * w[0, dy, dx] if depthwise else patch @ w[:, dy, dx, :].T
            out = term if out is None else out + term
    return out


def const_scale(c: np.ndarray, out_scale: float | None) -> float:
    """Scale of an ADD's int8 constant: max|c|/127 (a scalar is then exact), but never below
    2^-9 of the output scale. XNNPACK takes a quantized ADD only when each input/output scale
    ratio is in [2^-10, 2^8); a smaller constant scale would push the op off XNNPACK (measured:
    blocks up to 3x slower). The cost is a rounding of the constant below 1/512 output LSB."""
    floor = out_scale * 2.0 ** -9 if out_scale else 0.0
    return max(float(np.abs(c).max()) / 127.0, floor, 1e-12)


def quantized_const(c: np.ndarray, out_scale: float | None = None) -> np.ndarray:
    """The constant as the ADD reads it (symmetric int8 on :func:`const_scale`)."""
    scale = const_scale(c, out_scale)
    return np.round(c / scale).clip(-127, 127) * scale


def _op(op: Op, args: list[np.ndarray], tensors: dict[str, QTensor]) -> np.ndarray:
    if op.kind == "conv":
        x = args[0]
        w = op.weight.astype(np.float32) * op.w_scale.astype(np.float32)[:, None, None, None] if not op.depthwise \
            else op.weight.astype(np.float32) * op.w_scale.astype(np.float32)
        bias = op.bias
        tin = tensors[op.inputs[0]]
        if tin.fixed:  # the int32 bias TFLite stores
            bq, grid = op.int32_bias(tin.scale)
            bias = bq * grid
        y = conv_nhwc(x, w, op.stride, op.pad, op.depthwise) + bias.astype(np.float32)
        if op.act == "relu":
            y = np.maximum(y, 0)
        elif op.act == "relu_n1_to_1":
            y = np.clip(y, -1, 1)
        return y
    if op.kind == "addc":
        y = args[0] + quantized_const(op.const, tensors[op.output].scale).astype(np.float32)
        return np.maximum(y, 0) if op.act == "relu" else y
    if op.kind == "hswish":
        return args[0] * np.clip(args[0] + 3, 0, 6) / 6
    if op.kind == "add":
        return args[0] + args[1]
    if op.kind == "mul":
        return args[0] * args[1]
    if op.kind == "mean":
        return args[0].mean(axis=(1, 2), keepdims=True)
    if op.kind == "requant":
        return args[0]
    raise ValueError(f"unknown op {op.kind}")


def run(graph: Graph, x: np.ndarray, stats: dict[str, list[float]] | None = None,
        integer_output: bool = True, trace: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Run ``graph`` on real-valued NHWC input ``x``.

    Fixed tensors are quantized exactly as the integer model does; unfixed ones stay real and
    their min/max go into ``stats`` (calibration). Returns int8 output values when the output
    tensor is fixed and ``integer_output``, otherwise real values.
    """
    env: dict[str, np.ndarray] = {} if trace is None else trace

    def store(name: str, y: np.ndarray) -> None:
        t = graph.tensors[name]
        if t.fixed:
            env[name] = t.dequantize(t.quantize(y)).astype(np.float32)
        else:
            env[name] = y.astype(np.float32)
            if stats is not None:
                lo, hi = stats.get(name, (np.inf, -np.inf))
                stats[name] = [min(lo, float(y.min())), max(hi, float(y.max()))]

    store(graph.input, np.asarray(x, np.float32) + graph.tensors[graph.input].shift)
    for op in graph.ops:
        store(op.output, _op(op, [env[i] for i in op.inputs], graph.tensors))
    out = graph.tensors[graph.output]
    y = env[graph.output]
    return out.quantize(y) if (out.fixed and integer_output) else y


def calibrate_ranges(graph: Graph, batches: Iterable[np.ndarray]) -> Graph:
    """Fix the 8-bit range of every unfixed tensor from real NHWC batches, in graph order.

    Tensors are fixed one topological level at a time would be exact but slow; instead all
    unfixed tensors are measured in one pass with their upstream unfixed tensors kept real,
    then fixed. The residual error this leaves is 8-bit rounding of upstream intermediates.
    """
    stats: dict[str, list[float]] = {}
    for xb in batches:
        run(graph, xb, stats, integer_output=False)
    for name, (lo, hi) in stats.items():
        t = graph.tensors[name]
        if not t.fixed:
            qp = range_qparams(lo, hi)
            t.scale, t.zero_point = qp["scale"], qp["zero_point"]
    return graph
