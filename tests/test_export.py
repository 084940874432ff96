"""Integer TFLite export: the file holds exactly the folded graph's numbers, and every op of it
computes the graph's op within 1 LSB (real LiteRT interpreter runs, real Fashion-MNIST)."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from ai_edge_litert import schema_py_generated as fb

from .conftest import perturb
from export.simulate import DeployedModel
from export.lower import refine_weights
from export.targets import TARGETS
from export.tflite import to_tflite
from export.verify import TFLiteModel, load_failures, op_errors
from qfa.nn.calibrate import calibrate
from qfa.nn.data import resize
from export.fold import fold
from qfa.core.space import get_space
from qfa.nn.supernet import Supernet, extract

SPACE = get_space("fmnist")


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    net = Supernet(SPACE)
    perturb(net, seed=3)  # non-trivial BN, BatchQuant alpha/offset (fractional zero points), LSQ steps
    return net


def _graph(net, spec, images, target="tflite-int8"):
    x = resize(images, spec.resolution)
    calibrate(net, spec, x.split(256), 512)
    return TARGETS[target].lower(fold(extract(net, spec), x[:256])), x


SPECS = {
    "w8a8": SPACE.max_spec(bits=8),
    "w4a4": SPACE.min_spec(bits=4).replace(resolution=28),
    "mixed": SPACE.sample(np.random.default_rng(5), bits=(2, 3, 4)),
}


INT8_TARGETS = sorted(n for n, t in TARGETS.items() if not t.int4_weights)
INT4_TARGETS = sorted(n for n, t in TARGETS.items() if t.int4_weights)


@pytest.mark.parametrize("name,target", [(n, "tflite-int8") for n in sorted(SPECS)]
                         + [("mixed", t) for t in INT8_TARGETS if t != "tflite-int8"])
def test_tflite_holds_the_exported_numbers_and_each_op_is_within_1_lsb(supernet, fmnist_train, name, target):
    g, x = _graph(supernet, SPECS[name], fmnist_train[:512], target)
    blob = to_tflite(g, target)
    kinds = {op.kind for op in g.ops if not op.is_float}  # float HARD_SWISH is never decomposed
    assert ("hswish" in kinds) == (TARGETS[target].hswish == "op")
    model = fb.ModelT.InitFromPackedBuf(blob, 0)
    sg = model.subgraphs[0]
    by_name = {t.name.decode(): t for t in sg.tensors}
    # activation scales and zero points: exactly the graph's (float tensors: float32, no grid)
    for t in g.tensors.values():
        if t.is_float:
            assert by_name[t.name].type == fb.TensorType.FLOAT32 and by_name[t.name].quantization is None, t.name
            continue
        q = by_name[t.name].quantization
        assert q.scale[0] == pytest.approx(t.scale, rel=1e-7) and q.zeroPoint[0] == t.zero_point, t.name
    # integer weights and per-channel scales, or a float conv's real weights: exactly the graph's
    for op in (o for o in g.ops if o.kind == "conv"):
        wt = by_name[f"{op.output}.weight"] if f"{op.output}.weight" in by_name else None
        assert wt is not None, op.output
        if op.is_float:
            fp16 = TARGETS[target].fp == "float16" and op.fweight is not None
            if fp16:
                wt = by_name[f"{op.output}.weight.fp16"]
            data = np.frombuffer(bytes(model.buffers[wt.buffer].data), np.float16 if fp16 else np.float32)
            np.testing.assert_array_equal(data.reshape(op.weight.shape), op.real_weight().astype(data.dtype))
            continue
        data = np.frombuffer(bytes(model.buffers[wt.buffer].data), np.int8).reshape(op.weight.shape)
        np.testing.assert_array_equal(data, op.weight)
        np.testing.assert_allclose(wt.quantization.scale, op.w_scale, rtol=1e-7)
    # every op within 1 LSB of the graph's op on the interpreter's own inputs
    m = TFLiteModel(blob, preserve=True)
    xs = np.ascontiguousarray(x[:4].permute(0, 2, 3, 1).numpy())
    for i in range(4):
        errs = op_errors(g, m, xs[i:i + 1])
        bad = {k: v for k, v in errs.items() if v > (1e-5 if g.tensors[k].is_float else 1)}
        assert not bad, bad  # int8: <= 1 LSB; float32: <= 1e-5 of the op's largest output


def _gname(path: str) -> str:
    """The folded graph's layer name of a subnet module path (stages.1.0.dw -> s2.b0.dw)."""
    parts = path.split(".")
    return f"s{int(parts[1]) + 1}.b{parts[2]}." + ".".join(parts[3:]) if parts[0] == "stages" else path


