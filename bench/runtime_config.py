"""Which runtime configuration runs a subnet fastest on this device: XNNPACK or TFLite's builtin
kernels, 1 thread or all cores, per model size and lowering.

    python bench/runtime_config.py [--space fmnist] [--csv runtime_config.csv]

Whole subnets built as the latency tables build them (random weights on the trained grids: the
kernels do not care which integers they multiply): the min and max subnet at W8A8 and at W4A4
(int8 values + a MINIMUM clamp), at the smallest and largest resolution, plus 4 random
mixed-precision subnets, under both hardswish lowerings; each timed under every (delegate,
threads) configuration in this process (the fastest of 200 invokes, as tables record it). Prints one row per model, its
fastest configuration and the ratio builtin / XNNPACK, and writes the CSV.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from export.targets import DELEGATES, TARGETS  # noqa: E402
from hw.blocks import BlockFactory  # noqa: E402
from hw.build import write_model  # noqa: E402
from hw.runner import time_model  # noqa: E402
from hw.transport import Local, RunConfig  # noqa: E402
from qfa.core.space import get_space  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="fmnist")
    ap.add_argument("--csv", default="runtime_config.csv")
    args = ap.parse_args()
    space = get_space(args.space)
    facts = Local("local", RunConfig()).facts()
    threads = sorted({1, os.cpu_count() or 1})
    configs = [(d, t) for d in DELEGATES for t in threads]
    print(f"{facts.get('cpu')} ({facts.get('cores')} cores), {facts.get('runtime')}; configurations "
          + ", ".join(f"{d}/{t}t" for d, t in configs))
    rng = np.random.default_rng(0)
    r_lo, r_hi = min(space.resolutions), max(space.resolutions)
    specs = [(f"{n} W{b}A{b} r{r}", f(bits=b).replace(resolution=r)) for r in (r_lo, r_hi)
             for n, f in (("min", space.min_spec), ("max", space.max_spec)) for b in (8, 4)]
    specs += [(f"random {i}", space.sample(rng)) for i in range(4)]
    factory, rows = BlockFactory(space), []
    print(f"{'model':22s} {'lowering':16s} " + " ".join(f"{d + '/' + str(t) + 't':>11s}" for d, t in configs)
          + "  fastest       builtin/xnnpack (1t)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in specs:
            for tname in ("tflite-int8", "tflite-int8-hswish-decomposed"):
                path = str(write_model(factory.whole(spec, TARGETS[tname]), tmp))
                us = {c: time_model(path, c[1], delegate=c[0])["min_us"] for c in configs}
                best = min(us, key=us.get)
                ratio = us["builtin", 1] / us["xnnpack", 1]
                low = "hswish ADD+MUL" if "decomposed" in tname else "HARD_SWISH"
                print(f"{name:22s} {low:16s} " + " ".join(f"{us[c]:11.1f}" for c in configs)
                      + f"  {best[0] + '/' + str(best[1]) + 't':12s}  {ratio:.2f}", flush=True)
                rows.append({"model": name, "spec": str(spec), "lowering": tname, **{f"{d}_{t}t_us": us[d, t]
                             for d, t in configs}, "fastest": f"{best[0]}/{best[1]}t", "builtin_over_xnnpack_1t": ratio})
    import pandas as pd
    pd.DataFrame(rows).to_csv(args.csv, index=False)
    r = np.array([row["builtin_over_xnnpack_1t"] for row in rows])
    print(f"builtin / XNNPACK at 1 thread: median {np.median(r):.2f}, range {r.min():.2f}-{r.max():.2f}; "
          f"fastest configuration: " + ", ".join(f"{k} x{v}" for k, v in
                                                   sorted(pd.Series([x['fastest'] for x in rows]).value_counts().items())))
    print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
