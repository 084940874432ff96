"""Run exported .tflite files with the LiteRT interpreter and compare them with the graph."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.ir import Graph
from export.targets import DELEGATES

__all__ = ["TFLiteModel", "load_failures", "op_diffs", "op_errors", "op_summary", "tensor_diffs"]


class TFLiteModel:
    """A .tflite file in ai-edge-litert, fed real-valued NHWC batches (quantized as the
    sidecar says: q = round((x + shift) / scale) + zero_point), under one of
    :data:`export.targets.DELEGATES` (the interpreter's default: XNNPACK)."""

    def __init__(self, model: str | Path | bytes, threads: int = 1, preserve: bool = False,
                 delegate: str = "xnnpack") -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
        if delegate not in DELEGATES:
            raise ValueError(f"unknown delegate {delegate!r}; expected one of {DELEGATES}")
        self.delegate = delegate
        kw: dict[str, Any] = {"num_threads": threads, "experimental_preserve_all_tensors": preserve}
        if delegate == "builtin":
            kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        if isinstance(model, (bytes, bytearray)):
            self.it = Interpreter(model_content=bytes(model), **kw)
        else:
            self.it = Interpreter(model_path=str(model), **kw)
        self.it.allocate_tensors()
        self.inp, self.out = self.it.get_input_details()[0], self.it.get_output_details()[0]

    def quantize_input(self, x: np.ndarray, shift: float = 0.0) -> np.ndarray:
        if not np.issubdtype(self.inp["dtype"], np.integer):  # a float model takes x as it is
            return np.ascontiguousarray(x, self.inp["dtype"])
        scale, zp = self.inp["quantization"]
        info = np.iinfo(self.inp["dtype"])
        v = np.floor((x + shift) / scale + 0.5) + zp
        return np.clip(v, info.min, info.max).astype(self.inp["dtype"])

    def invoke_q(self, q: np.ndarray) -> np.ndarray:
        """Integer output for one quantized input (batch 1)."""
        self.it.set_tensor(self.inp["index"], q)
        self.it.invoke()
        return self.it.get_tensor(self.out["index"]).copy()

    def logits(self, x: np.ndarray, shift: float = 0.0) -> np.ndarray:
        """Dequantized outputs for a real-valued NHWC batch, one invoke per image."""
        scale, zp = self.out["quantization"]
        outs = np.concatenate([self.invoke_q(self.quantize_input(x[i:i + 1], shift)) for i in range(len(x))])
        if not np.issubdtype(self.out["dtype"], np.integer):
            return outs.astype(np.float64)
        return (outs.astype(np.float64) - zp) * scale

    def tensors(self) -> dict[str, np.ndarray]:
        """Every tensor's current value by name (needs ``preserve=True``)."""
        return {d["name"]: self.it.get_tensor(d["index"]) for d in self.it.get_tensor_details()
                if d["name"] and not d["name"].endswith((".weight", ".bias"))}


def load_failures(model: bytes) -> dict[str, str]:
    """{delegate: the interpreter's first error line} for each runtime configuration
    (:data:`export.targets.DELEGATES`) that refuses the file; empty when every one loads it."""
    failures = {}
    for delegate in DELEGATES:
        try:
            TFLiteModel(model, delegate=delegate)
        except (RuntimeError, ValueError) as e:
            failures[delegate] = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return failures


def op_diffs(graph: Graph, model: TFLiteModel, x: np.ndarray):
    """Per op, in order: (op, TFLite's output - the simulated op (:mod:`export.simulate`) on
    TFLite's own inputs, in LSB; for a float32 output, relative to the output's largest
    magnitude), for one image (``model`` built with ``preserve=True``).

    This isolates each op from the propagation of earlier rounding differences (which
    sub-8-bit grids amplify): what is left is the runtime's kernels against the simulation."""
    model.invoke_q(model.quantize_input(x[:1], graph.tensors[graph.input].shift))
    yield from tensor_diffs(graph, model.delegate, model.tensors())


def tensor_diffs(graph: Graph, delegate: str, vals: dict[str, np.ndarray], arch: str = "x86_64"):
    """:func:`op_diffs` from every tensor of one invoke (by name), wherever the file ran (a CPU
    of ``arch``)."""
    import torch
    from export.simulate import DeployedModel
    sim = DeployedModel(graph, delegate, arch)
    nchw = lambda v: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2)))  # noqa: E731
    for op in graph.ops:
        args = [nchw(graph.tensors[i].dequantize(vals[i]).astype(np.float32)) for i in op.inputs]
        out = graph.tensors[op.output]
        ref = out.quantize(sim.op_output(op, args).numpy().transpose(0, 2, 3, 1))
        if out.is_float:
            yield op, (vals[op.output] - ref) / max(float(np.abs(ref).max()), 1e-30)
        else:
            yield op, vals[op.output].astype(np.int32) - ref.astype(np.int32)


def op_errors(graph: Graph, model: TFLiteModel, x: np.ndarray) -> dict[str, float]:
    """Per op: max |:func:`op_diffs`| (int8: LSB; float32: relative), for one image: the
    exactness check of the export."""
    return {op.output: (float if graph.tensors[op.output].is_float else int)(np.abs(d).max())
            for op, d in op_diffs(graph, model, x)}


def op_summary(model_bytes: bytes) -> dict[str, int]:
    """Op type counts of a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=model_bytes)
    counts: dict[str, int] = {}
    for d in it._get_ops_details():
        counts[d["op_name"]] = counts.get(d["op_name"], 0) + 1
    return counts
