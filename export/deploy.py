"""Export a subnet of a trained supernet to .tflite (+ sidecar JSON) and verify the file.

The sidecar holds what an app needs: labels, input size and normalisation, how to quantize
the input, the spec and its hash, per-layer precision and the deployment target.
"""
from __future__ import annotations

import gzip
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.ir import Graph
from export.targets import DEFAULT_RUNTIME, TARGETS, Target
from export.tflite import to_tflite
from export.lower import xnnpack_limit_errors
from export.simulate import DeployedModel
from export.verify import TFLiteModel, load_failures, op_summary

from qfa.nn.calibrate import DEFAULT_CALIB_IMAGES, calibrate
from qfa.nn.data import resize
from qfa.nn.evaluate import calib_batches, calibrate_best
from qfa.core.fileio import atomic_write
from export.fold import fold
from qfa.core.space import SearchSpace, SubnetSpec
from qfa.nn.supernet import Supernet, extract

__all__ = ["ExportError", "fold_subnet", "deployed_model", "export_subnet", "verify_tflite", "FileSize", "gzip_bytes"]


RANGE_IMAGES = 512


class ExportError(RuntimeError):
    """The exported file would not load under a runtime configuration (nothing is written)."""


def interpreter_setup(runtime: dict | None) -> dict:
    """How the app builds its interpreter: the configuration the latency was measured under
    (None: not measured, the interpreter's default)."""
    rt = {**DEFAULT_RUNTIME, **(runtime or {})}
    builtin = rt["delegate"] == "builtin"
    return {**rt, "measured": runtime is not None,
            "python": f"Interpreter(model_path, num_threads={rt['threads']}"
                      + (", experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)"
                         if builtin else ")"),
            "android": f"InterpreterApi.Options().setNumThreads({rt['threads']})"
                       + (".setUseXNNPACK(false)" if builtin else ""),
            "benchmark_model": f"--num_threads={rt['threads']} --use_xnnpack={'false' if builtin else 'true'}"}


def fold_subnet(net: Supernet, spec: SubnetSpec, data: dict, calib_images: int = DEFAULT_CALIB_IMAGES,
                range_images: int = RANGE_IMAGES, calib_draws: int = 1, target: str | None = None,
                delegate: str = "xnnpack") -> tuple[Graph, torch.nn.Module, dict, torch.Tensor]:
    """Calibrate ``spec`` (BN statistics and BatchQuant ranges; of ``calib_draws`` draws the one
    best on the held-out split as deployed for ``target`` under ``delegate``, or as the
    fake-quant model without one), extract it and fold it into the integer graph, not yet
    lowered for a target (``Target.lower`` of a copy, once per target). Returns (graph, the extracted PyTorch
    subnet, the calibration report, the range images)."""
    model_for = None if target is None else lambda n, s: deployed_model(n, s, data, target, range_images, delegate)
    cal = calibrate_best(net, spec, data, calib_images, calib_draws, model_for=model_for)
    sub = extract(net, spec)
    images = range_set(data, spec.resolution, range_images)
    return fold(sub, images), sub, cal, images


def range_set(data: dict, resolution: int, n: int = RANGE_IMAGES) -> torch.Tensor:
    """The training images that fix the 8-bit ranges of tensors no trained quantizer owns."""
    return torch.cat([resize(x, resolution) for x in calib_batches(data["train"], n)])


def deployed_model(net: Supernet, spec: SubnetSpec, data: dict, target: str,
                   range_images: int = RANGE_IMAGES, delegate: str = "xnnpack") -> DeployedModel:
    """``spec`` as the .tflite for ``target`` computes it under ``delegate``, from ``net``
    holding the spec's calibration (BN statistics and BatchQuant ranges): extracted, folded,
    lowered, run in PyTorch."""
    graph = fold(extract(net, spec), range_set(data, spec.resolution, range_images))
    return DeployedModel(TARGETS[target].lower(graph), delegate)


