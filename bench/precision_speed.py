"""Which precisions buy speed on this device, and which only buy size: per block type.

    python bench/precision_speed.py [--space fmnist] [--resolution 32] [--threads 1] [--delegate xnnpack]
                                    [--checkpoint RUN]

For the pieces a latency table measures (stem, first block, the first and a later block of each
stage, head), times the same piece as float32 (onnx2tf's float model of the folded graph),
int8 (W8A8), int8 with a sub-8-bit activation clamp (W4A4), INT4 CONV_2D weights (W4A4 under
tflite-int4w), int8 with hardswish decomposed, and FP under the float targets (float32, fp16
weights; the export's own writer), in this process's interpreter (``--delegate``). Prints one row
per piece and the ratios to int8, int8 HARD_SWISH vs ADD+MUL as single ops, and with
``--checkpoint`` whole trained subnets exported under both hardswish lowerings.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from export.ir import Graph, Op, QTensor  # noqa: E402
from export.onnx import to_onnx  # noqa: E402
from export.onnx2tf_path import onnx2tf_int8  # noqa: E402
from export.targets import DELEGATES, TARGETS  # noqa: E402
from export.tflite import to_tflite  # noqa: E402
from hw.blocks import BlockFactory, split  # noqa: E402
from hw.entries import entries  # noqa: E402
from hw.runner import time_model  # noqa: E402
from qfa.core.space import get_space  # noqa: E402

COLUMNS = (("float32 (onnx2tf)", None, 8), ("int8 W8A8", "tflite-int8", 8), ("int8 W4A4 (clamp)", "tflite-int8", 4),
           ("int4w W4A4", "tflite-int4w", 4), ("int8 W8A8 hswish ADD+MUL", "tflite-int8-hswish-decomposed", 8),
           ("FP float32 (tflite-f32)", "tflite-f32-hswish-decomposed", 32),
           ("FP fp16 weights (tflite-f16)", "tflite-f16-hswish-decomposed", 32))


DELEGATE = "xnnpack"


def _time(blob: bytes, threads: int) -> float:
    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(blob)
        f.flush()
        return time_model(f.name, threads=threads, runs=200, delegate=DELEGATE)["min_us"]


def _hswish_ops(threads: int) -> list[tuple[str, float, float]]:
    """Single-op models: int8 HARD_SWISH vs ADD + MUL (the input pre-scaled by 1/sqrt6, as
    ``export.lower.decompose_hswish`` scales the producing conv)."""
    r6 = float(np.sqrt(6.0))
    rows = []
    for h, c in [(32, 16), (16, 72), (8, 120), (4, 288)]:
        shape, y = (1, h, h, c), QTensor("y", (1, h, h, c), scale=0.04, zero_point=-100)
        op = Graph({"x": QTensor("x", shape, scale=0.06, zero_point=-10), "y": y}, [Op("hswish", ["x"], "y")], "x", "y")
        dec = Graph({"x": QTensor("x", shape, scale=0.06 / r6, zero_point=-10),
                     "g": QTensor("g", shape, scale=r6 / 255, zero_point=-128), "y": y},
                    [Op("addc", ["x"], "g", const=np.full((1, 1, 1, 1), 3 / r6)), Op("mul", ["x", "g"], "y")], "x", "y")
        rows.append((f"{h}x{h}x{c}", _time(to_tflite(op), threads), _time(to_tflite(dec), threads)))
    return rows


def _trained(checkpoint: str, threads: int) -> list[tuple[str, float, float]]:
    """Whole subnets of a trained supernet exported for both hardswish lowerings."""
    from qfa.nn.data import make_datasets
    from export.deploy import export_subnet
    from qfa.nn.supernet import Supernet
    net = Supernet.from_checkpoint(checkpoint)
    sp, rng = net.space, np.random.default_rng(0)
    specs = [("max W8A8", sp.max_spec(bits=8)), ("min W2A2", sp.min_spec(bits=2))]
    specs += [(f"2/3/4/8 mix {i + 1}", sp.sample(rng, bits=(2, 3, 4, 8))) for i in range(2)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in specs:
            data = make_datasets(None, spec.resolution)
            us = [_time(export_subnet(net, spec, data, Path(tmp) / "m.tflite", t)["bytes"], threads)
                  for t in ("tflite-int8", "tflite-int8-hswish-decomposed")]
            rows.append((f"{name} r{spec.resolution}", *us))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="fmnist")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--delegate", choices=DELEGATES, default="xnnpack", help="runtime configuration (default xnnpack)")
    ap.add_argument("--checkpoint", help="also time whole subnets of this trained run under both hardswish lowerings")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    global DELEGATE
    DELEGATE = args.delegate
    space = get_space(args.space)
    factory = BlockFactory(space)
    ents = entries(space.max_spec(bits=8).replace(resolution=args.resolution), TARGETS["tflite-int8"])
    keep, seen = [], set()  # the pieces reported: stem, first, p0/p1 of each stage, head
    for i, e in enumerate(ents):
        if (e.kind, e.stage, e.pos) not in seen:
            seen.add((e.kind, e.stage, e.pos))
            keep.append(i)
    names = [f"{e.kind}{f' s{e.stage}p{e.pos}' if e.kind == 'mb' else ''} {e.hw}x{e.hw}x{e.c_in}>{e.c_out} "
             f"k{e.kernel} m{e.mid}" for e in (ents[i] for i in keep)]
    times: dict[str, list[float]] = {}
    for col, target, bits in COLUMNS:
        spec = space.max_spec(bits=bits).replace(resolution=args.resolution)
        if target is None:  # float: the unshifted folded graph, through onnx2tf's float32 model
            pieces = split(factory.graph(spec, shifts=False), spec)
            blobs = []
            for i in keep:
                shape = pieces[i].tensors[pieces[i].input].shape
                calib = np.random.default_rng(0).normal(0, 1, (4, *shape[1:])).astype(np.float32)
                blobs.append(onnx2tf_int8(to_onnx(pieces[i], qdq=False), calib, variant="float32"))
        else:
            pieces = factory.pieces(spec, TARGETS[target])
            blobs = [pieces[i][1] for i in keep]
        times[col] = [_time(b, args.threads) for b in blobs]
        print(f"{col}: done", file=sys.stderr, flush=True)
    hsw = _hswish_ops(args.threads)
    trained = _trained(args.checkpoint, args.threads) if args.checkpoint else []
    print("int8 HARD_SWISH vs ADD+MUL, single-op models:")
    for shape, a, b in hsw:
        print(f"  {shape:12s} {a:8.1f} us vs {b:7.1f} us ({a / b:4.1f}x)")
    for name, a, b in trained:
        print(f"  trained {name:24s} HARD_SWISH {a:8.1f} us, ADD+MUL {b:8.1f} us ({a / b:4.2f}x faster)")
    print("piece".ljust(44) + "".join(f"{c[0]:>26s}" for c in COLUMNS))
    for j, name in enumerate(names):
        base = times["int8 W8A8"][j]
        print(name.ljust(44) + "".join(f"{times[c[0]][j]:>13.1f} us ({times[c[0]][j] / base:4.2f}x)" for c in COLUMNS))
    tot = {c[0]: sum(times[c[0]]) for c in COLUMNS}
    print("sum".ljust(44) + "".join(f"{tot[c[0]]:>13.1f} us ({tot[c[0]] / tot['int8 W8A8']:4.2f}x)" for c in COLUMNS))
    if args.json:
        print(json.dumps({"pieces": names, "times_us": times, "hswish_ops": hsw, "trained": trained}))


if __name__ == "__main__":
    main()
