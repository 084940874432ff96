"""Graph rewrites that make the integer graph compute what the trained model computes.

:func:`apply_shifts` realises learned real-valued zero points exactly (see ``grid_qparams``):
a tensor holding (x + c) is produced by adding c (in a conv's bias, or by an ADD of a
constant) and consumed by convs whose bias subtracts c * sum(W); where a conv pads, the
padded taps would see -c instead of 0, so a constant border correction is added after it.
"""
from __future__ import annotations

import numpy as np

from .ir import Graph, Op, QTensor
from .reference import conv_nhwc

__all__ = ["apply_shifts"]


def _real_weight(op: Op) -> np.ndarray:
    w = op.weight.astype(np.float64)
    return w * op.w_scale if op.depthwise else w * op.w_scale[:, None, None, None]


def _new_tensor(graph: Graph, base: str, shape: tuple[int, ...]) -> str:
    name, i = f"{base}.raw", 0
    while name in graph.tensors:
        i += 1
        name = f"{base}.raw{i}"
    graph.tensors[name] = QTensor(name, shape)
    return name


def apply_shifts(graph: Graph) -> Graph:
    """Rewrite ``graph`` in place so that shifted tensors are produced and consumed exactly."""
    ops: list[Op] = []
    for op in graph.ops:
        tail: list[Op] = []
        if op.kind == "conv":
            c = graph.tensors[op.inputs[0]].shift
            if c:
                w = _real_weight(op)
                taps = w.sum(axis=(0, 1, 2)) if op.depthwise else w.sum(axis=(1, 2, 3))
                op.bias = op.bias - c * taps
                if op.pad:  # padded taps read 0 (= true -c); add back c * (their weights)
                    n, h, wd, ch = graph.tensors[op.inputs[0]].shape
                    inside = conv_nhwc(np.ones((1, h, wd, ch)), w, op.stride, op.pad, op.depthwise)
                    corr = c * (taps - inside)
                    out = op.output
                    mid = _new_tensor(graph, out, graph.tensors[out].shape)
                    tail.append(Op("addc", [mid], out, const=corr, act=op.act, layer=op.layer))
                    op.output, op.act = mid, "none"
        out_t = graph.tensors[(tail[-1] if tail else op).output]
        if out_t.shift:
            last = tail[-1] if tail else op
            if last.kind == "conv":
                last.bias = last.bias + out_t.shift
            elif last.kind == "addc":
                last.const = last.const + out_t.shift
            else:
                mid = _new_tensor(graph, out_t.name, out_t.shape)
                last.output = mid
                tail.append(Op("addc", [mid], out_t.name, const=np.full((1, 1, 1, 1), out_t.shift), layer=last.layer))
        ops.append(op)
        ops.extend(tail)
    graph.ops = ops
    return graph