FLOAT_TARGETS = sorted(n for n, t in TARGETS.items() if t.float_io)


@pytest.mark.parametrize("target", FLOAT_TARGETS)
def test_float_targets_deploy_full_precision_convs_as_float_ops(supernet, fmnist_train, target):
    """Under a float target an FP conv is a float CONV_2D (float32 or fp16 weights), the model's
    input and logits are float32, and the graph crosses between int8 and float by QUANTIZE /
    DEQUANTIZE only where it must; an all-FP subnet is a float model but for the space's fixed
    8-bit convs (fmnist: SE, classifier), which read their trained input grids and, where the
    trained model keeps their output real, write float; so it computes what PyTorch computes:
    the features before the classifier to float32 rounding (fp16 weights: to theirs), the logits
    but where a value rounds onto a grid at a tie."""
    weight_type = fb.TensorType.FLOAT16 if TARGETS[target].fp == "float16" else fb.TensorType.FLOAT32
    for name, spec in {"all-fp": SPACE.max_spec(bits=32).replace(resolution=24), "w8a8": SPACE.min_spec(bits=8)}.items():
        g, x = _graph(supernet, spec, fmnist_train[:512], target)
        blob = to_tflite(g, target)
        model = fb.ModelT.InitFromPackedBuf(blob, 0)
        sg = model.subgraphs[0]
        types = {t.name.decode(): t.type for t in sg.tensors}
        assert types[g.input] == types["logits"] == fb.TensorType.FLOAT32
        convs = [op for op in g.ops if op.kind == "conv"]
        fp = {op.layer for op in convs if op.fweight is not None}
        grid = {op.layer for op in convs if op.is_float and op.fweight is None}  # 8-bit convs computed in float
        assert "classifier" in grid and all(layer.endswith((".se.expand", "classifier")) for layer in grid)
        for op in convs:  # the classifier's grid weights stay float32 (exact)
            is_fp = op.fweight is not None
            w = f"{op.output}.weight" + (".fp16" if is_fp and weight_type == fb.TensorType.FLOAT16 else "")
            assert types[w] == (weight_type if is_fp else fb.TensorType.FLOAT32 if op.is_float else fb.TensorType.INT8), w
        kinds = [op.kind for op in g.ops]
        if name == "all-fp":  # float but for the space's fixed 8-bit parts (fmnist: SE, classifier),
            se = {op.layer for op in convs if ".se." in op.layer}  # each crossed into and out of once
            assert fp == {op.layer for op in convs} - {"classifier"} - se and len(se) >= 2
            assert grid == {"classifier"} | {layer for layer in se if layer.endswith("expand")}
            assert kinds.count("requant") == kinds.count("dequant") == 1 + len(se) // 2
            m, n = TFLiteModel(blob, preserve=True), 24
            xs = np.ascontiguousarray(x[:n].permute(0, 2, 3, 1).numpy())
            sub = extract(supernet, spec)
            feats = []
            h = sub.classifier.register_forward_pre_hook(lambda mod, a: feats.append(a[0].permute(0, 2, 3, 1).numpy()))
            with torch.no_grad():
                want = sub(x[:n]).numpy()
            h.remove()
            got = m.logits(xs)
            q = [op for op in g.ops if op.kind == "requant"][-1]  # onto the classifier's input grid
            shift = g.tensors[q.output].shift  # in the float features too (the producer's bias)
            err = []
            for i in range(n):
                m.logits(xs[i:i + 1])
                f = m.tensors()[q.inputs[0]] - shift
                err.append(np.abs(f - feats[0][i:i + 1]).max() / np.abs(feats[0][i]).max())
            # float32 rounding (fp16 weights: theirs, 2^-11 each) but where an SE grid rounds a
            # value at a tie (measured: 6 of 32 images of this random net, 1e-4 to 1e-3)
            tol = 1e-5 if weight_type == fb.TensorType.FLOAT32 else 1e-2
            assert np.mean(np.array(err) <= tol) >= 0.6 and max(err) <= 5e-3, np.round(err, 7)
            if weight_type == fb.TensorType.FLOAT32:  # the logits likewise
                close = np.abs(got - want).max(1) <= 1e-4 * np.abs(want).max(1)
                assert close.mean() >= 0.6 and (got.argmax(1) == want.argmax(1)).mean() >= 0.75
        else:  # only the FP stem and SE convs are float: boundaries around them
            assert {op.layer.rsplit(".", 1)[0] for op in convs if op.fweight is not None} >= {"stem"}
            assert "dequant" in kinds and "requant" in kinds
        assert not load_failures(blob)


