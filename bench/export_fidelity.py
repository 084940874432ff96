"""Export fidelity: TFLite vs PyTorch fake-quant on the Fashion-MNIST test set, per subnet.

    python bench/export_fidelity.py --checkpoint runs/fmnist_bq [--n 5] [--test-images 10000]

Prints one row per subnet (max W8, max W4, min W2 and random 2/3/4/8-bit mixes): PyTorch top-1,
TFLite top-1, their difference, top-1 agreement, conversion time and file size.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qfa.nn.data import make_datasets  # noqa: E402
from export.deploy import export_subnet, verify_tflite  # noqa: E402
from qfa.nn.supernet import Supernet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--n", type=int, default=5, help="subnets (default 5)")
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--target", default="tflite-int8")
    ap.add_argument("--no-onnx2tf", action="store_true", help="skip the onnx2tf comparison")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    net = Supernet.from_checkpoint(args.checkpoint)
    space = net.space
    rng = np.random.default_rng(0)
    specs = [space.max_spec(bits=8), space.max_spec(bits=4), space.min_spec(bits=2)]
    specs += [space.sample(rng, bits=(2, 3, 4, 8)) for _ in range(max(0, args.n - len(specs)))]
    rows = []
    print(f"{'pytorch':>8s} {'tflite':>7s} {'diff':>6s} {'agree':>7s} {'onnx':>6s} {'o2t':>6s} {'o2t_agr':>7s} "
          f"{'conv_ms':>8s} {'bytes':>9s}  spec")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs[:args.n]:
            data = make_datasets(None, spec.resolution)
            res = export_subnet(net, spec, data, Path(tmp) / "m.tflite", args.target, onnx_out=Path(tmp) / "m.onnx")
            t = time.perf_counter()
            v = verify_tflite(res["bytes"], res["graph"], res["subnet"], data["test"], args.test_images,
                              (Path(tmp) / "m.onnx").read_bytes())
            if not args.no_onnx2tf:
                o = export_subnet(net, spec, data, Path(tmp) / "o.tflite", via="onnx2tf")
                vo = verify_tflite(o["bytes"], o["graph"], o["subnet"], data["test"], args.test_images, direct=False)
                v["onnx2tf_top1"], v["onnx2tf_agreement"] = vo["tflite_top1"], vo["agreement"]
            row = {"spec": str(spec), "hash": spec.hash, "convert_ms": res["sidecar"]["convert_s"] * 1000,
                   "fold_s": res["sidecar"]["fold_s"], "verify_s": time.perf_counter() - t, **v}
            rows.append(row)
            print(f"{v['pytorch_top1']:8.2f} {v['tflite_top1']:7.2f} {v['tflite_top1'] - v['pytorch_top1']:+6.2f} "
                  f"{v['agreement']:7.2f} {v['onnx_top1']:6.2f} {v.get('onnx2tf_top1', float('nan')):6.2f} "
                  f"{v.get('onnx2tf_agreement', float('nan')):7.2f} {row['convert_ms']:8.1f} {v['bytes']:9,d}  {str(spec)[:90]}",
                  flush=True)
    agree = [r["agreement"] for r in rows]
    worst_diff = max(abs(r["tflite_top1"] - r["pytorch_top1"]) for r in rows)
    summary = (f"agreement: min {min(agree):.2f}%  mean {np.mean(agree):.2f}%  (target >= 99.5%);  "
               f"max |top-1 diff| {worst_diff:.2f} points (target <= 0.2);  "
               f"conversion max {max(r['convert_ms'] for r in rows):.0f} ms (target <= 10 s)")
    print(json.dumps(rows) if args.json else summary)


if __name__ == "__main__":
    main()
