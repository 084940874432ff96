"""The subnet as deployed (export.simulate): the lowered graph run in PyTorch gives the .tflite's
own integers, for every target and runtime configuration (real ai-edge-litert runs), and
labels record how they were scored."""
import os
import sys

import numpy as np
import pytest
import torch

from .conftest import perturb
from export.deploy import deployed_model, export_subnet
from export.fold import fold
from export.ir import Graph, Op, QTensor, grid_qparams, range_qparams
from export.reference import fix_ranges
from export.simulate import DeployedModel
from export.targets import DELEGATES, FAKE_QUANT, TARGETS
from export.tflite import to_tflite
from export.verify import TFLiteModel, op_diffs, tensor_diffs
from qfa.core.space import FP, get_space
from qfa.nas.predictor import PredictorError, collect, load_rows, scoring_of
from qfa.nn.calibrate import calibrate
from qfa.nn.evaluate import calibrate_best
from qfa.nn.data import make_datasets, resize
from qfa.nn.supernet import Supernet, extract

SPACE = get_space("fmnist")


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    net = Supernet(SPACE)
    perturb(net, seed=3)
    return net


SPECS = {"w8a8-min": SPACE.min_spec(bits=8), "w2a2-min": SPACE.min_spec(bits=2),
         "mixed": SPACE.sample(np.random.default_rng(5), bits=(2, 3, 4)).replace(resolution=24)}


def _share_limit(delegate: str) -> float:
    """The share of an op's values allowed 1 LSB off the simulation, as measured: XNNPACK
    requantizes in float32 as the simulation does (<= 0.13% off); the builtin kernels' fixed-point
    arithmetic (theirs also for INT4-weight convs under XNNPACK) is simulated exactly."""
    return 0.005 if delegate == "xnnpack" else 0.0


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("delegate", DELEGATES)
def test_the_simulation_gives_the_files_integers(supernet, fmnist_train, target, delegate):
    """Op by op and whole subnets: the simulated logits are the interpreter's, as integers.
    Under the builtin kernels every integer is the file's; under XNNPACK rare 1-LSB differences
    (:func:`_share_limit`), which a chaotic random subnet amplifies in its logits."""
    for name, spec in SPECS.items():
        x = resize(fmnist_train[:576], spec.resolution)
        calibrate(supernet, spec, x[:512].split(256), 512)
        g = TARGETS[target].lower(fold(extract(supernet, spec), x[:256]))
        xt = x[512:]
        sim = DeployedModel(g, delegate)(xt).numpy()
        tfl = TFLiteModel(to_tflite(g, target), delegate=delegate).logits(
            np.ascontiguousarray(xt.permute(0, 2, 3, 1).numpy()), g.tensors[g.input].shift)
        m = TFLiteModel(to_tflite(g, target), preserve=True, delegate=delegate)
        # op by op on the file's own inputs: at most 1 LSB, on a rare value (measured: <= 0.13%)
        for i in range(2):
            for op, d in op_diffs(g, m, np.ascontiguousarray(xt[i:i + 1].permute(0, 2, 3, 1).numpy())):
                if g.tensors[op.output].is_float:  # float32 ops: to float32 rounding
                    assert np.abs(d).max() <= 1e-5, (name, op.output, float(np.abs(d).max()))
                    continue
                assert np.abs(d).max() <= 1, (name, op.output)
                assert (d != 0).mean() <= _share_limit(delegate), (name, op.output, float((d != 0).mean()))
        # whole subnets: a random supernet is chaotic, rare 1-LSB differences grow; measured
        # >= 94% of int8 logits identical (float32 logits: within 1e-4 of the largest)
        out = g.tensors[g.output]
        same = (np.abs(sim - tfl) <= 1e-4 * np.abs(sim).max(1, keepdims=True) if out.is_float
                else np.abs(sim - tfl) / out.scale < 0.5)
        exact = delegate == "builtin" and not out.is_float  # no 1-LSB differences to grow
        assert same.mean() >= (1.0 if exact else 0.9), (name, float(same.mean()))
        assert (sim.argmax(1) == tfl.argmax(1)).mean() >= 0.95, name


