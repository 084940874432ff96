"""Measurement models: the folded graph of a subnet, cut into the pieces of :mod:`hw.entries`.

Each piece is lowered by the same ``export`` code as a shipped model (weights are random, but
ops, shapes, precision and the extra ops of learned zero points and sub-8-bit clamps are the
same), so a table entry and the shipped model run the same TFLite ops.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from export.ir import Graph, Op, QTensor
from export.targets import Target
from export.tflite import to_tflite
from qfa.nn.calibrate import calibrate
from export.fold import fold
from qfa.nn.quant import BatchQuant
from qfa.core.space import SearchSpace, SubnetSpec
from qfa.nn.supernet import Supernet, extract

from hw.entries import Entry, entries

__all__ = ["BlockFactory", "slice_graph", "split", "overhead_model"]

_HEAD = ("final_expand", "pool", "feature_mix", "classifier")


def slice_graph(g: Graph, ops: list) -> Graph:
    """The sub-graph of ``ops`` (one external input, one output) as a standalone graph."""
    produced = {op.output for op in ops}
    ext_in = sorted({i for op in ops for i in op.inputs} - produced) or [g.input]
    outside = {i for op in g.ops if op not in ops for i in op.inputs} | {g.output}
    ext_out = [t for t in produced if t in outside]
    if len(ext_in) != 1 or len(ext_out) != 1:
        raise ValueError(f"not a single-input single-output piece: in {ext_in}, out {ext_out}")
    names = produced | set(ext_in)
    return Graph({n: g.tensors[n] for n in names}, list(ops), ext_in[0], ext_out[0], dict(g.meta))


def split(g: Graph, spec: SubnetSpec) -> list[Graph]:
    """``g`` (the folded graph of ``spec``) cut into the pieces :func:`hw.entries.entries` lists."""
    prefixes = ["stem", "first."] + [f"s{si + 1}.b{bi}." for si, st in enumerate(spec.stages) for bi in range(len(st))]
    groups = [[op for op in g.ops if op.layer.startswith(p)] for p in prefixes]
    groups.append([op for op in g.ops if op.layer.startswith(_HEAD)])
    return [slice_graph(g, ops) for ops in groups]


@contextmanager
def _one_thread():
    """Float sums taken in another order can flip a rounding: a cached model must not depend
    on how many threads the process that built it had."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class BlockFactory:
    """Builds the pieces of any spec from one random supernet with trained-like quantizers
    (fractional zero points, so the shift ADDs a trained model has are there too)."""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.space = space
        with _one_thread():
            self.net = Supernet(space)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in self.net.modules():
                if isinstance(m, BatchQuant):
                    m.offset.uniform_(-0.5, 0.5, generator=g)
        self.images = torch.randn(32, space.in_channels, max(space.resolutions), max(space.resolutions), generator=g)

    def graph(self, spec: SubnetSpec, shifts: bool = True) -> Graph:
        with _one_thread():
            x = torch.nn.functional.interpolate(self.images, size=spec.resolution, mode="bilinear", align_corners=False)
            calibrate(self.net, spec, [x], len(x))
            return fold(extract(self.net, spec), x[:16], shifts=shifts)

    def pieces(self, spec: SubnetSpec, target: Target) -> list[tuple[Entry, bytes]]:
        """(entry, .tflite bytes) for every piece of ``spec``."""
        ents, pieces = entries(spec, target), split(target.lower(self.graph(spec)), spec)
        assert len(ents) == len(pieces)
        return [(e, to_tflite(piece, target)) for e, piece in zip(ents, pieces)]

    def whole(self, spec: SubnetSpec, target: Target) -> bytes:
        return to_tflite(target.lower(self.graph(spec)), target)


def overhead_model(target: Target) -> bytes:
    """A one-op model (1x1x1x8 requantize): its time is the per-invoke overhead."""
    t = {"x": QTensor("x", (1, 1, 1, 8), scale=0.1, zero_point=0), "y": QTensor("y", (1, 1, 1, 8), scale=0.2, zero_point=0)}
    return to_tflite(Graph(t, [Op("requant", ["x"], "y")], "x", "y"), target)