def export_subnet(net: Supernet, spec: SubnetSpec, data: dict, out: Path, target: str = "tflite-int8",
                  calib_images: int = DEFAULT_CALIB_IMAGES, range_images: int = RANGE_IMAGES, uint8_io: bool = False,
                  via: str = "direct", onnx_out: Path | None = None, calib_draws: int = 1,
                  runtime: dict | None = None) -> dict[str, Any]:
    """Calibrate, extract and fold ``spec``; write ``out`` (.tflite) and ``out``.json atomically.

    ``via="onnx2tf"``: the float folded model through ONNX and onnx2tf, calibrated on the same
    images (scales re-derived by the converter: the comparison path). ``onnx_out``: also write
    the Q/DQ ONNX model there. ``calib_draws``: see :func:`qfa.nn.evaluate.calibrate_best`."""
    t0 = time.perf_counter()
    folded, sub, cal, images = fold_subnet(net, spec, data, calib_images, range_images, calib_draws,
                                           target if via == "direct" else None, interpreter_setup(runtime)["delegate"])
    tgt = TARGETS[target]
    if uint8_io and not tgt.float_io:
        tgt = replace(tgt, io_dtype="uint8")
    graph = tgt.lower(folded)
    t1 = time.perf_counter()
    if via == "onnx2tf":
        from export.onnx import to_onnx
        from export.onnx2tf_path import onnx2tf_int8
        fgraph = fold(sub, images, shifts=False)  # float model: no shift bookkeeping
        blob = onnx2tf_int8(to_onnx(fgraph, qdq=False), images.permute(0, 2, 3, 1).numpy())
    else:
        blob = to_tflite(graph, tgt)
    convert_s = time.perf_counter() - t1
    refused = load_failures(blob)
    if refused:  # never ship a file the app cannot open (the lowering keeps XNNPACK's limits)
        why = "; ".join(xnnpack_limit_errors(graph)[:2]) if via == "direct" else ""
        raise ExportError(f"{out.name} would not load under {', '.join(refused)}: {next(iter(refused.values()))}"
                          + (f" ({why})" if why else ""))
    if onnx_out is not None:
        from export.onnx import to_onnx
        atomic_write(Path(onnx_out), to_onnx(graph))
    tin = graph.tensors[graph.input]
    base = data["train"]
    quantize = ({"quantize": "none: the input is float32"} if tin.is_float else
                {"quantize": "q = round((x + shift) / scale) + zero_point" if via == "direct" else
                 "see the .tflite input tensor's quantization (onnx2tf calibrated it)",
                 "scale": tin.scale, "zero_point": tin.zero_point + (128 if uint8_io else 0), "shift": tin.shift})
    sidecar = {
        "format": "qfa-tflite/1", "model": out.name, "target": target,
        "io_dtype": "float32" if tin.is_float else tgt.io_dtype, "via": via,
        "spec": json.loads(spec.dumps()), "spec_str": str(spec), "hash": spec.hash,
        "labels": list(getattr(base, "labels", [])),
        "input": {"shape_nhwc": list(tin.shape), "normalize": {"mean": list(getattr(base, "mean", ())),
                                                                "std": list(getattr(base, "std", ()))},
                  "resize": "bilinear to the input size, then x = (pixel/255 - mean) / std", **quantize},
        "float_layers": [op.layer for op in graph.ops if op.kind == "conv" and op.is_float],
        "layers": graph.summary()["layers"],
        "max_zero_point_fraction_lsb": graph.summary()["max_zero_point_rounding_lsb"],
        "calibration": {k: v for k, v in cal.items() if k != "holdout_top1_draws"},
        "bytes": len(blob), "bytes_gzip": gzip_bytes(blob), "weights_clipped": folded.meta.get("weights_clipped"),
        "fold_s": round(t1 - t0, 2), "convert_s": round(convert_s, 3),
        "runtime": interpreter_setup(runtime),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, blob)
    atomic_write(out.with_suffix(".json"), json.dumps(sidecar, indent=1).encode())
    return {"graph": graph, "subnet": sub, "bytes": blob, "sidecar": sidecar}


@torch.no_grad()
def verify_tflite(blob: bytes, graph: Graph, subnet: torch.nn.Module, test, n_images: int | None = None,
                  onnx_model: bytes | None = None, direct: bool = True, delegate: str = "xnnpack") -> dict[str, Any]:
    """The .tflite (under ``delegate``) on the test set against the PyTorch fake-quant subnet
    and against the subnet as deployed (``graph`` run by :mod:`export.simulate`, ``direct``
    exports only): top-1 of each, agreements, the largest logit difference in output LSB (and
    the Q/DQ ONNX model in onnxruntime, when given)."""
    n = len(test) if n_images is None else min(n_images, len(test))
    model = TFLiteModel(blob, delegate=delegate)
    shift = graph.tensors[graph.input].shift if direct else 0.0
    deployed = DeployedModel(graph, delegate) if direct else None
    ort = None
    if onnx_model is not None:
        import onnxruntime
        ort = onnxruntime.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    out_scale = model.out["quantization"][0]  # 0 for float32 logits: errors relative to the largest logit only
    n_ok = {"pytorch": 0, "tflite": 0, "deployed": 0, "onnx": 0}
    n_agree = {"pytorch": 0, "deployed": 0, "onnx": 0}
    max_err = {"pytorch": 0.0, "deployed": 0.0}
    peak = {"pytorch": 0.0, "deployed": 0.0}
    r = graph.meta["resolution"]
    for start in range(0, n, 256):
        batch = [test[i] for i in range(start, min(n, start + 256))]
        x = resize(torch.stack([b[0] for b in batch]), r)
        y = np.array([b[1] for b in batch])
        tf = model.logits(np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy()), shift)
        outs = {"pytorch": subnet(x).numpy()}
        if deployed is not None:
            outs["deployed"] = deployed(x).numpy()
        if ort is not None:
            outs["onnx"] = ort.run(None, {"input": x.numpy()})[0]
        n_ok["tflite"] += int((tf.argmax(1) == y).sum())
        for k, o in outs.items():
            n_ok[k] += int((o.argmax(1) == y).sum())
            n_agree[k] += int((o.argmax(1) == tf.argmax(1)).sum())
            if k in max_err:
                max_err[k], peak[k] = max(max_err[k], float(np.abs(o - tf).max())), max(peak[k], float(np.abs(o).max()))
    res = {"images": n, "delegate": delegate, "pytorch_top1": 100.0 * n_ok["pytorch"] / n,
           "tflite_top1": 100.0 * n_ok["tflite"] / n, "agreement": 100.0 * n_agree["pytorch"] / n,
           "bytes": len(blob), "ops": op_summary(blob)}
    for k, pre in (("pytorch", ""), *((("deployed", "deployed_"),) if deployed is not None else ())):
        res[f"{pre}max_logit_error_rel"] = max_err[k] / max(peak[k], 1e-30)  # of the largest |logit|
        if out_scale:
            res[f"{pre}max_logit_error_lsb"] = round(max_err[k] / out_scale, 2)
    if deployed is not None:
        res.update({"deployed_top1": 100.0 * n_ok["deployed"] / n, "deployed_agreement": 100.0 * n_agree["deployed"] / n})
    if ort is not None:
        res.update({"onnx_top1": 100.0 * n_ok["onnx"] / n, "onnx_agreement": 100.0 * n_agree["onnx"] / n})
    return res


