"""Latency-table entries: which measured pieces a subnet is made of, keyed by geometry and by
the DEPLOYED precision of each conv (not the nominal bitwidth).

On a TFLite target every nominal weight width <= 8 deploys as int8 values (``i8``), or as
INT4 for CONV_2D weights <= 4 bits under ``tflite-int4w`` (``i4``); an activation grid below
8 bits adds a MINIMUM clamp (suffix ``c``). So W2A2, W3A3 and W4A4 share one entry, W8A8
another: nominal bitwidths that deploy identically share one measurement. Under a float
target a full-precision conv is ``f32`` (or ``f16``: fp16 weights), and since a piece then
starts with a DEQUANTIZE or a QUANTIZE or neither, depending on whether the piece before it
ends in float, its key also names its input's format (``f:`` / ``i:`` before the tokens).
"""
from __future__ import annotations

from typing import NamedTuple

from export.targets import Target
from qfa.core.space import FP, QBits, SearchSpace, SubnetSpec, mid_channels

__all__ = ["Entry", "token", "entries", "TOKENS", "FLOAT_TOKENS", "stage_geometry"]

TOKENS = ("i8", "i8c", "i4", "i4c", "f32", "f16")
FLOAT_TOKENS = ("f32", "f16")


def token(q: QBits, target: Target, depthwise: bool = False) -> str:
    if q.w == FP and target.float_io:
        return "f32" if target.fp == "float32" else "f16"
    w4 = target.int4_weights and not depthwise and q.w <= 4
    return ("i4" if w4 else "i8") + ("c" if q.a < 8 and q.a != FP else "")


class Entry(NamedTuple):
    kind: str          # stem | first | mb | head
    stage: int         # 1-based stage for mb, 0 otherwise
    pos: int           # 0: first block of a stage (stride, width change), 1: a later (residual) block
    resolution: int
    hw: int            # input height = width
    c_in: int
    c_out: int
    kernel: int
    mid: int
    stride: int
    act: str
    se: int
    skip: int
    prec: str          # deployed precision per conv, '/'-joined

    @property
    def key(self) -> str:
        return (f"{self.kind}|s{self.stage}p{self.pos}|r{self.resolution}|{self.hw}x{self.hw}x{self.c_in}>{self.c_out}"
                f"|k{self.kernel}|m{self.mid}|st{self.stride}|{self.act}|se{self.se}|sk{self.skip}|{self.prec}")


def _down(h: int, stride: int) -> int:
    return (h - 1) // stride + 1


def stage_geometry(space: SearchSpace, resolution: int) -> tuple[int, int, list[int]]:
    """(stem output size, head input size, input size of each stage)."""
    h = _down(resolution, space.stem_stride)
    stem_out, sizes = h, []
    for st in space.stages:
        sizes.append(h)
        h = _down(h, st.stride)
    return stem_out, h, sizes


def entries(spec: SubnetSpec, target: Target) -> list[Entry]:
    """The table entries ``spec`` is made of, in execution order."""
    s, r = spec.space, spec.resolution
    stem_out, head_hw, sizes = stage_geometry(s, r)
    last_float = target.float_io  # a float target's model input is float32

    def prec(toks: list[str]) -> str:
        """The tokens, and under a float target the format of the input (the last piece's output)."""
        nonlocal last_float
        fin = ("f:" if last_float else "i:") if target.float_io else ""
        last_float = toks[-1] in FLOAT_TOKENS  # a piece's output is in its last conv's format
        return fin + "/".join(toks)

    out = [Entry("stem", 0, 0, r, r, s.in_channels, s.stem_width, 3, 0, s.stem_stride, "hswish", 0, 0,
                 prec([token(s.stem_bits, target)])),
           Entry("first", 0, 0, r, stem_out, s.stem_width, s.first_width, 3, s.stem_width, 1, "relu", 0,
                 int(s.stem_width == s.first_width), prec([token(spec.first[0], target, True), token(spec.first[1], target)]))]
    c_in = s.first_width
    for si, (st, blocks) in enumerate(zip(s.stages, spec.stages)):
        h = sizes[si]
        for bi, b in enumerate(blocks):
            stride = st.stride if bi == 0 else 1
            toks = [token(q, target, dw) for q, dw in zip(b.bits, (False, True, False))]
            out.append(Entry("mb", si + 1, min(bi, 1), r, h, c_in, st.width, b.kernel, mid_channels(c_in, b.expand),
                             stride, st.act, int(st.se), int(stride == 1 and c_in == st.width), prec(toks)))
            h, c_in = _down(h, stride), st.width
    out.append(Entry("head", 0, 0, r, head_hw, c_in, s.num_classes, 1, s.final_expand_width, 1, "hswish", 0, 0,
                     prec([token(spec.head[0], target), token(spec.head[1], target)])))
    return out
