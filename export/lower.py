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

:func:`to_float` deploys full-precision convs as float32 ops, with QUANTIZE / DEQUANTIZE where
the graph crosses between int8 and float (float targets).

:func:`fit_xnnpack` keeps the file inside the scale limits XNNPACK checks when it builds its
runtime (a model that breaks one does not load at all under the default interpreter), and
:func:`xnnpack_limit_errors` names any that remain.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from export.ir import Graph, Op, QTensor
from export.reference import conv_nhwc

__all__ = ["apply_shifts", "refine_weights", "decompose_hswish", "fit_xnnpack", "xnnpack_limit_errors", "requant_scale",
           "to_float"]


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
                w = op.grid_weight()
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


def to_float(graph: Graph) -> Graph:
    """Compute the full-precision convs (those with ``fweight``) and what follows them in float32,
    as a float target deploys them (rewrites ``graph`` in place).

    Which ops are float: an FP conv; hswish, addc and mean as their input; a residual ADD as its
    block's branch (the second input), a MUL as the tensor it gates (the first); an 8-bit conv
    whose output the trained model keeps real and a float op reads (the classifier, an SE gate)
    is computed in float on its trained input grid (QUANTIZE + DEQUANTIZE) with its grid weights,
    so that its output is not rounded onto an int8 grid; the model's input is float32. An int8
    tensor read by a float op is DEQUANTIZEd, a float one read by an int8 op QUANTIZEd onto the
    tensor's own int8 parameters (a conv's learned grid, the hard-sigmoid's [0, 1] grid, or the
    calibrated range), once per tensor. A float value written onto a learned grid includes the
    grid's shift (it is in the producing conv's bias), so the QUANTIZE that makes the grid is exact.
    An all-FP subnet is then a float32 model but for the space's fixed 8-bit convs.
    """
    ops: list[Op] = []
    tensors = graph.tensors
    twins: dict[str, str] = {}  # a tensor's name -> the name of its other representation
    made: set[str] = set()      # tensors produced so far
    tin = tensors[graph.input]
    if tin.shift:
        raise ValueError(f"{graph.input}: a float model input cannot feed a shifted (learned) grid")

    def floated(name: str) -> None:
        """Turn ``name`` float32, keeping its int8 parameters in a twin tensor."""
        t = tensors[name]
        twin = dataclasses.replace(t, name=f"{name}.q")
        tensors[twin.name] = twin
        twins[name], twins[twin.name] = twin.name, name
        tensors[name] = QTensor(name, t.shape, dtype="float32")

    def read(name: str, as_float: bool, layer: str) -> str:
        if tensors[name].is_float == as_float:
            return name
        if name in twins and twins[name] in made:
            return twins[name]
        if as_float:  # int8 -> float32
            out = f"{name}.f"
            tensors[out] = QTensor(out, tensors[name].shape, dtype="float32")
            ops.append(Op("dequant", [name], out, layer=layer, is_float=True))
        else:  # float32 -> int8, onto the tensor's int8 parameters
            out = twins[name]
            ops.append(Op("requant", [name], out, layer=layer))
        twins[name], twins[out] = out, name
        made.add(out)
        return out

    def on_grid_in_float(op: Op) -> bool:
        """An 8-bit conv whose output the trained model keeps real: the logits, or an SE gate
        whose MUL is float; the file rounds nothing the trained model does not."""
        readers = [c for c in graph.ops if op.output in c.inputs]
        return op.output == graph.output or bool(readers) and all(
            c.kind == "mul" and c.inputs[1] == op.output and tensors[c.inputs[0]].is_float for c in readers)

    floated(graph.input)
    made.add(graph.input)
    for op in graph.ops:
        if op.kind == "conv":
            op.is_float = op.fweight is not None or on_grid_in_float(op)
        elif op.kind != "requant":  # QUANTIZE takes either (from float: the trained model's rounding)
            op.is_float = tensors[op.inputs[1 if op.kind == "add" else 0]].is_float
        if op.kind == "conv" and op.is_float and op.fweight is None:  # an 8-bit conv on its input grid
            grid = read(op.inputs[0], False, op.layer)
            out = f"{grid}.dq"
            tensors[out] = QTensor(out, tensors[grid].shape, dtype="float32")
            ops.append(Op("dequant", [grid], out, layer=op.layer, is_float=True))
            op.inputs = [out]
        elif op.kind != "requant":
            op.inputs = [read(i, op.is_float, op.layer) for i in op.inputs]
        ops.append(op)
        made.add(op.output)
        if op.is_float:
            floated(op.output)
            if op.act == "relu_n1_to_1":  # the hard-sigmoid: its int8 [0, 1] grid clamped at 0
                op.act = "relu_0_to_1"
    used = {graph.input, *(i for op in ops for i in op.inputs), *(op.output for op in ops)}
    graph.ops = ops
    graph.tensors = {k: t for k, t in tensors.items() if k in used}
    return graph


