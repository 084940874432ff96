"""Images/s of one full QFA training step (sandwich of 6 subnets, KD from a float teacher),
quantized vs the same loop in float (identical architectures, every conv FP), and their ratio.

    python bench/train_step.py                                   # fmnist, batch 64, CPU
    python bench/train_step.py --space paper --batch 8 --resolution 128 --steps 5
    python bench/train_step.py --space paper --device cuda --amp --channels-last   # GPU, r128..224
    python bench/train_step.py --contend            # alone, then beside a niced `qfa cost` loop
    python bench/train_step.py --bits 2,3,4,8,32 --deploy-quant   # + the step with the file's 8-bit tensors

``--contend`` is the A/B of training beside another process: the loop of ``nice -n 10 qfa cost``
runs in a session of its own, as a command typed in another terminal would (the kernel's
autogroups then give it an equal share whatever its nice value). ``--threads auto`` (the trainer's
default) lets :class:`qfa.train.cores.CoreShare` size the thread pool; ``--threads N`` fixes it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qfa.core.space import FP, get_space
from qfa.nn.supernet import Subnet, Supernet
from qfa.train.cores import CoreShare
from qfa.train.step import SandwichStep, param_groups


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Loop:
    """One training loop (optimizer + step) over the shared supernet."""

    def __init__(self, net: Supernet, teacher: Subnet, batch: int, device: torch.device, args,
                 deploy_quant: bool = False) -> None:
        self.net, self.device = net, device
        self.opt = torch.optim.SGD(param_groups(net, 3e-5), lr=1e-3, momentum=0.9, nesterov=True)
        self.step = SandwichStep(net, teacher=teacher, amp=args.amp, channels_last=args.channels_last,
                                 deploy_quant=deploy_quant)
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


def measure(loops: dict, fspecs, qspecs, warmup: int, cores: CoreShare | None) -> dict[str, list[float]]:
    """Step times of each loop, interleaved, so drifting machine load hits both alike."""
    times = {name: [] for name in loops}
    for i in range(len(qspecs)):
        for name in loops:
            dt = loops[name](fspecs[i] if name == "float" else qspecs[i])
            if cores is not None:
                cores()
            if i >= warmup:
                times[name].append(dt)
    return times


def competitor(space: str) -> int:
    """Start a loop of ``nice -n 10 qfa cost`` in a new session, not a child of this process
    (``setsid -f``), so the trainer's own-CPU accounting does not count it; returns its pgid."""
    spec = get_space(space).max_spec(bits=4).dumps()
    pidfile = Path(tempfile.mkstemp(suffix=".pid")[1])
    loop = f'echo $$ > {pidfile}; while true; do nice -n 10 "$0" -m qfa cost --space {space} --spec "$1" >/dev/null 2>&1; done'
    subprocess.run(["setsid", "-f", "bash", "-c", loop, sys.executable, spec], check=True)
    for _ in range(100):
        if pidfile.read_text().strip():
            break
        time.sleep(0.05)
    pid = int(pidfile.read_text())
    pidfile.unlink()
    time.sleep(2)
    return pid


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return os.uname().machine


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
    ap.add_argument("--threads", default="auto", help="auto (default, as the trainer) or a fixed count")
    ap.add_argument("--contend", action="store_true", help="measure alone, then beside a niced qfa loop")
    ap.add_argument("--deploy-quant", action="store_true",
                    help="also time the quantized step with the int8 file's other 8-bit tensors (stage option deploy_quant)")
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
    if args.deploy_quant:
        loops["as_deployed"] = Loop(net, teacher, args.batch, device, args, deploy_quant=True)
    if args.threads != "auto":
        torch.set_num_threads(int(args.threads))
    max_threads = torch.get_num_threads()
    cores = CoreShare(max_threads) if args.threads == "auto" and device.type == "cpu" else None

    def summary(times: dict) -> dict:
        out = {}
        for name, ts in times.items():
            med = statistics.median(ts)
            out[name] = {"step_s": med, "images_per_s": args.batch / med, "steps_per_s": 1 / med}
        return out
    results = summary(measure(loops, fspecs, qspecs, args.warmup, cores))
    ratio = results["quantized"]["step_s"] / results["float"]["step_s"]
    if args.deploy_quant:
        results["as_deployed"]["vs_quantized"] = results["as_deployed"]["step_s"] / results["quantized"]["step_s"]
    contended = None
    if args.contend:
        pgid = competitor(args.space)
        try:
            contended = summary(measure(loops, fspecs, qspecs, args.warmup, cores))
            contended["threads_at_end"] = cores.threads if cores else max_threads
        finally:
            os.killpg(pgid, signal.SIGTERM)
        for name in loops:
            contended[name]["slowdown"] = contended[name]["step_s"] / results[name]["step_s"]
        if cores is not None:
            torch.set_num_threads(max_threads)
    out = {"space": args.space, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "threads": args.threads if args.threads == "auto" else int(args.threads), "max_threads": max_threads,
           "cpu": _cpu(), "batch": args.batch, "subnets_per_step": 6,
           "resolution": args.resolution or f"{min(space.resolutions)}..{max(space.resolutions)}",
           "amp": args.amp, "channels_last": args.channels_last, **results, "quant_float_ratio": ratio,
           **({"beside_niced_qfa": contended} if contended else {})}
    if args.json:
        print(json.dumps(out))
        return
    print(f"cpu {out['cpu']}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"space {args.space}  device {out['device']}  batch {args.batch} x 6 subnets  resolution {out['resolution']}"
          f"  amp {args.amp}  channels_last {args.channels_last}  threads {out['threads']} (at most {max_threads})")
    for name in ("float", "quantized"):
        r = results[name]
        print(f"  {name:9s} {r['step_s']:8.3f} s/step  {r['images_per_s']:8.1f} images/s")
    print(f"  quantized / float step time: {ratio:.3f}  (target <= 1.3)")
    if args.deploy_quant:
        r = results["as_deployed"]
        print(f"  as deployed (deploy_quant) {r['step_s']:.3f} s/step: {r['vs_quantized']:.3f}x the quantized step")
    if contended:
        print(f"  beside a niced `qfa cost` loop in another session (threads at the end: {contended['threads_at_end']}):")
        for name in ("float", "quantized"):
            r = contended[name]
            print(f"  {name:9s} {r['step_s']:8.3f} s/step  {r['slowdown']:.2f}x alone  (target <= 2)")


if __name__ == "__main__":
    main()
