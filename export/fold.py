"""Fold an extracted, calibrated subnet into the integer graph of :mod:`export.ir`.

BatchNorm goes into per-channel weight scales and biases, BatchQuant's alpha into the
activation scale, its offset into a zero point rounded to an integer (the rounding is
reported per tensor). Weights keep their trained integers. Tensors that no trained quantizer
owns (pre-activations, residual sums, SE internals, logits) get 8-bit ranges calibrated on
real images by running the integer graph itself (:mod:`export.simulate`).
"""
from __future__ import annotations

import json
from typing import Iterable

import numpy as np
import torch

from export.ir import Graph, Op, QTensor, grid_qparams
from export.lower import apply_shifts
from export.simulate import RANGE_BATCH, calibrate_ranges

from qfa.nn.elastic.blocks import ElasticMBConv, ElasticSE
from qfa.nn.elastic.ops import ElasticConv2d
from qfa.nn.fused import EPS as _EPS, range_params
from qfa.nn.quant import BatchQuant, LSQActQuant, int8_per_channel
from qfa.core.space import BlockSpec, QBits
from qfa.nn.supernet import Subnet

__all__ = ["fold", "act_grid", "fold_weight"]


@torch.no_grad()
def act_grid(q: torch.nn.Module) -> tuple[float, float, int, int]:
    """(scale, real-valued zero point, qmin, qmax) of an activation quantizer in eval mode."""
    if isinstance(q, LSQActQuant):
        s = float(q.step.abs().clamp(min=_EPS))
        return s, -float(q.beta) / s, q.qmin, q.qmax
    s, z = range_params(q.running_min, q.running_max, q.qmin, q.qmax)
    if isinstance(q, BatchQuant):  # x^ = (q - z - offset) * s / alpha
        return float(s) / float(q.alpha), float(z) + float(q.offset), q.qmin, q.qmax
    return float(s), float(z), q.qmin, q.qmax  # MinMax: alpha 1, offset 0


@torch.no_grad()
def fold_weight(conv: ElasticConv2d, w_bits: int, kernel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int,
                                                                       np.ndarray | None]:
    """Integer weight in TFLite layout, positive per-channel scales, real bias, clipped count,
    and for an FP conv its real folded weights (TFLite layout), else None.

    LSQ weights keep their integers (the trained grid); FP weights are put on a per-channel
    symmetric 8-bit grid for int8 targets (the one place the export approximates the trained
    model) and kept real for float targets.
    """
    w = conv.weight.double()
    out_ch = w.shape[0]
    wq = conv.wq.get(w_bits, kernel if conv.depthwise else None)
    if wq is not None:
        s = wq.step.double().abs().clamp(min=_EPS)
        qint = (w / s).clamp(wq.qmin, wq.qmax).round()
        scale = s.expand(out_ch).clone()
    else:
        qint, scale = int8_per_channel(w)
        scale = scale.flatten()
    if conv.bn is not None:
        bn = conv.bn
        g = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = bn.bias.double() - bn.running_mean.double() * g
    else:
        g, bias = torch.ones(out_ch, dtype=torch.float64), torch.zeros(out_ch, dtype=torch.float64)
    if conv.bias is not None:
        bias = bias + conv.bias.double() * g
    scale = scale * g
    neg = scale < 0
    qint[neg] = -qint[neg]
    clipped = int((qint > 127).sum())
    qint = qint.clamp(-128, 127)
    scale = scale.abs().clamp(min=1e-12)
    layout = (1, 2, 3, 0) if conv.depthwise else (0, 2, 3, 1)  # (1,k,k,C) / (O,k,k,I)
    q = qint.numpy().astype(np.int8).transpose(layout)
    real = None if wq is not None else np.ascontiguousarray((w * g[:, None, None, None]).numpy().transpose(layout))
    return np.ascontiguousarray(q), scale.numpy(), bias.numpy(), clipped, real


