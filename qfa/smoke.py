"""The main job while training and export are being built: a short, real smoke run.

Builds the ``fmnist`` supernet, calibrates max, min and random subnets on Fashion-MNIST
training images, extracts each one, checks that the extracted subnet reproduces the supernet,
and reports test accuracy (untrained weights: ~10% until ``qfa train`` lands) and costs.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from .calibrate import calibrate
from .cost import total_costs
from .data import load_fashion_mnist, resize, to_tensor
from .space import get_space
from .supernet import Supernet, extract

__all__ = ["smoke_run"]


@torch.no_grad()
def top1(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, resolution: int,
         batch: int = 500) -> float:
    correct = 0
    for i in range(0, len(images), batch):
        out = model(resize(images[i:i + batch], resolution))
        correct += int((out.argmax(1) == labels[i:i + batch]).sum())
    return 100.0 * correct / len(images)


def smoke_run(n_random: int = 3, calib_images: int = 2000, test_images: int = 10000, seed: int = 0,
              progress: bool = True) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    space = get_space("fmnist")
    xtr, _ = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    calib = to_tensor(xtr[rng.permutation(len(xtr))[:calib_images]])
    xt, yt = to_tensor(xte[:test_images]), torch.from_numpy(yte[:test_images])
    net = Supernet(space).eval()
    specs = [space.max_spec(bits=4), space.min_spec(bits=2)] + [space.sample(rng, bits=(2, 3, 4, 8))
                                                                 for _ in range(n_random)]
    rows = []
    for i, spec in enumerate(specs):
        t0 = time.time()
        calibrate(net, spec, calib.split(250), calib_images)
        sub = extract(net, spec)
        x = resize(xt[:256], spec.resolution)
        with net.active(spec):
            diff = float((net(x) - sub(x)).abs().max())
        acc = top1(sub, xt, yt, spec.resolution)
        c = total_costs(spec)
        rows.append({"spec": str(spec), "hash": spec.hash, "top1": acc, "extract_max_abs_diff": diff,
                     "macs": c["macs"], "bitops": c["bitops"], "bytes": c["bytes"], "seconds": time.time() - t0})
        if progress:
            print(f"[{i + 1}/{len(specs)}] {spec.hash} r{spec.resolution} depths {spec.depths}: top1 {acc:5.2f}% "
                  f"| extract diff {diff:.1e} | {c['macs'] / 1e6:6.2f} MMACs {c['bytes'] / 1024:7.1f} KiB "
                  f"| {time.time() - t0:4.1f}s", file=sys.stderr, flush=True)
    ok = all(r["extract_max_abs_diff"] <= 1e-5 for r in rows)
    if progress:
        print(f"extraction reproduces the supernet on {len(rows)} subnets: {'yes' if ok else 'NO'} "
              "(weights untrained: accuracy is chance until `qfa train` exists)", file=sys.stderr)
    return {"space": space.name, "space_hash": space.hash, "subnets": rows, "extraction_ok": ok}
