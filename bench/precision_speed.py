"""Which precisions buy speed on this device, and which only buy size: per block type.

    python bench/precision_speed.py [--space fmnist] [--resolution 32] [--threads 1]

For the pieces a latency table measures (stem, first block, the first and a later block of each
stage, head), times the same piece as float32 (onnx2tf's float model of the folded graph),
int8 (W8A8), int8 with a sub-8-bit activation clamp (W4A4), INT4 CONV_2D weights (W4A4 under
tflite-int4w) and int8 with hardswish decomposed, in this process's interpreter. Prints one row
per piece and the ratios to int8.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from export.onnx import to_onnx  # noqa: E402
from export.onnx2tf_path import onnx2tf_int8  # noqa: E402
from export.tflite import TARGETS  # noqa: E402
from hw.blocks import BlockFactory, split  # noqa: E402
from hw.entries import entries  # noqa: E402
from hw.runner import time_model  # noqa: E402
from qfa.space import get_space  # noqa: E402

COLUMNS = (("float32", None, 8), ("int8 W8A8", "tflite-int8", 8), ("int8 W4A4 (clamp)", "tflite-int8", 4),
           ("int4w W4A4", "tflite-int4w", 4), ("int8 W8A8 hswish ADD+MUL", "tflite-int8-hswish-decomposed", 8))


def _time(blob: bytes, threads: int) -> float:
    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(blob)
        f.flush()
        return time_model(f.name, threads=threads, runs=200)["median_us"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--space", default="fmnist")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    space = get_space(args.space)
    factory = BlockFactory(space)
    keep = None  # indices of the pieces reported: stem, first, p0/p1 of each stage, head
    times: dict[str, list[float]] = {}
    for col, target, bits in COLUMNS:
        spec = space.max_spec(bits=bits).replace(resolution=args.resolution)
        ents = entries(spec, TARGETS[target or "tflite-int8"])
        if keep is None:
            seen, keep = set(), []
            for i, e in enumerate(ents):
                if (e.kind, e.stage, e.pos) not in seen:
                    seen.add((e.kind, e.stage, e.pos))
                    keep.append(i)
            names = [f"{ents[i].kind}{'' if ents[i].kind != 'mb' else f' s{ents[i].stage}p{ents[i].pos}'} "
                     f"{ents[i].hw}x{ents[i].hw}x{ents[i].c_in}>{ents[i].c_out} k{ents[i].kernel} m{ents[i].mid}"
                     for i in keep]
        if target is None:  # float: the unshifted folded graph, through onnx2tf's float32 model
            g = factory.graph(spec, shifts=False)
            blobs = []
            for i in keep:
                piece = split(g, spec)[i]
                shape = piece.tensors[piece.input].shape
                calib = np.random.default_rng(0).normal(0, 1, (4, *shape[1:])).astype(np.float32)
                blobs.append(onnx2tf_int8(to_onnx(piece, qdq=False), calib, variant="float32"))
        else:
            pieces = factory.pieces(spec, TARGETS[target])
            blobs = [pieces[i][1] for i in keep]
        times[col] = [_time(b, args.threads) for b in blobs]
        print(f"{col}: done", file=sys.stderr, flush=True)
    head = "piece".ljust(44) + "".join(f"{c[0]:>26s}" for c in COLUMNS)
    print(head)
    for j, name in enumerate(names):
        base = times["int8 W8A8"][j]
        print(name.ljust(44) + "".join(f"{times[c[0]][j]:>13.1f} us ({times[c[0]][j] / base:4.2f}x)" for c in COLUMNS))
    tot = {c[0]: sum(times[c[0]]) for c in COLUMNS}
    print("sum".ljust(44) + "".join(f"{tot[c[0]]:>13.1f} us ({tot[c[0]] / tot['int8 W8A8']:4.2f}x)" for c in COLUMNS))
    if args.json:
        print(json.dumps({"pieces": names, "times_us": times}))


if __name__ == "__main__":
    main()
