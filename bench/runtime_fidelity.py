"""The .tflite under another Python's LiteRT (another CPU architecture: an arm64 Python under
qemu-user, or a device's) against the subnet as deployed (export.simulate), per subnet and op by op.

    bash bench/arm64_python.sh DIR      # an arm64 Python under qemu-user (Debian 12)
    python bench/runtime_fidelity.py --checkpoint RUN --python DIR/python [--n 6] [--test-images 500]

The simulation reproduces the integers of the runtime's kernels as measured on x86 (XNNPACK's
float32 requantization, the builtin kernels' fixed-point formulas); those kernels have other
code paths on other CPUs (NEON on ARM). Each subnet's file runs in ``--python`` through the
device-side runner (hw/runner.py, outputs mode) and here, under each runtime configuration;
printed per subnet: top-1 of the file there, of the file here and of the simulation, agreement
of the file there with each, the largest logit difference and the share of logits that differ
(in output LSB), and which ops compute other integers there than the simulated op on the same
inputs (the first ``--op-images`` images). Measured: docs/results.md, "On ARM".
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from export.deploy import export_subnet  # noqa: E402
from export.simulate import ARCHS, DeployedModel  # noqa: E402
from export.targets import DELEGATES  # noqa: E402
from export.verify import TFLiteModel, tensor_diffs  # noqa: E402
from hw.runner import outputs_in  # noqa: E402
from qfa.nn.data import make_datasets, resize  # noqa: E402
from qfa.nn.evaluate import calibrate_best  # noqa: E402
from qfa.nn.supernet import Supernet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--python", required=True, help="the other Python (a command, split on spaces)")
    ap.add_argument("--n", type=int, default=6, help="subnets (default 6)")
    ap.add_argument("--test-images", type=int, default=500)
    ap.add_argument("--target", default="tflite-int8")
    ap.add_argument("--delegate", choices=DELEGATES, action="append", help="default: every one")
    ap.add_argument("--op-images", type=int, default=2, help="images compared op by op (default 2)")
    ap.add_argument("--arch", default="auto", help="kernels the simulation computes (default: the other Python's "
                    "machine; x86_64 shows what a file there computes beside the x86 simulation)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    python = args.python.split()
    there = subprocess.run([*python, "-c", "import platform; print(platform.machine())"],
                           capture_output=True, text=True).stdout.strip()
    arch = there if args.arch == "auto" else args.arch
    if arch not in ARCHS:
        sys.exit(f"runtime_fidelity: no simulation of {arch!r} kernels ({', '.join(ARCHS)}); pass --arch")
    net = Supernet.from_checkpoint(args.checkpoint)
    space = net.space
    rng = np.random.default_rng(0)
    specs = [space.max_spec(bits=8), space.max_spec(bits=4), space.min_spec(bits=2), space.max_spec(bits=2)]
    specs += [space.sample(rng, bits=(2, 3, 4, 8)) for _ in range(max(0, args.n - len(specs)))]
    specs = specs[:args.n]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exported = []
        for k, spec in enumerate(specs):
            data = make_datasets(net.data, spec.resolution, space=space)
            calibrate_best(net, spec, data)
            res = export_subnet(net, spec, data, tmp / f"{k}.tflite", args.target)
            n = min(args.test_images, len(data["test"]))
            x = resize(torch.stack([data["test"][i][0] for i in range(n)]), spec.resolution)
            y = np.array([data["test"][i][1] for i in range(n)])
            shift = res["graph"].tensors[res["graph"].input].shift
            nhwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
            q = TFLiteModel(res["bytes"]).quantize_input(nhwc, shift)
            np.save(tmp / f"{k}_in.npy", q)
            exported.append((spec, res, x, y, q))
        for delegate in args.delegate or DELEGATES:
            t = time.perf_counter()
            try:
                outs = outputs_in(python, [str(tmp / f"{k}.tflite") for k in range(len(specs))],
                                  [str(tmp / f"{k}_in.npy") for k in range(len(specs))], str(tmp), delegate,
                                  args.op_images)
            except RuntimeError as e:
                sys.exit(f"runtime_fidelity: {e}")
            t_there = time.perf_counter() - t
            for (spec, res, x, y, q), (ints, kept) in zip(exported, outs):
                g = res["graph"]
                here = TFLiteModel(res["bytes"], delegate=delegate)
                ints_here = np.concatenate([here.invoke_q(q[i:i + 1]) for i in range(len(q))])
                out_t = g.tensors[g.output]
                sim = out_t.quantize(DeployedModel(g, delegate, arch)(x).numpy()).reshape(ints.shape)
                d_sim = np.abs(ints.astype(np.int32) - sim.astype(np.int32))
                d_here = np.abs(ints.astype(np.int32) - ints_here.astype(np.int32))
                ops_off: dict[str, list] = {}
                for row in sorted(kept):
                    for op, d in tensor_diffs(g, delegate, kept[row], arch):
                        a = ops_off.setdefault(op.kind + ("" if op.act == "none" else f"/{op.act}"), [0, 0, 0])
                        a[0], a[1], a[2] = a[0] + int((d != 0).sum()), a[1] + d.size, max(a[2], float(np.abs(d).max()))
                r = {"spec": str(spec), "delegate": delegate, "there": there, "arch": arch, "images": len(y),
                     "top1_there": 100.0 * float((ints.argmax(1) == y).mean()),
                     "top1_here": 100.0 * float((ints_here.argmax(1) == y).mean()),
                     "top1_deployed": 100.0 * float((sim.argmax(1) == y).mean()),
                     "agree_deployed": 100.0 * float((ints.argmax(1) == sim.argmax(1)).mean()),
                     "agree_here": 100.0 * float((ints.argmax(1) == ints_here.argmax(1)).mean()),
                     "max_lsb_deployed": int(d_sim.max()), "logits_off_deployed_pct": 100.0 * float((d_sim > 0).mean()),
                     "max_lsb_here": int(d_here.max()), "logits_off_here_pct": 100.0 * float((d_here > 0).mean()),
                     "ops_off": {k: {"off_pct": 100.0 * a / b, "max": mx} for k, (a, b, mx) in sorted(ops_off.items())},
                     "seconds_there": t_there / len(specs)}
                rows.append(r)
                if not args.json:
                    print(f"{delegate:8s} {there}: file {r['top1_there']:.2f} (here {r['top1_here']:.2f}, as deployed "
                          f"{r['top1_deployed']:.2f}); agreement with as deployed {r['agree_deployed']:.2f}%, "
                          f"max {r['max_lsb_deployed']} LSB, {r['logits_off_deployed_pct']:.2f}% of logits off; with "
                          f"the file here {r['agree_here']:.2f}%, {r['logits_off_here_pct']:.2f}% off  {str(spec)[:60]}\n"
                          f"         ops off (vs simulated op, {len(kept)} images): " +
                          (", ".join(f"{k} {o['off_pct']:.3f}% (max {o['max']:g})" for k, o in r["ops_off"].items()
                                     if o["off_pct"]) or "none"), flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
