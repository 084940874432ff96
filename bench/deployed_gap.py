"""Where a subnet loses accuracy between its fake-quant PyTorch model and its .tflite, tensor by
tensor: every tensor the file quantizes that no trained quantizer owns (8-bit ranges fixed by
calibration: the input, hardswish pre-activations, residual sums, SE internals, logits).

    python bench/deployed_gap.py --checkpoint runs/fmnist_fp [--sample min:2] [--test-images 2000]

On the first ``--test-images`` test images (same calibration for every row):
fake-quant top-1; as deployed (export.simulate, = the file); as deployed with ALL calibrated
tensors left real (what remains: the trained grids, the int32 bias, the shift constants, the
conv requantization); then per calibrated tensor, top-1 with only that tensor left real
(the recovery it alone accounts for) and with only that tensor quantized (the loss it alone
causes), largest first.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from export.deploy import deployed_model  # noqa: E402
from export.simulate import DeployedModel  # noqa: E402
from qfa.nn.data import make_datasets  # noqa: E402
from qfa.nn.evaluate import accuracy, calibrate_best  # noqa: E402
from qfa.nn.supernet import Supernet, extract  # noqa: E402


def with_real(graph, names: set[str]):
    """A copy of ``graph`` whose tensors ``names`` stay real (unquantized) when run."""
    g = copy.deepcopy(graph)
    for n in names:
        g.tensors[n].scale = None
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--sample", default="min:2", help="one spec as qfa eval --sample names it (default min:2)")
    ap.add_argument("--target", default="tflite-int8")
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--calib-draws", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    net = Supernet.from_checkpoint(args.checkpoint)
    spec = net.space.sample_specs(args.sample)[0]
    data = make_datasets(net.data, spec.resolution, space=net.space)
    calibrate_best(net, spec, data, draws=args.calib_draws,
                   model_for=lambda n, s: deployed_model(n, s, data, args.target))
    sub = extract(net, spec).eval()
    dm = deployed_model(net, spec, data, args.target)
    n_test = min(args.test_images, len(data["test"]))

    def top1(model) -> float:
        return accuracy(model, data["test"], spec.resolution, n_test)

    g = dm.graph
    calibrated = [n for n, t in g.tensors.items() if t.fixed and not t.is_float and not t.learned]
    producer = {op.output: op for op in g.ops}
    fq, dep = top1(sub), top1(dm)
    none_q = top1(DeployedModel(with_real(g, set(calibrated))))
    rows = []
    for n in calibrated:
        op = producer.get(n)
        rows.append({"tensor": n, "op": "input" if op is None else op.kind + ("" if op.act == "none" else f"/{op.act}"),
                     "scale": g.tensors[n].scale,
                     "only_real": top1(DeployedModel(with_real(g, {n}))),
                     "only_quantized": top1(DeployedModel(with_real(g, set(calibrated) - {n})))})
        print(f"  {n:40s} {rows[-1]['op']:22s} real alone {rows[-1]['only_real']:6.2f}  "
              f"quantized alone {rows[-1]['only_quantized']:6.2f}", file=sys.stderr, flush=True)
    rows.sort(key=lambda r: r["only_quantized"])
    out = {"spec": str(spec), "test_images": n_test, "fake_quant": fq, "deployed": dep,
           "deployed_calibrated_real": none_q, "tensors": rows}
    if args.json:
        print(json.dumps(out))
        return
    print(f"{spec}\non {n_test} test images: fake-quant {fq:.2f}%, as deployed {dep:.2f}%, as deployed with the "
          f"{len(calibrated)} calibrated 8-bit tensors real {none_q:.2f}%")
    print(f"{'tensor':40s} {'op':22s} {'quantized alone':>15s} {'real alone':>10s}")
    for r in rows:
        print(f"{r['tensor']:40s} {r['op']:22s} {r['only_quantized'] - none_q:+15.2f} {r['only_real'] - dep:+10.2f}")


if __name__ == "__main__":
    main()
