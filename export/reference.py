"""numpy pieces of the integer arithmetic that the lowering, the writers and the simulation
(:mod:`export.simulate`, which runs a graph) share: the convolution of NHWC arrays, ADD
constants as the file stores them, and the 8-bit ranges calibration fixes."""
from __future__ import annotations

import numpy as np

from export.ir import Graph, range_qparams

__all__ = ["fix_ranges", "conv_nhwc", "quantized_const", "const_scale"]


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


def fix_ranges(graph: Graph, stats: dict[str, list[float]]) -> Graph:
    """Give each unfixed tensor the 8-bit range covering its measured [min, max]."""
    for name, (lo, hi) in stats.items():
        t = graph.tensors[name]
        if not t.fixed:
            qp = range_qparams(lo, hi)
            t.scale, t.zero_point = qp["scale"], qp["zero_point"]
    return graph
