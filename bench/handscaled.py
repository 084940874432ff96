"""What an edge engineer ships without this toolkit: a MobileNetV3-family network scaled by hand
to fit a latency budget, trained from scratch in full precision, converted the usual way.

Used by bench/value.py. The family is the supernet's own space with every choice uniform
(resolution x depth x kernel x expand, one value each, as MobileNetV3's width/resolution
multipliers scale a whole network) and every layer in float, the SE and classifier included.
The engineer's scaling rule: the largest network (by MACs) whose float32 .tflite, measured on
the device under its fastest runtime configuration, fits the budget. The training recipe is
the standard one for this family (SGD + Nesterov, cosine, label smoothing, the supernet's
augmentation), stopped when held-out top-1 has not improved for ``patience`` epochs.
Conversion: torch.onnx -> onnx2tf (float32, and full-integer int8 by its post-training
quantization on a representative set of training images).
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from qfa.core.cost import total_costs
from qfa.core.fileio import atomic_write
from qfa.core.space import FP, QBits, SearchSpace, SubnetSpec
from qfa.nn.data import resize
from qfa.nn.calibrate import calibrate
from qfa.nn.evaluate import accuracy, calib_batches
from qfa.nn.supernet import Subnet
from qfa.train.step import param_groups

__all__ = ["float_space", "uniform_family", "config_name", "train", "to_tflite", "RECIPE"]

# the standard recipe (per 64 images; lr scales linearly with the batch)
RECIPE = {"batch_size": 128, "lr_per_64": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 4e-5,
          "label_smoothing": 0.1, "warmup_epochs": 0.1, "max_epochs": 12, "patience": 2}
BN_IMAGES = 2000


def float_space(space: SearchSpace) -> SearchSpace:
    """``space`` with every part in float (the SE convs and classifier too): the family as an
    engineer trains it in PyTorch."""
    return dataclasses.replace(space, name=f"{space.name}-float", bits=(FP,), se_bits=QBits(FP, FP),
                               classifier_bits=QBits(FP, FP))


def uniform_family(space: SearchSpace) -> list[SubnetSpec]:
    """Every uniformly scaled float network of the family, smallest (MACs) first."""
    fs = float_space(space)
    specs = [fs.uniform(depth=d, kernel=k, expand=e, bits=FP, resolution=r)
             for r in fs.resolutions for d in fs.depths for k in fs.kernels for e in fs.expands]
    return sorted(specs, key=lambda s: (total_costs(s)["macs"], s.resolution))


def config_name(spec: SubnetSpec) -> str:
    b = spec.stages[0][0]
    return f"r{spec.resolution}-d{len(spec.stages[0])}-k{b.kernel}-e{b.expand}"


def _save(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict) -> None:
    """Weights, momentum buffers and the record in one file, written atomically (kill -9 safe)."""
    from safetensors.torch import save
    tensors = {f"model.{k}": v.contiguous() for k, v in net.state_dict().items()}
    params = [p for g in opt.param_groups for p in g["params"]]
    tensors.update({f"opt.{i}": opt.state[p]["momentum_buffer"].contiguous() for i, p in enumerate(params)
                    if "momentum_buffer" in opt.state.get(p, {})})
    atomic_write(path, save(tensors, metadata={"meta": json.dumps(meta)}))


def _load(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(f.metadata()["meta"])
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        if f"opt.{i}" in tensors:
            opt.state[p]["momentum_buffer"] = tensors[f"opt.{i}"]
    return meta


def train(spec: SubnetSpec, data: dict, out: Path, recipe: dict | None = None, max_steps: int | None = None,
          progress=None) -> tuple[Subnet, dict]:
    """Train ``spec`` (a float network of :func:`uniform_family`) from scratch on
    ``data["train"]``, early-stopped on ``data["holdout"]``. Resumable: ``out/last.safetensors``
    after every epoch, ``out/best.safetensors`` the best held-out epoch; a finished run is
    loaded, not retrained. ``max_steps``: steps per epoch (tests). Returns (the best network in
    eval mode, its record: epochs, held-out top-1 per epoch, seconds and CPU seconds)."""
    r = {**RECIPE, **(recipe or {})}
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = Subnet(spec)
    best_p, last_p = out / "best.safetensors", out / "last.safetensors"
    rec = {"config": config_name(spec), "spec": str(spec), "recipe": r, "epochs": 0, "holdout_top1": [],
           "seconds": 0.0, "cpu_seconds": 0.0, "done": False}
    opt = torch.optim.SGD(param_groups(net, r["weight_decay"]), lr=r["lr_per_64"] * r["batch_size"] / 64,
                          momentum=r["momentum"], nesterov=r["nesterov"])
    if last_p.exists():
        rec = _load(last_p, net, opt)
        if rec["done"]:
            _load(best_p, net, opt)
            return net.eval(), rec
    train_set = data["train"]
    steps = len(train_set) // r["batch_size"]
    if max_steps:
        steps = min(steps, max_steps)
    total = r["max_epochs"] * steps
    warm = max(1, int(r["warmup_epochs"] * steps))
    base_lr = r["lr_per_64"] * r["batch_size"] / 64
    for epoch in range(rec["epochs"], r["max_epochs"]):
        t0, c0 = time.perf_counter(), time.process_time()
        net.train()
        train_set.set_epoch(epoch)
        order = np.random.default_rng(epoch).permutation(len(train_set))
        batches = [order[i * r["batch_size"]:(i + 1) * r["batch_size"]].tolist() for i in range(steps)]
        for i, (x, y) in enumerate(DataLoader(train_set, batch_sampler=batches)):
            it = epoch * steps + i
            lr = base_lr * (it + 1) / warm if it < warm else \
                base_lr * 0.5 * (1 + math.cos(math.pi * (it - warm) / max(1, total - warm)))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = F.cross_entropy(net(resize(x, spec.resolution)), y, label_smoothing=r["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if progress and (i % 50 == 0 or i == steps - 1):
                progress(epoch, i + 1, steps, loss.item())
        # BN: the family's elastic BN trains on batch statistics and keeps no running ones (as
        # in QFA), so they are computed on training images before every evaluation and export
        # (what a standard BN's running averages would hold)
        calibrate(net, spec, calib_batches(train_set, BN_IMAGES), BN_IMAGES)
        net.eval()
        top1 = accuracy(net, data["holdout"], spec.resolution)
        rec["holdout_top1"].append(top1)
        rec["epochs"] = epoch + 1
        rec["seconds"] += time.perf_counter() - t0
        rec["cpu_seconds"] += time.process_time() - c0
        best = int(np.argmax(rec["holdout_top1"]))
        rec["best_epoch"] = best + 1
        rec["done"] = epoch - best >= r["patience"] or epoch + 1 == r["max_epochs"]
        if best == epoch:
            _save(best_p, net, opt, rec)
        _save(last_p, net, opt, rec)  # commits the epoch
        if rec["done"]:
            break
    _load(best_p, net, opt)
    return net.eval(), rec


def to_tflite(net: torch.nn.Module, spec: SubnetSpec, calib_nchw: torch.Tensor) -> dict[str, bytes]:
    """The usual deployment: torch.onnx.export, then onnx2tf: {"float32": ..., "int8": ...}
    (int8: full-integer post-training quantization on ``calib_nchw``, normalised images)."""
    from export.onnx2tf_path import onnx2tf_convert
    buf = io.BytesIO()
    x = torch.zeros(1, spec.space.in_channels, spec.resolution, spec.resolution)
    torch.onnx.export(net.eval(), (x,), buf, input_names=["input"], output_names=["logits"], dynamo=False,
                      opset_version=17)
    calib = resize(calib_nchw, spec.resolution).permute(0, 2, 3, 1).numpy()
    out = onnx2tf_convert(buf.getvalue(), calib, ("float32", "full_integer_quant"))
    return {"float32": out["float32"], "int8": out["full_integer_quant"]}