def test_an_all_fp_subnet_of_a_space_without_fixed_8bit_convs_is_a_plain_float32_model(fmnist_train):
    """Where the space fixes no conv at 8 bits (here fmnist with FP SE and classifier convs), an
    all-FP subnet deploys under tflite-f32 as a plain float32 model (every value float32, no
    QUANTIZE or DEQUANTIZE) that computes its PyTorch model's logits to float32 rounding: the
    largest error <= 1e-4 of the largest |logit| on every image, the same top-1 on all."""
    import dataclasses
    from qfa.core.space import FP, QBits
    space = dataclasses.replace(SPACE, name="fmnist-fp", se_bits=QBits(FP, FP), classifier_bits=QBits(FP, FP))
    torch.manual_seed(0)
    net = Supernet(space)
    perturb(net, seed=3)
    spec = space.max_spec(bits=FP).replace(resolution=24)
    g, x = _graph(net, spec, fmnist_train[:512], "tflite-f32-hswish-decomposed")
    blob = to_tflite(g, "tflite-f32-hswish-decomposed")
    sg = fb.ModelT.InitFromPackedBuf(blob, 0).subgraphs[0]
    params = (".paddings", ".axes", ".shape")  # PAD, MEAN and RESHAPE take int32 parameters
    assert all(t.type == (fb.TensorType.INT32 if t.name.decode().endswith(params) else fb.TensorType.FLOAT32)
               for t in sg.tensors)
    assert not {"requant", "dequant"} & {op.kind for op in g.ops}
    n = 64
    with torch.no_grad():
        want = extract(net, spec)(x[:n]).numpy()
    got = TFLiteModel(blob).logits(np.ascontiguousarray(x[:n].permute(0, 2, 3, 1).numpy()))
    rel = np.abs(got - want).max(1) / np.abs(want).max(1)
    assert rel.max() <= 1e-4 and (got.argmax(1) == want.argmax(1)).all(), rel.max()
    assert not load_failures(blob)


@pytest.mark.parametrize("refine", [True, False])
def test_fold_computes_each_trained_grid_like_pytorch(supernet, fmnist_train, refine):
    """Layer by layer, teacher-forced: each tensor on a trained activation grid, computed by the
    integer graph (its 8-bit intermediates left real) from PyTorch's own values of the grids
    before it, equals PyTorch's quantized value but for rare rounding ties. Without refined weights
    the int32 bias of 2-bit layers is rounded by up to half of (input scale x weight scale), a
    large share of a 2-bit step: that variant must fail."""
    from qfa.nn.elastic.ops import ElasticConv2d
    spec = SPACE.min_spec(bits=2)
    x = resize(fmnist_train[:256], spec.resolution)
    calibrate(supernet, spec, x.split(128), 256)
    sub = extract(supernet, spec)
    g = fold(sub, x)
    if refine:
        refine_weights(g)
    for t in g.tensors.values():
        if not t.learned:
            t.scale = None
    caps = {}
    for path, m in sub.named_modules():
        if isinstance(m, ElasticConv2d):
            m.aq.register_forward_hook(lambda mod, i, o, n=_gname(path) + ".in":
                                       caps.__setitem__(n, o.permute(0, 2, 3, 1).numpy()))
    with torch.no_grad():
        sub(x)
    sim = DeployedModel(g)
    env = {g.input: x + g.tensors[g.input].shift}
    worst = {}
    for op in g.ops:
        y, t = sim.op_output(op, [env[i] for i in op.inputs]), g.tensors[op.output]
        env[op.output] = y
        if t.fixed:
            q = t.quantize(y.permute(0, 2, 3, 1).numpy())
            if op.output in caps:
                want = t.quantize(caps[op.output] + t.shift)
                worst[op.output] = (np.abs(q.astype(int) - want).max(), float((q != want).mean()))
                q = want
            env[op.output] = torch.from_numpy(t.dequantize(q).astype(np.float32)).permute(0, 3, 1, 2)
    assert len(worst) >= 8, worst
    low = [frac for name, (d, frac) in worst.items() if g.tensors[name].bits < 8]
    # 8-bit grids: the bias is still rounded, on a finer grid (measured: <= 2 LSB once refined)
    ok = max(d for d, _ in worst.values()) <= 2 and np.mean(low) < 0.01
    assert ok == refine, worst