def refine_weights(graph: Graph, packs_int4: Callable[[Op], bool] = lambda op: False) -> Graph:
    """Multiply each conv's integer weights per output channel by the largest m that keeps them
    in their storage (int8, or int4 where ``packs_int4(op)``) and divide its scale by m.

    Exact for the weights; the bias is then rounded on an m-times finer grid. Idempotent for
    one storage choice; refine an unrefined graph per target (int4 needs the small integers).
    """
    for op in graph.ops:
        if op.kind != "conv" or op.is_float:
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
# The gate's constant 3/sqrt6 is exactly 127.5 LSB of its [0, sqrt6] output grid, so every input
# at its zero point lands on a rounding tie, which XNNPACK's ADD rounds down and the builtin
# kernels up (measured: 3-4% of a gate's outputs 1 LSB apart). 1/256 LSB lower, both round down.
_GATE_CONST = 3.0 / _R6 - _R6 / 255.0 / 256.0


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
        if op.kind != "hswish" or op.is_float:  # float HARD_SWISH is fast everywhere
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
        ops.append(Op("addc", [p], gate, const=np.full((1, 1, 1, 1), _GATE_CONST), layer=op.layer))
        ops.append(Op("mul", [p, gate], op.output, layer=op.layer))
    graph.ops = ops
    return graph


# XNNPACK's int8 operator limits (xnn_create_*; checked in float32 when the delegate builds its
# runtime, and one failure refuses the whole model: "failed to create XNNPACK runtime"):
# conv requantization scale in_scale * w_scale / out_scale < 256; ADD input/output scale ratios
# in [2^-10, 2^8); MUL a_scale * b_scale / out_scale in [2^-16, 2^8); HARD_SWISH and QUANTIZE
# (int8 -> int8) input/output in [2^-8, 2^7]; a fused activation's output range not empty.
CONV_REQUANT_MAX = 256.0


def requant_scale(graph: Graph, op: Op) -> np.ndarray:
    """A conv's per-channel requantization scale in float32, as XNNPACK computes and checks it."""
    f = np.float32
    return f(graph.tensors[op.inputs[0]].scale) * op.w_scale.astype(f) / f(graph.tensors[op.output].scale)


def fit_xnnpack(graph: Graph) -> Graph:
    """Give every conv output channel whose integer weights are all zero the weight scale that
    makes its requantization scale 1 (rewrites ``graph`` in place).

    Such a channel outputs its bias alone, so its weight scale is arbitrary, and training leaves
    it at whatever its quantizer last held: measured up to 1,988x the output scale for a dead
    depthwise channel of a short-schedule W2A2 subnet, which XNNPACK refuses. With scale 1 the
    int32 bias grid is the output grid, so the channel's output is the bias rounded once, as
    the trained model rounds it: exact.
    """
    for op in graph.ops:
        if op.kind != "conv" or op.is_float:
            continue
        axis = (0, 1, 2) if op.depthwise else (1, 2, 3)
        dead = ~np.any(op.weight != 0, axis=axis)
        if dead.any():
            w_scale = op.w_scale.astype(np.float64).copy()
            w_scale[dead] = graph.tensors[op.output].scale / graph.tensors[op.inputs[0]].scale
            op.w_scale = w_scale
    return graph


def xnnpack_limit_errors(graph: Graph) -> list[str]:
    """Each op of ``graph`` outside XNNPACK's int8 limits, in words (empty: the file loads)."""
    f = np.float32
    sc = {k: f(t.scale) for k, t in graph.tensors.items() if not t.is_float}
    errors = []

    def ratio(what: str, op: Op, r: float, lo: float, hi: float, hi_open: bool = True) -> None:
        if not (lo <= r and (r < hi if hi_open else r <= hi)):
            errors.append(f"{op.layer or op.output}: {op.kind} {what} {r:.4g} outside [{lo:.4g}, {hi:.4g}"
                          f"{')' if hi_open else ']'}")

    for op in graph.ops:
        if op.is_float or op.kind == "dequant" or graph.tensors[op.inputs[0]].is_float:
            continue  # XNNPACK's float ops and QUANTIZE from float have no scale limits
        out = sc[op.output]
        if op.kind == "conv":
            m = requant_scale(graph, op)
            if np.any(m >= CONV_REQUANT_MAX):
                errors.append(f"{op.layer or op.output}: conv requantization scale {float(m.max()):.4g} "
                              f">= {CONV_REQUANT_MAX:g} ({int((m >= CONV_REQUANT_MAX).sum())} channels)")
        elif op.kind == "add":
            for i in op.inputs:
                ratio("input/output scale", op, float(sc[i] / out), 2.0 ** -10, 2.0 ** 8)
        elif op.kind == "addc":
            ratio("input/output scale", op, float(sc[op.inputs[0]] / out), 2.0 ** -10, 2.0 ** 8)
        elif op.kind == "mul":
            ratio("input scales/output scale", op, float(sc[op.inputs[0]] * sc[op.inputs[1]] / out), 2.0 ** -16, 2.0 ** 8)
        elif op.kind in ("hswish", "requant"):
            ratio("input/output scale", op, float(sc[op.inputs[0]] / out), 2.0 ** -8, 2.0 ** 7, hi_open=False)
        if op.act == "relu" and graph.tensors[op.output].zero_point >= graph.tensors[op.output].qmax:
            errors.append(f"{op.layer or op.output}: fused relu leaves an empty output range")
    return errors