def gzip_bytes(blob: bytes) -> int:
    """Size of ``blob`` gzip-compressed (level 9, no timestamp): what an app download costs."""
    return len(gzip.compress(blob, 9, mtime=0))


class FileSize:
    """``FileSize(space)(spec, target)``: exact bytes of the ``.tflite`` that :func:`export_subnet`
    writes (cached per spec), without writing a file and without data.

    A file's bytes depend on its structure: which ops and tensors the lowering makes, their names,
    shapes and per-channel quantization vectors, the weight storage (int8, or INT4 packed two to a
    byte) and the metadata. One of these depends on trained values: a learned activation grid
    whose zero point has a fractional part (a trained BatchQuant offset, LSQ+ beta) needs a shift
    (:func:`export.lower.apply_shifts`: an ADD where no conv bias can take it), one whose offset was
    never trained (exactly 0: a bitwidth a short run never sampled at that layer) needs none. So
    :meth:`of_checkpoint` folds the checkpoint's own supernet, calibrated on random images (ranges
    move values, never structure); without a checkpoint, an untrained supernet with every
    quantizer parameter moved off its initial value stands for a fully trained one.
    ``tests/test_size.py`` checks the equality for every target on random specs, trained and
    partly untrained. About 0.1-0.2 s a spec on one core: ``qfa search --max-bytes`` prices the
    saved front's rows as it needs them, while NSGA-II's size objective stays the vectorised int8
    weight + bias bytes (``qfa.nas.search.deployed_bytes``; the file is ~25-35% more on the
    fmnist space: quantization parameters, activation tensors, ops and metadata).
    """

    def __init__(self, space: SearchSpace, act_quant: str = "bq", seed: int = 0, net: Supernet | None = None) -> None:
        self.space = space
        gen = torch.Generator().manual_seed(seed)
        if net is None:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                net = Supernet(space, act_quant)
            with torch.no_grad():  # learned ranges and zero points (BatchQuant; LSQ+ as if trained past its init)
                for name, p in net.named_parameters():
                    if name.rsplit(".", 1)[-1] in ("theta", "offset", "beta"):
                        p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
                for name, b in net.named_buffers():
                    if name.endswith(".initialized"):
                        b.fill_(True)
        self.net = net.eval()
        self.images = {r: torch.randn(2, space.in_channels, r, r, generator=gen) for r in space.resolutions}
        self.cache: dict[tuple, int] = {}

    @classmethod
    def of_checkpoint(cls, path) -> "FileSize":
        """For a training checkpoint: its own supernet (a private copy, recalibrated per spec)."""
        net = Supernet.from_checkpoint(path)
        return cls(net.space, net=net)

    def __call__(self, spec: SubnetSpec, target: Target | str = "tflite-int8", uint8_io: bool = False) -> int:
        target = TARGETS[target] if isinstance(target, str) else target
        if uint8_io:
            target = replace(target, io_dtype="uint8")
        key = (spec.hash, target)
        if key not in self.cache:
            x = self.images[spec.resolution]
            with torch.no_grad():
                calibrate(self.net, spec, [x], len(x))
                graph = fold(extract(self.net, spec), x[:1])
            self.cache[key] = len(to_tflite(target.lower(graph), target))
        return self.cache[key]

    def many(self, specs, target: Target | str = "tflite-int8") -> np.ndarray:
        return np.array([self(s, target) for s in specs], dtype=np.int64)