def test_learned_zero_points_are_kept_exactly():
    """Rounding BatchQuant's real zero point would move every rounding boundary; the shifted
    representation (export.lower) must give the same quantized values and the same conv
    outputs as quantizing with the real zero point, borders of a padded conv included."""
    from export.ir import Graph, Op, QTensor, grid_qparams
    from export.lower import apply_shifts
    from export.reference import conv_nhwc
    rng = np.random.default_rng(0)
    S, Z = 0.37, 1.38  # 2-bit unsigned grid with a fractional zero point
    w1 = rng.integers(-8, 8, (6, 1, 1, 3)).astype(np.int8)
    w2 = rng.integers(-8, 8, (1, 3, 3, 6)).astype(np.int8)
    s1, s2 = np.full(6, 0.05), np.full(6, 0.04)
    b1 = rng.normal(0, 0.3, 6)
    t = {"x": QTensor("x", (1, 8, 8, 3), scale=0.05, zero_point=0),
         "h": QTensor("h", (1, 8, 8, 6), **grid_qparams(S, Z, 0, 3)),
         "y": QTensor("y", (1, 8, 8, 6))}
    ops = [Op("conv", ["x"], "h", weight=w1, w_scale=s1, bias=b1, act="relu"),
           Op("conv", ["h"], "y", weight=w2, w_scale=s2, bias=np.zeros(6), pad=1, depthwise=True)]
    g = apply_shifts(Graph(t, ops, "x", "y"))
    assert any(op.kind == "addc" for op in g.ops)  # the border correction
    # tensors left unfixed stay real in the simulation: this isolates the shift mechanism
    x = rng.normal(0, 1, (4, 8, 8, 3)).astype(np.float32)
    xq = np.round(x / 0.05) * 0.05
    h = np.maximum(conv_nhwc(xq, w1 * s1[:, None, None, None], 1, 0, False) + b1, 0)
    hq = (np.clip(np.round(h / S + Z), 0, 3) - Z) * S  # BatchQuant's real-zero-point quantizer
    want = conv_nhwc(hq, w2 * s2, 1, 1, True)
    trace = {}
    DeployedModel(g)(torch.from_numpy(x).permute(0, 3, 1, 2), trace=trace)
    trace = {k: v.permute(0, 2, 3, 1).numpy() for k, v in trace.items()}
    got = trace["y"]
    # equal except where h/S + Z sits within the int32 bias grid (0.0025) of a rounding tie
    v = h / S + Z
    near_tie = np.abs(v - np.floor(v) - 0.5) < 0.0025 / S
    off = np.abs(trace["h"] - g.tensors["h"].shift - hq) > 1e-5
    assert not np.any(off & ~near_tie) and off.mean() < 0.01
    ok = ~np.any(off, axis=(1, 2, 3))  # images without a tie: the padded conv matches too
    assert ok.any()
    # within the int32 bias grid (S * s2: the shift correction is an accumulator constant) and
    # the 8-bit border-correction constant
    np.testing.assert_allclose(got[ok], want[ok], atol=0.5 * S * s2.max() + 2e-3 * np.abs(want).max())
    # and rounding the zero point instead would not be close
    hr = (np.clip(np.round(h / S + round(Z)), 0, 3) - round(Z)) * S
    assert np.abs(hr - hq).max() > 0.1


