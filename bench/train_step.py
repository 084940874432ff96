"""Images/s of one full QFA training step (sandwich of 6 subnets, KD from a float teacher),
quantized vs the same loop in float (identical architectures, every conv FP), and their ratio.

    python bench/train_step.py                                   # fmnist, batch 64, CPU
    python bench/train_step.py --space paper --batch 8 --resolution 128 --steps 5
    python bench/train_step.py --space paper --device cuda --amp --channels-last   # GPU, r128..224
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from qfa.space import FP, get_space
from qfa.supernet import Subnet, Supernet
from qfa.train.step import SandwichStep, param_groups


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Loop:
    """One training loop (optimizer + step) over the shared supernet."""

    def __init__(self, net: Supernet, teacher: Subnet, batch: int, device: torch.device, args) -> None:
        self.net, self.device = net, device
        self.opt = torch.optim.SGD(param_groups(net, 3e-5), lr=1e-3, momentum=0.9, nesterov=True)
        self.step = SandwichStep(net, teacher=teacher, amp=args.amp, channels_last=args.channels_last)
        r = max(net.space.resolutions)
        self.x = torch.randn(batch, net.space.in_channels, r, r, device=device)
        self.y = torch.randint(0, net.space.num_classes, (batch,), device=device)

    def __call__(self, specs) -> float:
        _sync(self.device)
        t = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        self.step(self.x, self.y, specs)
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 500.0)
        self.opt.step()
        _sync(self.device)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="fmnist", choices=["fmnist", "paper"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=None, help="run every subnet at this resolution")
    ap.add_argument("--bits", default="2,3,4", help="quantized stage bit choices (default 2,3,4)")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    bits = tuple(int(b) for b in args.bits.split(","))
    space = get_space(args.space, sorted(set(get_space(args.space).bits) | {FP}))
    torch.manual_seed(0)
    net = Supernet(space).to(device).train()
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    teacher = Subnet(space.max_spec(bits=FP)).to(device).eval().requires_grad_(False)
    rng = np.random.default_rng(0)
    n = args.warmup + args.steps
    qspecs = [space.sandwich(rng, 4, bits=bits) for _ in range(n)]
    if args.resolution:
        qspecs = [[s.replace(resolution=args.resolution) for s in step] for step in qspecs]
    fspecs = [[s.with_bits(FP) for s in step] for step in qspecs]
    loops = {"float": Loop(net, teacher, args.batch, device, args), "quantized": Loop(net, teacher, args.batch, device, args)}
    times = {"float": [], "quantized": []}
    for i in range(n):  # interleaved, so drifting machine load hits both loops alike
        for name, specs in (("float", fspecs[i]), ("quantized", qspecs[i])):
            dt = loops[name](specs)
            if i >= args.warmup:
                times[name].append(dt)
    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {"step_s": med, "images_per_s": args.batch / med, "steps_per_s": 1 / med}
    ratio = results["quantized"]["step_s"] / results["float"]["step_s"]
    out = {"space": args.space, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "batch": args.batch, "subnets_per_step": 6,
           "resolution": args.resolution or f"{min(space.resolutions)}..{max(space.resolutions)}",
           "amp": args.amp, "channels_last": args.channels_last, **results, "quant_float_ratio": ratio}
    if args.json:
        print(json.dumps(out))
        return
    print(f"space {args.space}  device {out['device']}  batch {args.batch} x 6 subnets  resolution {out['resolution']}"
          f"  amp {args.amp}  channels_last {args.channels_last}  threads {out['threads']}")
    for name in ("float", "quantized"):
        r = results[name]
        print(f"  {name:9s} {r['step_s']:8.3f} s/step  {r['images_per_s']:8.1f} images/s")
    print(f"  quantized / float step time: {ratio:.3f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
