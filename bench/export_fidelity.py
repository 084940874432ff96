"""Export fidelity: the .tflite vs the subnet as deployed (export.simulate) and vs the PyTorch
fake-quant model, on the test set of the supernet's data, per subnet.

    python bench/export_fidelity.py --checkpoint runs/fmnist_bq [--n 6] [--test-images 10000] [--delegate builtin]

One row per subnet (max W8, max W4, min W2, max W2 and random 2/3/4/8-bit mixes): top-1 of the
file, of the as-deployed model and of the fake-quant model; agreement of each model with the
file; the largest logit difference in output LSB; what calibrating the subnet as deployed costs
beside today's calibration (BN statistics + BatchQuant ranges); conversion time and file size.
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
from export.deploy import deployed_model, export_subnet, verify_tflite  # noqa: E402
from qfa.nn.evaluate import calibrate_best  # noqa: E402
from export.verify import TFLiteModel, op_diffs  # noqa: E402
from qfa.nn.data import resize  # noqa: E402
from qfa.nn.supernet import Supernet  # noqa: E402


def op_mismatch(res: dict, test, n: int, delegate: str) -> dict[str, dict]:
    """Per op kind (and fused activation): the share of output values the file computes
    differently from the simulated op on the file's own inputs, and the largest difference."""
    g, m = res["graph"], TFLiteModel(res["bytes"], preserve=True, delegate=delegate)
    out: dict[str, list] = {}
    for i in range(n):
        x = resize(test[i][0][None], g.meta["resolution"]).permute(0, 2, 3, 1).numpy()
        for op, d in op_diffs(g, m, np.ascontiguousarray(x)):
            k = op.kind + ("" if op.act == "none" else f"/{op.act}")
            acc = out.setdefault(k, [0, 0, 0])
            acc[0] += int((d != 0).sum())
            acc[1] += d.size
            acc[2] = max(acc[2], int(np.abs(d).max()))
    return {k: {"off_pct": 100.0 * a / b, "max_lsb": mx} for k, (a, b, mx) in sorted(out.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--n", type=int, default=6, help="subnets (default 6)")
    ap.add_argument("--delegate", default="xnnpack", choices=["xnnpack", "builtin"])
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--target", default="tflite-int8")
    ap.add_argument("--no-onnx2tf", action="store_true", help="skip the onnx2tf comparison")
    ap.add_argument("--op-images", type=int, default=20, help="test images for the op-by-op comparison (default 20)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    net = Supernet.from_checkpoint(args.checkpoint)
    space = net.space
    rng = np.random.default_rng(0)
    specs = [space.max_spec(bits=8), space.max_spec(bits=4), space.min_spec(bits=2), space.max_spec(bits=2)]
    specs += [space.sample(rng, bits=(2, 3, 4, 8)) for _ in range(max(0, args.n - len(specs)))]
    rows = []
    print(f"{'tflite':>7s} | {'deployed':>8s} {'diff':>6s} {'agree':>7s} {'lsb':>4s} | {'pytorch':>7s} {'diff':>6s} "
          f"{'agree':>7s} | {'onnx':>6s} {'o2t':>6s} {'o2t_agr':>7s} | {'calib_x':>7s} {'conv_ms':>8s} {'bytes':>9s}  spec")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs[:args.n]:
            data = make_datasets(net.data, spec.resolution, space=space)
            t = time.perf_counter()
            calibrate_best(net, spec, data)
            t_cal = time.perf_counter() - t
            deployed_model(net, spec, data, args.target)
            t_dep = time.perf_counter() - t - t_cal
            res = export_subnet(net, spec, data, Path(tmp) / "m.tflite", args.target, onnx_out=Path(tmp) / "m.onnx")
            t = time.perf_counter()
            v = verify_tflite(res["bytes"], res["graph"], res["subnet"], data["test"], args.test_images,
                              (Path(tmp) / "m.onnx").read_bytes(), delegate=args.delegate)
            if not args.no_onnx2tf:
                o = export_subnet(net, spec, data, Path(tmp) / "o.tflite", via="onnx2tf")
                vo = verify_tflite(o["bytes"], o["graph"], o["subnet"], data["test"], args.test_images, direct=False)
                v["onnx2tf_top1"], v["onnx2tf_agreement"] = vo["tflite_top1"], vo["agreement"]
            row = {"spec": str(spec), "hash": spec.hash, "convert_ms": res["sidecar"]["convert_s"] * 1000,
                   "calib_s": t_cal, "deploy_s": t_dep, "calib_cost_x": (t_cal + t_dep) / t_cal,
                   "fold_s": res["sidecar"]["fold_s"], "verify_s": time.perf_counter() - t, **v}
            row["ops_off"] = op_mismatch(res, data["test"], args.op_images, args.delegate)
            rows.append(row)
            print(f"{v['tflite_top1']:7.2f} | {v['deployed_top1']:8.2f} {v['tflite_top1'] - v['deployed_top1']:+6.2f} "
                  f"{v['deployed_agreement']:7.2f} {v.get('deployed_max_logit_error_lsb', float('nan')):4.0f} | {v['pytorch_top1']:7.2f} "
                  f"{v['tflite_top1'] - v['pytorch_top1']:+6.2f} {v['agreement']:7.2f} | {v['onnx_top1']:6.2f} "
                  f"{v.get('onnx2tf_top1', float('nan')):6.2f} {v.get('onnx2tf_agreement', float('nan')):7.2f} | "
                  f"{row['calib_cost_x']:7.2f} {row['convert_ms']:8.1f} {v['bytes']:9,d}  {str(spec)[:90]}\n"
                  f"        ops off (file vs simulated op, {args.op_images} images): " +
                  ", ".join(f"{k} {o['off_pct']:.3f}% (max {o['max_lsb']})" for k, o in row["ops_off"].items()
                            if o["off_pct"]), flush=True)
    dep = [r["deployed_agreement"] for r in rows]
    fq = [r["agreement"] for r in rows]
    summary = (f"as deployed vs file: agreement min {min(dep):.2f}% mean {np.mean(dep):.2f}% (targets >= 99.5%, W2A2 >= 98%), "
               f"max |top-1 diff| {max(abs(r['tflite_top1'] - r['deployed_top1']) for r in rows):.2f} points (target <= 0.1); "
               f"fake-quant vs file: agreement min {min(fq):.2f}% mean {np.mean(fq):.2f}%, max |top-1 diff| "
               f"{max(abs(r['tflite_top1'] - r['pytorch_top1']) for r in rows):.2f}; calibration as deployed costs "
               f"{max(r['calib_cost_x'] for r in rows):.2f}x today's at most (target <= 1.2x); conversion max "
               f"{max(r['convert_ms'] for r in rows):.0f} ms; {args.delegate}, 1 thread")
    print(json.dumps(rows) if args.json else summary)


if __name__ == "__main__":
    main()
