"""Elastic MobileNetV3 blocks composed from :mod:`qfa.nn.elastic.ops`.

Each block's forward takes its :class:`~qfa.core.space.BlockSpec`; sizes follow from it and the
input. Built with all choices a block belongs to the supernet; built with one spec's choices
it is a layer of an extracted subnet.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from qfa.core.space import BlockSpec, QBits, mid_channels, se_channels
from qfa.nn.elastic.ops import ElasticConv2d
from qfa.nn.quant import deploy_quant

__all__ = ["ElasticSE", "ElasticMBConv", "se_channels"]


class ElasticSE(nn.Module):
    """Squeeze-and-excite over the leading channels; fixed precision ``bits`` (FP by default)."""

    def __init__(self, max_channels: int, bits: QBits, act_quant: str) -> None:
        super().__init__()
        self.bits = QBits(*bits)
        kw = dict(w_bits=(self.bits.w,), a_bits=(self.bits.a,), act_signed=False,
                  act_quant=act_quant, bn=False, bias=True)
        red = se_channels(max_channels)
        self.reduce = ElasticConv2d(max_channels, red, act="relu", **kw)
        self.expand = ElasticConv2d(red, max_channels, act="hsigmoid", **kw)

    def forward(self, x: torch.Tensor, deployed: bool = False) -> torch.Tensor:
        c = x.shape[1]
        y = x.mean((2, 3), keepdim=True)  # the file's MEAN writes onto the reduce conv's grid (8-bit if FP)
        y = self.reduce(y, se_channels(c), self.bits, deployed=deployed)
        return x * self.expand(y, c, self.bits, deployed=deployed)


class ElasticMBConv(nn.Module):
    """Inverted residual: [expand 1x1] -> depthwise kxk -> [SE] -> project 1x1 (+ identity).

    Args:
        in_ch, out_ch, stride, act, se: the slot's fixed structure.
        mids: mid channel counts offered (from the expand ratios); ``(in_ch,)`` with
            ``has_expand=False`` for the first block, which has no expand conv.
        kernels: depthwise kernel sizes offered.
        bits: bitwidths the quantizer banks serve, one (w_bits, a_bits) pair of tuples per
            conv (expand, depthwise, project; expand omitted when there is none).
        dw_signed: the depthwise input is signed when it is the block input (first block).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, act: str, se: bool, *,
                 mids: tuple[int, ...], kernels: tuple[int, ...], bits: list[tuple[tuple[int, ...], tuple[int, ...]]],
                 has_expand: bool, se_bits: QBits, act_quant: str) -> None:
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.residual = stride == 1 and in_ch == out_ch
        max_mid = max(mids)
        bits = list(bits)
        if has_expand:
            wb, ab = bits.pop(0)
            self.expand = ElasticConv2d(in_ch, max_mid, w_bits=wb, a_bits=ab, act_signed=True,
                                        act_quant=act_quant, act=act)
        else:
            self.expand = None
        (dwb, dab), (pwb, pab) = bits
        self.dw = ElasticConv2d(max_mid, max_mid, kernels, stride, w_bits=dwb, a_bits=dab,
                                act_signed=not has_expand, act_quant=act_quant, depthwise=True, act=act)
        self.se = ElasticSE(max_mid, se_bits, act_quant) if se else None
        self.project = ElasticConv2d(max_mid, out_ch, w_bits=pwb, a_bits=pab, act_signed=False,
                                     act_quant=act_quant)

    def forward(self, x: torch.Tensor, spec: BlockSpec, deployed: bool = False) -> torch.Tensor:
        """``deployed``: also quantize the 8-bit tensors an int8 target's file keeps between
        trained grids: the block input and the projection where a residual ADD reads them, the
        depthwise output that SE reads twice (the ADD's sum is the next reader's business:
        a block input, or written straight onto a trained grid)."""
        if deployed and self.residual:
            x = deploy_quant(x)
        if self.expand is not None:
            q_exp, q_dw, q_pw = spec.bits
            h = self.expand(x, mid_channels(self.in_ch, spec.expand), q_exp, deployed=deployed)
        else:
            (q_dw, q_pw), h = spec.bits, x
        h = self.dw(h, h.shape[1], q_dw, spec.kernel, deployed=deployed)
        if self.se is not None:
            h = self.se(deploy_quant(h) if deployed else h, deployed)
        h = self.project(h, self.out_ch, q_pw, deployed=deployed)
        if not self.residual:
            return h
        return x + (deploy_quant(h) if deployed else h)

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder mid channels by importance (L1 of the project weight), most important first,
        so that slicing the leading channels keeps the best ones (OFA's width re-organisation)."""
        if self.expand is None:
            return
        importance = self.project.weight.abs().sum(dim=(0, 2, 3))
        order = torch.argsort(importance, descending=True)
        self.project.weight.copy_(self.project.weight[:, order])
        for layer in (self.expand, self.dw):
            layer.weight.copy_(layer.weight[order])
            for t in (layer.bn.weight, layer.bn.bias, layer.bn.running_mean, layer.bn.running_var):
                t.copy_(t[order])
        if self.se is not None:
            self.se.reduce.weight.copy_(self.se.reduce.weight[:, order])
            self.se.expand.weight.copy_(self.se.expand.weight[order])
            self.se.expand.bias.copy_(self.se.expand.bias[order])
            # and the squeeze channels by the importance of the excite weights
            sq = torch.argsort(self.se.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True)
            self.se.expand.weight.copy_(self.se.expand.weight[:, sq])
            self.se.reduce.weight.copy_(self.se.reduce.weight[sq])
            self.se.reduce.bias.copy_(self.se.reduce.bias[sq])
