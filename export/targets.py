"""Deployment targets: how a folded graph is stored and lowered for one runtime.

A latency table is measured for one target, and a subnet searched on that table is exported for
the same one, so the shipped file runs the ops the table timed.
"""
from __future__ import annotations

from dataclasses import dataclass

from export.ir import Graph, Op
import numpy as np

from export.lower import decompose_hswish, fit_xnnpack, refine_weights, to_float

__all__ = ["Target", "TARGETS", "DELEGATES", "DEFAULT_RUNTIME", "runtime_of", "runtime_tag", "FAKE_QUANT", "SCORINGS"]

# The runtime configuration a model is timed and shipped under, besides its lowering: the
# interpreter's default, which hands float and int8 ops to the XNNPACK delegate, or TFLite's
# builtin kernels alone (``BUILTIN_WITHOUT_DEFAULT_DELEGATES``; benchmark_model's
# ``--use_xnnpack=false``), and a thread count. Which is faster depends on the CPU, the format
# and the model's size (up to 14x either way), so a latency table measures one configuration.
# hw/runner.py, which runs alone on the device, mirrors DELEGATES (tests check it).
DELEGATES = ("xnnpack", "builtin")
DEFAULT_RUNTIME = {"delegate": "xnnpack", "threads": 1}


def runtime_tag(runtime: dict) -> str:
    """How a table's name says its configuration: ``1t``, ``2t-builtin``."""
    builtin = runtime["delegate"] != DEFAULT_RUNTIME["delegate"]
    return f"{runtime['threads']}t" + (f"-{runtime['delegate']}" if builtin else "")


def runtime_of(meta: dict) -> dict:
    """The runtime configuration a table's metadata states (the default where it says nothing:
    tables measured before the delegate was recorded ran the interpreter's default)."""
    return {"delegate": meta.get("delegate", DEFAULT_RUNTIME["delegate"]),
            "threads": int(meta.get("threads", DEFAULT_RUNTIME["threads"]))}


@dataclass(frozen=True)
class Target:
    """How a folded graph deploys. ``int4_weights``: CONV_2D weights of <= 4 bits stored as
    INT4 (TFLite has no int4 depthwise); everything else int8 values on the trained grid.
    ``hswish``: "op" (HARD_SWISH) or "decomposed" (ADD + MUL) for int8 hardswish: which is
    faster is device-specific. ``fp``: how full-precision convs deploy: "int8" (a per-channel
    8-bit grid, an approximation), "float32", or "float16" (fp16 weights, computed in float32);
    with a float format the model's input and logits are float32 (:func:`export.lower.to_float`)."""

    name: str
    int4_weights: bool = False
    hswish: str = "op"
    io_dtype: str = "int8"  # int8 | uint8 (int8-fp targets only)
    fp: str = "int8"        # int8 | float32 | float16

    @property
    def float_io(self) -> bool:
        return self.fp != "int8"

    @property
    def fp_weight_bytes(self) -> int:
        """Bytes the file spends on one weight of an FP conv."""
        return {"int8": 1, "float32": 4, "float16": 2}[self.fp]

    def lower(self, graph: Graph, fit: bool = True) -> Graph:
        """Rewrite ``graph`` (in place) into what this target's file holds, so that the graph's
        simulation (export.simulate) and the file agree: float ops, refined weight integers,
        hswish lowering, and (``fit``) the scales XNNPACK needs to load the file (every runtime
        configuration loads the same file)."""
        graph.meta["target"] = self.name  # the simulation's key to how each op is stored (int4_packs)
        if self.float_io:
            to_float(graph)
            if self.fp == "float16":  # the weights the file stores, as the runtime widens them
                for op in graph.ops:
                    if op.kind == "conv" and op.fweight is not None:
                        op.fweight = op.fweight.astype(np.float16).astype(np.float64)
        refine_weights(graph, self.int4_packs)
        if self.hswish == "decomposed":
            decompose_hswish(graph)
        return fit_xnnpack(graph) if fit else graph

    def int4_packs(self, op: Op) -> bool:
        return self.int4_weights and op.kind == "conv" and not op.depthwise and op.w_bits <= 4


TARGETS = {t.name: t for t in (Target("tflite-int8"), Target("tflite-int4w", int4_weights=True),
                               Target("tflite-int8-hswish-decomposed", hswish="decomposed"),
                               Target("tflite-int4w-hswish-decomposed", int4_weights=True, hswish="decomposed"),
                               Target("tflite-f32-hswish-decomposed", hswish="decomposed", fp="float32"),
                               Target("tflite-f16-hswish-decomposed", hswish="decomposed", fp="float16"))}

# How a subnet is scored (labels, `qfa eval`): as deployed for a target (its lowered integer
# graph run by export.simulate: what the .tflite computes), or the PyTorch fake-quant model.
FAKE_QUANT = "fake-quant"
SCORINGS = (*TARGETS, FAKE_QUANT)