def _run_in(python: list[str], net, specs: list, fmnist_train, tmp_path, delegate: str, keep: int):
    """Each spec of ``net`` lowered for tflite-int8 and run on 3 training images
    in ``python`` by the device-side runner: [(graph, here's model, its inputs, outputs, tensors)]."""
    from hw.runner import outputs_in
    made = []
    for k, spec in enumerate(specs):
        x = resize(fmnist_train[:515], spec.resolution)
        calibrate(net, spec, x[:512].split(256), 512)
        g = TARGETS["tflite-int8"].lower(fold(extract(net, spec), x[:256]))
        (tmp_path / f"{k}.tflite").write_bytes(to_tflite(g, "tflite-int8"))
        here = TFLiteModel(tmp_path / f"{k}.tflite", delegate=delegate)
        q = here.quantize_input(np.ascontiguousarray(x[512:].permute(0, 2, 3, 1).numpy()), g.tensors[g.input].shift)
        np.save(tmp_path / f"{k}_in.npy", q)
        made.append((g, here, q))
    outs = outputs_in(python, [str(tmp_path / f"{k}.tflite") for k in range(len(specs))],
                      [str(tmp_path / f"{k}_in.npy") for k in range(len(specs))], str(tmp_path), delegate, keep,
                      timeout=600)
    return [(*m, out, kept) for m, (out, kept) in zip(made, outs)]


@pytest.mark.parametrize("delegate", DELEGATES)
def test_the_device_side_runner_gives_the_files_integers_and_tensors(supernet, fmnist_train, tmp_path, delegate):
    """hw/runner.py's outputs mode (what bench/runtime_fidelity.py runs in another CPU's Python,
    here in this one) returns the interpreter's outputs and every tensor of the first inputs, which
    compare op by op with the simulation as the interpreter's own do."""
    [(g, here, q, out, kept)] = _run_in([sys.executable], supernet, [SPECS["w2a2-min"]], fmnist_train, tmp_path,
                                        delegate, 2)
    assert out.shape == (3, 10) and np.array_equal(out, np.concatenate([here.invoke_q(q[i:i + 1]) for i in range(3)]))
    assert sorted(kept) == [0, 1] and g.output in kept[0]
    diffs = list(tensor_diffs(g, delegate, kept[0]))
    assert len(diffs) == len(g.ops)
    assert all(np.abs(d).max() <= 1 and (d != 0).mean() <= _share_limit(delegate) for _, d in diffs)


def test_deployed_model_scores_what_the_export_writes(supernet, tmp_path):
    """deployed_model (what labels and `qfa eval` score) is the graph export_subnet writes:
    the same numbers, image for image; the fake-quant model is another function."""
    spec = SPECS["mixed"]
    data = make_datasets(None, spec.resolution)
    calibrate_best(supernet, spec, data, 256)
    m = deployed_model(supernet, spec, data, "tflite-int8")
    res = export_subnet(supernet, spec, data, tmp_path / "m.tflite", "tflite-int8", calib_images=256)
    x = resize(torch.stack([data["test"][i][0] for i in range(32)]), spec.resolution)
    y = m(x)
    assert torch.equal(y, DeployedModel(res["graph"])(x))
    with supernet.active(spec):
        assert not torch.equal(y, supernet.eval()(x))