@pytest.mark.parametrize("target", INT4_TARGETS)
def test_int4_target_packs_conv_weights_only(supernet, fmnist_train, target):
    int8 = target.replace("int4w", "int8")  # the same lowering with int8 weights
    g, _ = _graph(supernet, SPECS["w4a4"], fmnist_train[:512], target)
    g8, _ = _graph(supernet, SPECS["w4a4"], fmnist_train[:512], int8)
    blob4, blob8 = to_tflite(g, target), to_tflite(g8, int8)
    with pytest.raises(ValueError, match="int4"):  # int8-refined integers cannot be packed
        to_tflite(g8, target)
    model = fb.ModelT.InitFromPackedBuf(blob4, 0)
    types = {t.name.decode(): t.type for t in model.subgraphs[0].tensors}
    for op in (o for o in g.ops if o.kind == "conv"):
        expect = fb.TensorType.INT4 if (not op.depthwise and op.w_bits <= 4) else fb.TensorType.INT8
        assert types[f"{op.output}.weight"] == expect, op.output
    assert len(blob4) < len(blob8)
    m = TFLiteModel(blob4, preserve=True)
    x = np.ascontiguousarray(resize(fmnist_train[:1], 28).permute(0, 2, 3, 1).numpy())
    assert max(op_errors(g, m, x).values()) <= 1


def _qfa(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qfa", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_export_cli_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = _qfa("export", "--checkpoint", str(bad), "--spec", "x", "--out", str(tmp_path / "m.tflite"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "checkpoint" in r.stderr
    r = _qfa("export", "--checkpoint", str(tmp_path / "missing"), "--spec", "x", "--out", str(tmp_path / "m.tflite"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = _qfa("export", "--checkpoint", str(bad), "--spec", "x", "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 2 and ".tflite" in r.stderr
    assert not list(tmp_path.glob("*.tflite"))


def test_onnx_qdq_computes_each_op_of_the_integer_graph_in_onnxruntime(supernet, fmnist_train):
    """Each op of the Q/DQ ONNX model, on onnxruntime's own inputs, within 1 LSB of the graph's
    op (ONNX rounds half to even and computes hardswish in float, so single-LSB differences
    are expected; end to end they propagate chaotically through the sub-8-bit grids)."""
    import onnx
    import onnxruntime
    from export.onnx import to_onnx
    g, x = _graph(supernet, SPECS["mixed"], fmnist_train[:512])
    m = onnx.load_from_string(to_onnx(g))
    names = [g.input] + [op.output for op in g.ops]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n + ".dq", onnx.TensorProto.FLOAT, None) for n in names)
    sess = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x[:8].numpy()})))
    sim = DeployedModel(g)
    off = {}
    for op in g.ops:
        t = g.tensors[op.output]
        ref = t.quantize(sim.op_output(op, [torch.from_numpy(outs[i + ".dq"]) for i in op.inputs]).numpy())
        d = np.abs(t.quantize(outs[op.output + ".dq"]).astype(np.int32) - ref.astype(np.int32))
        off[op.output] = (int(d.max()), float((d > 0).mean()))
    assert max(v[0] for v in off.values()) <= 1, off
    assert np.mean([v[1] for v in off.values()]) < 0.01, off  # single-LSB differences are rare
    assert np.array_equal(outs["logits"], outs[g.output + ".dq"].reshape(8, -1))
    f = onnxruntime.InferenceSession(to_onnx(g, qdq=False), providers=["CPUExecutionProvider"])
    assert f.run(None, {"input": x[:32].numpy()})[0].shape == (32, 10)


@pytest.mark.slow
def test_onnx2tf_path_runs_offline(supernet, fmnist_train):
    from export.onnx import to_onnx
    from export.onnx2tf_path import onnx2tf_int8
    spec = SPECS["w8a8"].replace(resolution=24)
    _, x = _graph(supernet, spec, fmnist_train[:512])
    g = fold(extract(supernet, spec), x[:256], shifts=False)  # the float model converters take
    blob = onnx2tf_int8(to_onnx(g, qdq=False), x[:20].permute(0, 2, 3, 1).numpy())
    m = TFLiteModel(blob)
    assert m.inp["dtype"] == np.int8 and m.out["shape"][-1] == 10
    assert np.isfinite(m.logits(np.ascontiguousarray(x[:2].permute(0, 2, 3, 1).numpy()))).all()
