"""The main job while training and export are being built: a short, real smoke run.

Takes the ``fmnist`` supernet (a trained one with ``checkpoint``, else untrained weights),
calibrates max, min and random subnets on Fashion-MNIST training images, extracts each one,
checks that the extracted subnet reproduces the supernet, and reports test accuracy and costs.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from .calibrate import calibrate
from .cost import total_costs
from .data import make_datasets, resize
from .evaluate import accuracy, calib_batches
from .space import get_space
from .supernet import Supernet, extract

__all__ = ["smoke_run"]


def smoke_run(n_random: int = 3, calib_images: int = 2000, test_images: int = 10000, seed: int = 0,
              progress: bool = True, checkpoint: str | None = None) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = (Supernet.from_checkpoint(checkpoint) if checkpoint else Supernet(get_space("fmnist"))).eval()
    space = net.space
    data = make_datasets(None, space.resolutions[-1])
    specs = [space.max_spec(bits=4), space.min_spec(bits=2)] + [space.sample(rng, bits=(2, 3, 4, 8))
                                                                 for _ in range(n_random)]
    rows = []
    for i, spec in enumerate(specs):
        t0 = time.time()
        calibrate(net, spec, calib_batches(data["train"], calib_images), calib_images)
        sub = extract(net, spec)
        x = resize(torch.stack([data["test"][i][0] for i in range(256)]), spec.resolution)
        with torch.no_grad(), net.active(spec):
            diff = float((net(x) - sub(x)).abs().max())
        acc = accuracy(sub, data["test"], spec.resolution, test_images)
        c = total_costs(spec)
        rows.append({"spec": str(spec), "hash": spec.hash, "top1": acc, "extract_max_abs_diff": diff,
                     "macs": c["macs"], "bitops": c["bitops"], "bytes": c["bytes"], "seconds": time.time() - t0})
        if progress:
            print(f"[{i + 1}/{len(specs)}] {spec.hash} r{spec.resolution} depths {spec.depths}: top1 {acc:5.2f}% "
                  f"| extract diff {diff:.1e} | {c['macs'] / 1e6:6.2f} MMACs {c['bytes'] / 1024:7.1f} KiB "
                  f"| {time.time() - t0:4.1f}s", file=sys.stderr, flush=True)
    ok = all(r["extract_max_abs_diff"] <= 1e-5 for r in rows)
    if progress:
        print(f"extraction reproduces the supernet on {len(rows)} subnets: {'yes' if ok else 'NO'}"
              + ("" if checkpoint else " (untrained weights: accuracy is chance; pass --checkpoint RUN)"),
              file=sys.stderr)
    return {"space": space.name, "space_hash": space.hash, "subnets": rows, "extraction_ok": ok}