def test_labels_record_their_scoring_and_a_mix_is_refused(supernet, tmp_path):
    data = make_datasets(None, SPACE.resolutions[-1])
    out = tmp_path / "labels.csv"
    assert collect(supernet, data, out, 2, calib_images=64, eval_images=64, scored="tflite-int8") == 2
    rows = load_rows(out)
    assert scoring_of(rows) == "tflite-int8" and all(0 <= float(r["top1"]) <= 100 for r in rows)
    with pytest.raises(PredictorError, match="scored as tflite-int8, not fake-quant"):
        collect(supernet, data, out, 3, calib_images=64, eval_images=64, scored=FAKE_QUANT)
    # the builtin kernels compute other integers: their labels say so and are not mixed in
    with pytest.raises(PredictorError, match="scored as tflite-int8, not tflite-int8@builtin"):
        collect(supernet, data, out, 3, calib_images=64, eval_images=64, scored="tflite-int8", delegate="builtin")
    assert len(load_rows(out)) == 2  # nothing appended
    builtin = tmp_path / "builtin.csv"
    assert collect(supernet, data, builtin, 1, calib_images=64, eval_images=64, scored="tflite-int8", delegate="builtin") == 1
    assert scoring_of(load_rows(builtin)) == "tflite-int8@builtin"
    # files from before the field were scored on the fake-quant model; a mix is refused
    assert scoring_of([{"top1": "50"}]) == FAKE_QUANT
    with pytest.raises(PredictorError, match="several ways"):
        scoring_of([{"scored": "tflite-int8"}, {"scored": ""}])


def _ranges_graph(out_grid: QTensor) -> Graph:
    """x -> HARD_SWISH -> h -> requantized onto ``out_grid`` (a trained low-bit grid)."""
    t = {"x": QTensor("x", (1, 8, 8, 1)), "h": QTensor("h", (1, 8, 8, 1)), "o": out_grid}
    return Graph(t, [Op("hswish", ["x"], "h"), Op("requant", ["h"], "o")], "x", "o")


