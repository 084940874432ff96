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


def _hswish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _hswish_inverse(y: float) -> float:
    """The x >= -1.5 branch of hardswish's inverse."""
    return y if y >= 3.0 else (-3.0 + np.sqrt(9.0 + 24.0 * max(y, -0.375))) / 2.0


CLIP_FACTORS = np.linspace(1.0, 0.2, 17)  # bounds on |value|, fractions of the largest measured, fix_ranges tries


def fix_ranges(graph: Graph, stats: dict[str, list[np.ndarray]]) -> Graph:
    """Give each unfixed tensor an 8-bit range from ``stats`` (samples of its values on the
    calibration images; tensors of one shape sampled at the same positions).

    Tensors are fixed from the output back, so every reader's output range is known:
    - values no reader can tell apart are not covered: one read only on its way onto a trained
      low-bit grid (an ADD of the shift constant, a requantization, a hardswish before them)
      needs nothing beyond that grid's end codes (its 8-bit step then up to ~60x finer);
    - it is then clipped at the bound on |value| (:data:`CLIP_FACTORS` of the largest left) whose
      rounding and clipping error, as its readers see it (after their own clamping; a residual
      ADD with its other input), is least. A tensor no op reads (the logits) keeps its range.

    Min/max ranges let a few outliers set the step: measured, the stem of a W2A2 subnet (values
    up to 21, 99% below 11.5) was rounded so coarsely that its .tflite lost 5 points of top-1
    to its fake-quant model (docs/results.md, "Where the deployed W2A2 subnet lost accuracy")."""
    readers: dict[str, list] = {}
    for op in graph.ops:
        for i in op.inputs:
            readers.setdefault(i, []).append(op)
    made_at = {op.output: k for k, op in enumerate(graph.ops)}

    def interval(name: str) -> tuple[float, float]:
        t = graph.tensors[name]
        if t.is_float or not t.fixed:
            return -np.inf, np.inf
        return (t.qmin - t.zero_point) * t.scale, (t.qmax - t.zero_point) * t.scale

    def need(r, name: str) -> tuple[float, float]:
        """The values of ``name`` that reader ``r`` can tell apart."""
        olo, ohi = interval(r.output)
        if r.kind == "requant":
            return olo, ohi
        if r.kind == "addc":
            c = np.asarray(r.const, np.float64)
            return olo - float(c.max()), ohi - float(c.min())
        if r.kind == "hswish" and np.isfinite(ohi):
            return (-3.0 if olo < 0 else 0.0), _hswish_inverse(ohi)
        return -np.inf, np.inf

    def seen_error(r, name: str, v: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Mean squared error that rounding ``v`` to each row of ``q`` leaves in reader ``r``'s output."""
        olo, ohi = interval(r.output)
        if r.kind in ("requant", "addc"):
            lo, hi = need(r, name)
            return np.mean((np.clip(q, lo, hi) - np.clip(v, lo, hi)) ** 2, axis=1)
        if r.kind == "hswish":
            return np.mean((np.clip(_hswish(q), olo, ohi) - np.clip(_hswish(v), olo, ohi)) ** 2, axis=1)
        other = [i for i in r.inputs if i != name]
        if r.kind == "add" and other and other[0] in samples and len(samples[other[0]]) == len(v):
            b = samples[other[0]]
            return np.mean((np.clip(q + b, olo, ohi) - np.clip(v + b, olo, ohi)) ** 2, axis=1)
        return np.mean((q - v) ** 2, axis=1)

    def rounded(v: np.ndarray, ranges: list[tuple[float, float]]) -> np.ndarray:
        """``v`` rounded onto the 8-bit grid of each range: one row per range."""
        qp = [range_qparams(lo, hi) for lo, hi in ranges]
        scale = np.array([p["scale"] for p in qp])[:, None]
        zp = np.array([p["zero_point"] for p in qp], np.float64)[:, None]
        return (np.clip(np.round(v / scale) + zp, -128, 127) - zp) * scale

    samples = {n: np.concatenate(v).astype(np.float64) for n, v in stats.items()}
    for name in sorted(stats, key=lambda n: made_at.get(n, -1), reverse=True):
        t = graph.tensors[name]
        if t.fixed:
            continue
        v = samples[name]
        rs = readers.get(name, [])
        if rs:
            needs = [need(r, name) for r in rs]
            v = np.clip(v, min(n[0] for n in needs), max(n[1] for n in needs))
        lo, hi = float(v.min()), float(v.max())
        if rs:
            m = max(-lo, hi)
            ranges = [(max(lo, -f * m), min(hi, f * m)) for f in CLIP_FACTORS]
            q = rounded(v, ranges)
            lo, hi = ranges[int(np.argmin(sum(seen_error(r, name, v, q) for r in rs)))]
        qp = range_qparams(lo, hi)
        t.scale, t.zero_point = qp["scale"], qp["zero_point"]
    return graph