class _Builder:
    def __init__(self) -> None:
        self.tensors: dict[str, QTensor] = {}
        self.ops: list[Op] = []
        self.clipped = 0

    def tensor(self, name: str, shape: tuple[int, ...], **qp) -> str:
        assert name not in self.tensors, name
        self.tensors[name] = QTensor(name, tuple(int(s) for s in shape), **qp)
        return name

    def op(self, kind: str, inputs: list[str], output: str, shape: tuple[int, ...], **kw) -> str:
        self.tensor(output, shape, **kw.pop("qp", {}))
        kw.setdefault("layer", output)
        self.ops.append(Op(kind, inputs, output, **kw))
        return output

    def on_grid(self, x: str, conv: ElasticConv2d, a_bits: int, kernel: int | None, name: str) -> str:
        """``x`` requantized onto the conv's trained input grid (FP input: ``x`` itself)."""
        q = conv.aq.get(a_bits, kernel if conv.depthwise else None)
        if q is None:
            return x
        s, z, qmin, qmax = act_grid(q)
        return self.op("requant", [x], f"{name}.in", self.tensors[x].shape, qp=grid_qparams(s, z, qmin, qmax))

    def conv(self, x: str, conv: ElasticConv2d, bits: QBits, name: str, kernel: int | None = None,
             act: str | None = None) -> str:
        kernel = kernel or conv.kernels[-1]
        xin = self.on_grid(x, conv, bits.a, kernel, name)
        w, scale, bias, clipped, real = fold_weight(conv, bits.w, kernel)
        self.clipped += clipped
        act = conv.act if act is None else act
        n, h, wd, _ = self.tensors[xin].shape
        out_ch = w.shape[3] if conv.depthwise else w.shape[0]
        p, st = kernel // 2, conv.stride
        shape = (n, (h + 2 * p - kernel) // st + 1, (wd + 2 * p - kernel) // st + 1, out_ch)
        kw = dict(weight=w, w_scale=scale, bias=bias, w_bits=min(bits.w, 8), stride=st, pad=p,
                  depthwise=conv.depthwise, layer=name, fweight=real)
        if act == "hsigmoid":  # clip(x/6 + 1/2, 0, 1): relu_n1_to_1 on a [0, 1] output grid
            return self.op("conv", [xin], name, shape, qp=dict(scale=1 / 255, zero_point=-128),
                           **{**kw, "w_scale": scale / 6, "bias": bias / 6 + 0.5,
                              "fweight": None if real is None else real / 6}, act="relu_n1_to_1")
        if act == "relu":
            return self.op("conv", [xin], name, shape, act="relu", **kw)
        y = self.op("conv", [xin], name + (".pre" if act else ""), shape, **kw)
        if act == "hswish":
            return self.op("hswish", [y], name, shape)
        assert act is None, act
        return y

    def block(self, x: str, blk: ElasticMBConv, spec: BlockSpec, name: str) -> str:
        if blk.expand is not None:
            q_exp, q_dw, q_pw = spec.bits
            h = self.conv(x, blk.expand, q_exp, f"{name}.expand")
        else:
            (q_dw, q_pw), h = spec.bits, x
        h = self.conv(h, blk.dw, q_dw, f"{name}.dw", spec.kernel)
        if blk.se is not None:
            h = self.se(h, blk.se, f"{name}.se")
        h = self.conv(h, blk.project, q_pw, f"{name}.project")
        if blk.residual:
            h = self.op("add", [x, h], f"{name}.add", self.tensors[h].shape)
        return h

    def se(self, x: str, se: ElasticSE, name: str) -> str:
        n, _, _, c = self.tensors[x].shape
        m = self.op("mean", [x], f"{name}.mean", (n, 1, 1, c))
        r = self.conv(m, se.reduce, se.bits, f"{name}.reduce")
        g = self.conv(r, se.expand, se.bits, f"{name}.expand")
        return self.op("mul", [x, g], f"{name}.mul", self.tensors[x].shape)

    def fuse_requants(self, graph_input: str) -> str:
        """Let a producer write straight onto its only consumer's grid (no QUANTIZE op)."""
        for r in [op for op in self.ops if op.kind == "requant"]:
            src = r.inputs[0]
            if sum(src in op.inputs for op in self.ops) != 1:
                continue
            self.ops.remove(r)
            del self.tensors[src]
            if src == graph_input:
                graph_input = r.output
                continue
            prod = next(op for op in self.ops if op.output == src)
            prod.output = r.output
        return graph_input


def fold(subnet: Subnet, calib_images: Iterable[torch.Tensor] | torch.Tensor, meta: dict | None = None,
         shifts: bool = True) -> Graph:
    """The folded integer graph of an extracted subnet (eval mode, calibrated).

    ``calib_images``: NCHW real images at the subnet's resolution (a tensor or batches) used to
    fix the 8-bit ranges of tensors without a trained quantizer. ``shifts=False`` leaves learned
    zero points' fractional parts out: only for float export to converters that re-calibrate.
    """
    net, spec = subnet.eval(), subnet.spec
    s = net.space
    b = _Builder()
    r = spec.resolution
    x = b.tensor("input", (1, r, r, s.in_channels))
    h = b.conv(x, net.stem, s.stem_bits, "stem")
    h = b.block(h, net.first, BlockSpec(3, 1, spec.first), "first")
    for si, (blocks, stage) in enumerate(zip(net.stages, spec.stages)):
        for bi, (blk, bs) in enumerate(zip(blocks, stage)):
            h = b.block(h, blk, bs, f"s{si + 1}.b{bi}")
    h = b.conv(h, net.final_expand, spec.head[0], "final_expand")
    n, _, _, c = b.tensors[h].shape
    h = b.op("mean", [h], "pool", (n, 1, 1, c))
    h = b.conv(h, net.feature_mix, spec.head[1], "feature_mix")
    logits = b.conv(h, net.classifier, s.classifier_bits, "classifier")
    graph_input = b.fuse_requants(x)
    g = Graph(b.tensors, b.ops, graph_input, logits,
              meta={"spec": json.loads(spec.dumps()), "hash": spec.hash,
                    "spec_str": str(spec), "resolution": r, "weights_clipped": b.clipped, **(meta or {})})
    if shifts:
        apply_shifts(g)
    else:
        for t in g.tensors.values():
            t.shift = 0.0
    if isinstance(calib_images, torch.Tensor):
        calib_images = calib_images.split(RANGE_BATCH)
    calibrate_ranges(g, calib_images)
    return g.validate()