def test_calibrated_ranges_cover_what_the_trained_grid_reads():
    """A heavy-tailed tensor on its way onto a 2-bit grid: its 8-bit range covers the grid's
    codes, not the outliers, so the file's extra rounding changes the 2-bit codes of far fewer
    values than a min/max range (the rounding the trained model does not do)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.laplace(0.0, 1.0, 20000), rng.uniform(-40, 40, 20)]).astype(np.float32)
    h = _hswish_np(x)
    grid = QTensor("o", (1, 8, 8, 1), **grid_qparams(0.5, 0.3, 0, 3))
    g = fix_ranges(_ranges_graph(grid), {"x": [x], "h": [h]})
    olo, ohi = (grid.qmin - grid.zero_point) * grid.scale, (grid.qmax - grid.zero_point) * grid.scale
    th = g.tensors["h"]
    assert 255 * th.scale <= 1.05 * (ohi - olo - min(olo, 0)), th.scale  # the grid's span, and 0
    assert (th.qmax - th.zero_point) * th.scale < 40 and (th.qmin - th.zero_point) * th.scale >= -0.376

    def codes_off(tx: QTensor, th: QTensor) -> float:
        hq = th.dequantize(th.quantize(_hswish_np(tx.dequantize(tx.quantize(x)))))
        return float((grid.quantize(hq) != grid.quantize(h)).mean())

    minmax = _ranges_graph(QTensor("o", (1, 8, 8, 1), **grid_qparams(0.5, 0.3, 0, 3)))
    for name, v in (("x", x), ("h", h)):
        minmax.tensors[name].scale, minmax.tensors[name].zero_point = range_qparams(v.min(), v.max()).values()
    ours, theirs = codes_off(g.tensors["x"], th), codes_off(minmax.tensors["x"], minmax.tensors["h"])
    assert ours <= 0.01 and ours < theirs / 3, (ours, theirs)


def _hswish_np(v: np.ndarray) -> np.ndarray:
    return v * np.clip(v + 3, 0, 6) / 6


@pytest.mark.parametrize("name", [*SPECS, "fp-mix"])
def test_training_as_deployed_quantizes_the_tensors_the_file_calibrates(supernet, fmnist_train, name, monkeypatch):
    """The ``deploy_quant`` training option quantizes one tensor for each 8-bit tensor of the
    folded int8 graph that no trained quantizer owns (calibrated ranges), one 1/255 grid per SE
    gate, one weight per conv the file puts on an 8-bit grid from FP, and nothing in eval mode."""
    import qfa.nn.quant as quant
    spec = SPECS.get(name) or SPACE.sample(np.random.default_rng(9), bits=(2, 8, FP))
    seen = {"tensor": 0, "unit": 0, "weight": 0}

    def counting(kind, fn):
        return lambda x: seen.__setitem__(kind, seen[kind] + 1) or fn(x)

    for kind, attr in (("tensor", "_int8_tensor"), ("unit", "_unit_grid"), ("weight", "_int8_weight_values")):
        monkeypatch.setattr(quant, attr, counting(kind, getattr(quant, attr)))
    x = resize(fmnist_train[:64], spec.resolution)
    supernet.train().set_active(spec)
    supernet.deploy_quant = True
    try:
        with torch.no_grad():
            trained = supernet(x)
            supernet.eval()
            supernet.calibrated_for = spec.hash
            supernet(x)  # evaluation runs the trained model
    finally:
        supernet.deploy_quant = False
    counted = dict(seen)
    calibrate(supernet, spec, [x])
    g = fold(extract(supernet, spec), x[:16])
    shifted = {op.inputs[0] for op in g.ops if op.kind == "addc"}  # the same tensor before a constant shift
    calibrated = [t for t in g.tensors.values() if not (t.learned or t.is_float or t.name in shifted)]
    gates = [t for t in calibrated if t.name.endswith(".se.expand")]
    assert counted == {"tensor": len(calibrated) - len(gates), "unit": len(gates),
                       "weight": sum(op.fweight is not None for op in g.ops)}, ([t.name for t in calibrated], counted)
    assert torch.isfinite(trained).all()


def _one_op_graph(kind: str, c: int, rng: np.random.Generator) -> Graph:
    """x -> ``kind`` -> y over ``c`` channels with random grids: MEAN (keep dims), MUL of x by
    a per-channel gate, or a depthwise conv whose requantization multipliers straddle 1."""
    scale = lambda: float(rng.uniform(0.01, 0.2))  # noqa: E731
    zp = lambda: int(rng.integers(-100, 100))  # noqa: E731
    t = {"x": QTensor("x", (1, 6, 6, c), scale(), zp())}
    if kind == "mean":  # a finer grid, centred where the mean of random codes lands
        x = t["x"] = QTensor("x", (1, 6, 6, c), scale(), zp() // 2)
        t["y"] = QTensor("y", (1, 1, 1, c), x.scale / 2, 2 * x.zero_point + int(rng.integers(-3, 4)))
        return Graph(t, [Op("mean", ["x"], "y")], "x", "y")
    if kind == "mul":
        t["g"] = QTensor("g", (1, 1, 1, c), 1 / 255, -128)
        t["y"] = QTensor("y", (1, 6, 6, c), scale(), zp())
        ops = [Op("mean", ["x"], "m"), Op("conv", ["m"], "g", weight=rng.integers(-127, 128, (c, 1, 1, c)).astype(np.int8),
                                             w_scale=rng.uniform(1e-4, 1e-3, c), bias=rng.uniform(-1, 1, c), act="relu_n1_to_1"),
               Op("mul", ["x", "g"], "y")]
        t["m"] = QTensor("m", (1, 1, 1, c), scale(), zp())
        return Graph(t, ops, "x", "y")
    t["y"] = QTensor("y", (1, 6, 6, c), t["x"].scale / 20, zp())  # multipliers 0.2-3: left shifts too
    w = rng.choice([-2, -1, 1, 2], (1, 1, 1, c)).astype(np.int8)
    return Graph(t, [Op("conv", ["x"], "y", weight=w, w_scale=rng.uniform(0.01, 0.15, c), bias=rng.uniform(-1, 1, c),
                        depthwise=True)], "x", "y")


@pytest.mark.parametrize("kind", ["mean", "mul", "conv"])
def test_the_builtin_kernels_fixed_point_arithmetic_is_simulated_exactly(kind):
    """One op under the builtin kernels, every integer: MEAN over channel counts below, at and
    past a multiple of 16 (its vector lanes and its tail round differently), MUL by a gate, a
    conv whose multipliers reach above 1; random input codes."""
    rng = np.random.default_rng(1)
    for c in (8, 16, 24, 40):
        g = _one_op_graph(kind, c, rng)
        m = TFLiteModel(to_tflite(g), delegate="builtin")
        q = rng.integers(-128, 128, (16, 6, 6, c)).astype(np.int8)
        tin, tout = g.tensors[g.input], g.tensors[g.output]
        x = torch.from_numpy(tin.dequantize(q).astype(np.float32)).permute(0, 3, 1, 2)
        trace: dict[str, torch.Tensor] = {}
        DeployedModel(g, "builtin")(x, trace=trace)
        sim = np.rint(trace[g.output].permute(0, 2, 3, 1).numpy() / tout.scale) + tout.zero_point
        got = np.concatenate([m.invoke_q(q[i:i + 1]) for i in range(len(q))]).reshape(sim.shape)
        assert np.array_equal(sim, got), (kind, c, int((sim != got).sum()))
        assert ((got > -128) & (got < 127)).mean() > 0.1  # not all saturated


def test_arm64s_single_rounding_is_the_exact_product_rounded_half_up_and_not_x86s():
    """ruy's arm64 GEMM rounds acc x M x 2^(shift-31) once, half upward (exact rationals here);
    x86's (and arm64's depthwise/GEMV) two roundings differ from it on some values, which is why
    the simulation takes the CPU architecture."""
    from fractions import Fraction
    from export.simulate import fixed_point, single_rounding
    rng = np.random.default_rng(0)
    acc = rng.integers(-2 ** 22, 2 ** 22, 4000)
    mult, shift = rng.integers(2 ** 30, 2 ** 31, 4000), rng.integers(-14, 1, 4000)
    exact = [int((Fraction(int(a) * int(m), 2 ** (31 - int(s))) + Fraction(1, 2)).__floor__())
             for a, m, s in zip(acc, mult, shift)]
    t = [torch.from_numpy(v) for v in (acc, mult, shift)]
    assert single_rounding(*t).tolist() == exact
    assert (fixed_point(*t, ties_up=True).numpy() != np.array(exact)).sum() > 0
    with pytest.raises(ValueError, match="unknown CPU architecture"):
        DeployedModel(_one_op_graph("conv", 8, rng), "builtin", "riscv64")


ARM64_PYTHON = os.environ.get("QFA_ARM64_PYTHON")


def _arm64_share_limit(op, delegate: str) -> float:
    """As :func:`_share_limit`, but XNNPACK's arm64 MEAN rounds otherwise on a few values
    (measured 5 of 384, 1 LSB, on one image of the min W8A8 subnet; not traced)."""
    return 0.02 if delegate == "xnnpack" and op.kind == "mean" else _share_limit(delegate)


@pytest.mark.skipif(not ARM64_PYTHON, reason="no arm64 Python (bench/arm64_python.sh builds one under qemu-user; "
                                            "set QFA_ARM64_PYTHON)")
@pytest.mark.parametrize("delegate", DELEGATES)
def test_on_arm64_the_files_integers_are_the_arm64_simulations(supernet, fmnist_train, tmp_path, delegate):
    """Real arm64 kernels (ai-edge-litert's aarch64 build, emulated by qemu-user): every op of
    each subnet's file computes the aarch64 simulation's integers (multipliers above 1 included),
    and under the builtin kernels some differ from the x86 simulation's."""
    runs = _run_in(ARM64_PYTHON.split(), supernet, list(SPECS.values()), fmnist_train, tmp_path, delegate, 3)
    x86_off = 0  # values the two simulations compute differently
    for k, (g, _, _, _, kept) in enumerate(runs):
        for vals in kept.values():
            arm = list(tensor_diffs(g, delegate, vals, "aarch64"))
            off = [op.output for op, d in arm if np.abs(d).max() > 1 or (d != 0).mean() > _arm64_share_limit(op, delegate)]
            assert not off, (list(SPECS)[k], off)
            x86_off += sum(int((d != a).sum()) for (_, d), (_, a) in zip(tensor_diffs(g, delegate, vals, "x86_64"), arm))
    assert (x86_off > 0) == (delegate == "builtin"), x86_off
