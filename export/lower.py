"""Graph rewrites that make the integer graph compute what the trained model computes.

:func:`apply_shifts` realises learned real-valued zero points exactly (see ``grid_qparams``):
a tensor holding (x + c) is produced by adding c (in a conv's bias, or by an ADD of a
constant) and consumed by convs whose bias subtracts c * sum(W); where a conv pads, the
padded taps would see -c instead of 0, so a constant border correction is added after it.

:func:`refine_weights` stores low-bit weights as multiples of their trained integers: the same
real weights, but a finer int32 bias grid (input scale x weight scale), which otherwise rounds
a 2-bit layer's folded bias by up to half an accumulator step (measured: up to 0.28 on a
0.99-scale 2-bit grid, enough to cost a W2A2 subnet 4-7 points of top-1).

:func:`decompose_hswish` replaces HARD_SWISH by an ADD and a MUL, for runtimes whose int8
HARD_SWISH is slow (docs/results.md, "Which precisions buy speed").
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from export.ir import Graph, Op, QTensor
from export.reference import conv_nhwc

__all__ = ["apply_shifts", "refine_weights", "decompose_hswish"]


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


def refine_weights(graph: Graph, packs_int4: Callable[[Op], bool] = lambda op: False) -> Graph:
    """Multiply each conv's integer weights per output channel by the largest m that keeps them
    in their storage (int8, or int4 where ``packs_int4(op)``) and divide its scale by m.

    Exact for the weights; the bias is then rounded on an m-times finer grid. Idempotent for
    one storage choice; refine an unrefined graph per target (int4 needs the small integers).
    """
    for op in graph.ops:
        if op.kind != "conv":
            continue
        limit = 7 if packs_int4(op) else 127
        axis = (0, 1, 2) if op.depthwise else (1, 2, 3)
        peak = np.abs(op.weight.astype(np.int32)).max(axis=axis)
        m = np.where(peak > 0, limit // np.maximum(peak, 1), 1).clip(min=1)
        if np.all(m == 1):
            continue
        mb = m if op.depthwise else m[:, None, None, None]
        op.weight = (op.weight.astype(np.int32) * mb).astype(np.int8)
        op.w_scale = op.w_scale / m
    return graph


_R6 = float(np.sqrt(6.0))


def decompose_hswish(graph: Graph) -> Graph:
    """hswish(p) = p * relu6(p + 3) / 6 = (p/sqrt6) * clip((p + 3)/sqrt6, 0, sqrt6): two ops.

    The producer chain of ``p`` (a conv, possibly followed by its border-correction ADD) is
    scaled by 1/sqrt6 together with the tensor scales, which leaves every integer unchanged;
    an ADD of 3/sqrt6 onto a [0, sqrt6] output grid is the gate (the int8 saturation is the
    relu6), and MUL of the two is hswish. The only new rounding is the 8-bit gate.
    """
    producer = {op.output: op for op in graph.ops}
    ops: list[Op] = []
    for op in graph.ops:
        if op.kind != "hswish":
            ops.append(op)
            continue
        p = op.inputs[0]
        if sum(p in o.inputs for o in graph.ops) != 1:
            raise ValueError(f"{p}: hswish input has other consumers")
        name = p
        while True:  # scale the linear chain that makes p
            t, prod = graph.tensors[name], producer[name]
            if t.scale is not None:
                t.scale /= _R6
            if prod.kind == "conv":
                prod.w_scale, prod.bias = prod.w_scale / _R6, prod.bias / _R6
                break
            if prod.kind != "addc":
                raise ValueError(f"{p}: hswish after {prod.kind} cannot be decomposed")
            prod.const = prod.const / _R6
            name = prod.inputs[0]
        gate = f"{op.output}.gate"
        graph.tensors[gate] = QTensor(gate, graph.tensors[p].shape, scale=_R6 / 255.0, zero_point=-128)
        ops.append(Op("addc", [p], gate, const=np.full((1, 1, 1, 1), 3.0 / _R6), layer=op.layer))
        ops.append(Op("mul", [p, gate], op.output, layer=op.layer))
    graph.ops = ops
    return graph
