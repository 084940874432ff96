
import numpy as np
import pytest
import torch

from qfa.nn.calibrate import calibrate
from qfa.nn.data import resize
from qfa.nn.elastic.ops import ElasticConv2d
from qfa.nn.quant import ACT_QUANTIZERS
from qfa.core.space import FP, SpecError, get_space, mid_channels
from qfa.nn.supernet import NotCalibratedError, Subnet, Supernet, extract

from .conftest import perturb


@pytest.fixture(scope="module")
def fmnist_net():
    torch.manual_seed(0)
    net = Supernet(get_space("fmnist"))
    perturb(net)
    net.sort_channels()
    return net


def _equivalence(net, spec, images, n_eval=32):
    calibrate(net, spec, images.split(64), n_images=128)
    sub = extract(net, spec)
    x = resize(images[:n_eval], spec.resolution)
    net.eval()
    with torch.no_grad(), net.active(spec):
        ref = net(x)
        out = sub(x)
    return ref, out, sub


def test_extraction_equivalence_on_50_random_fmnist_specs(fmnist_net, fmnist_train):
    space = fmnist_net.space
    rng = np.random.default_rng(1)
    specs = [space.max_spec(), space.min_spec(), space.max_spec(bits=2, kernel=3)]
    specs += [space.sample(rng) for _ in range(50)]
    worst = 0.0
    for spec in specs:
        ref, out, sub = _equivalence(fmnist_net, spec, fmnist_train)
        assert ref.shape == (32, 10)
        assert torch.isfinite(ref).all()
        worst = max(worst, (ref - out).abs().max().item())
        # the subnet holds only this spec's layers
        assert sum(len(st) for st in sub.stages) == sum(spec.depths)
    assert worst <= 1e-5
    # and the outputs are not trivially constant (the test could fail)
    assert ref.std() > 1e-3


@pytest.mark.parametrize("act_quant", sorted(set(ACT_QUANTIZERS) - {"bq"}))  # bq: the test above
def test_extraction_equivalence_other_quantizers(act_quant, fmnist_train):
    torch.manual_seed(1)
    net = Supernet(get_space("fmnist"), act_quant=act_quant)
    net.train()
    net.set_active(net.space.max_spec(bits=4))
    net(fmnist_train[:32])  # initialises EMA ranges / LSQ steps
    perturb(net, seed=1)
    rng = np.random.default_rng(2)
    for spec in [net.space.sample(rng) for _ in range(5)]:
        ref, out, _ = _equivalence(net, spec, fmnist_train)
        assert (ref - out).abs().max().item() <= 1e-5


def test_extraction_equivalence_paper_specs_at_small_resolution(fmnist_train):
    torch.manual_seed(0)
    space = get_space("paper")
    net = Supernet(space)
    perturb(net)
    images = resize(fmnist_train[:64], 128).repeat(1, 3, 1, 1)  # real images, 3 channels
    rng = np.random.default_rng(0)
    specs = [space.min_spec()] + [space.sample(rng).replace(resolution=128) for _ in range(2)]
    for spec in specs:
        calibrate(net, spec, images.split(16), n_images=32)
        sub = extract(net, spec)
        net.eval()
        with torch.no_grad(), net.active(spec):
            ref, out = net(images[:4]), sub(images[:4])
        assert ref.shape == (4, 1000)
        assert (ref - out).abs().max().item() <= 1e-5


def test_elastic_shapes(fmnist_net, fmnist_train):
    space = fmnist_net.space
    spec = space.sample(np.random.default_rng(5))
    shapes = {}

    def hook(name):
        def f(mod, inp, out):
            shapes[name] = tuple(out.shape)
        return f

    handles = [m.register_forward_hook(hook(n)) for n, m in fmnist_net.named_modules() if isinstance(m, ElasticConv2d)]
    fmnist_net.train()
    try:
        with fmnist_net.active(spec):
            out = fmnist_net(resize(fmnist_train[:2], spec.resolution))
    finally:
        for h in handles:
            h.remove()
    assert out.shape == (2, 10)
    h = spec.resolution  # stem stride 1
    cin = space.first_width
    for si, (st, blocks) in enumerate(zip(space.stages, spec.stages)):
        for bi, b in enumerate(blocks):
            mid = mid_channels(cin, b.expand)
            assert shapes[f"stages.{si}.{bi}.expand"] == (2, mid, h, h)
            if bi == 0:
                h = (h - 1) // st.stride + 1
            assert shapes[f"stages.{si}.{bi}.dw"] == (2, mid, h, h)
            assert shapes[f"stages.{si}.{bi}.project"] == (2, st.width, h, h)
            cin = st.width
        # blocks beyond the depth did not run
        assert f"stages.{si}.{len(blocks)}.expand" not in shapes
    assert shapes["final_expand"] == (2, space.final_expand_width, h, h)


def test_kernel_transform_starts_as_centre_crop_and_is_learnable():
    conv = ElasticConv2d(8, 8, (3, 5, 7), 1, w_bits=(4,), a_bits=(4,), act_signed=False, act_quant="bq",
                         depthwise=True)
    w7 = conv.kernel_weight(7, 8)
    assert torch.equal(conv.kernel_weight(5, 8), w7[:, :, 1:6, 1:6])
    assert torch.equal(conv.kernel_weight(3, 8), w7[:, :, 2:5, 2:5])
    conv.kernel_weight(3, 8).sum().backward()
    assert conv.transform_7to5.grad is not None and conv.transform_5to3.grad is not None
    # per-kernel quantizers exist for both weights and activations
    assert {"k3_b4", "k5_b4", "k7_b4"} == set(conv.wq.q) == set(conv.aq.q)


def test_precision_comes_from_the_spec(fmnist_net, fmnist_train):
    space = fmnist_net.space
    x = fmnist_train[:4]
    fmnist_net.train()
    fmnist_net.dropout.eval()
    outs = {}
    for b in (2, 8, FP):
        with fmnist_net.active(space.max_spec(bits=b).replace(resolution=28)):
            outs[b] = fmnist_net(x)
    assert not torch.allclose(outs[2], outs[8]) and not torch.allclose(outs[8], outs[FP])
    with fmnist_net.active(space.max_spec(bits=8).replace(resolution=28)):
        assert torch.equal(fmnist_net(x), outs[8])  # deterministic: the difference is the precision
    # the stem is full precision and the classifier 8-bit regardless of the spec
    assert fmnist_net.stem.aq.q.keys() == set() and set(fmnist_net.classifier.wq.q) == {"b8"}


def test_gradients_reach_weights_and_every_active_quantizer(fmnist_train):
    torch.manual_seed(0)
    net = Supernet(get_space("fmnist")).train()
    spec = net.space.max_spec(bits=3).replace(resolution=28)
    with net.active(spec):
        net(fmnist_train[:16]).logsumexp(1).mean().backward()
    blk = net.stages[1][0]
    assert blk.expand.weight.grad.abs().sum() > 0
    assert blk.dw.transform_7to5.grad is None  # kernel 7: no transform in the path
    for q in (blk.expand.aq.get(3), blk.dw.aq.get(3, 7), blk.project.aq.get(3)):
        assert q.theta.grad is not None and q.theta.grad.abs() > 0
        assert q.offset.grad is not None
    for q in (blk.expand.wq.get(3), blk.dw.wq.get(3, 7), blk.project.wq.get(3)):
        assert q.step.grad.abs() > 0
    assert blk.expand.aq.get(4).theta.grad is None  # another bitwidth's quantizer is untouched


def test_calibration_changes_only_buffers(fmnist_net, fmnist_train):
    before = {k: v.clone() for k, v in fmnist_net.named_parameters()}
    spec = fmnist_net.space.sample(np.random.default_rng(9))
    n = calibrate(fmnist_net, spec, fmnist_train.split(100), n_images=250)
    assert n == 250
    for k, v in fmnist_net.named_parameters():
        assert torch.equal(before[k], v), k
    assert fmnist_net.calibrated_for == spec.hash
    q = fmnist_net.stages[0][0].expand.aq.get(spec.stages[0][0].bits[0].a)
    if q is not None:
        assert torch.isfinite(q.running_min) and q.running_min <= 0 <= q.running_max


def test_eval_requires_calibration_for_the_active_spec(fmnist_net, fmnist_train):
    space = fmnist_net.space
    a, b = space.max_spec(bits=4), space.min_spec(bits=4)
    calibrate(fmnist_net, a, fmnist_train.split(64), n_images=64)
    fmnist_net.eval()
    with fmnist_net.active(a):
        fmnist_net(resize(fmnist_train[:2], a.resolution))
    with pytest.raises(NotCalibratedError, match="not calibrated"), fmnist_net.active(b):
        fmnist_net(resize(fmnist_train[:2], b.resolution))
    with pytest.raises(NotCalibratedError):
        extract(fmnist_net, b)


def test_set_active_rejects_other_spaces_and_restores(fmnist_net):
    with pytest.raises(SpecError, match="belongs to space 'paper'"):
        fmnist_net.set_active(get_space("paper").min_spec())
    prev = fmnist_net.active_spec
    spec = fmnist_net.space.min_spec()
    with fmnist_net.active(spec):
        assert fmnist_net.active_spec == spec
    assert fmnist_net.active_spec == prev


def test_sort_channels_keeps_max_subnet_function(fmnist_train):
    torch.manual_seed(3)
    net = Supernet(get_space("fmnist"))
    perturb(net, seed=3)
    net.double()  # exact: float32 differs by up to 1e-3 on one thread (channel order changes conv rounding)
    spec = net.space.max_spec(bits=FP)
    x = resize(fmnist_train[:8], spec.resolution).double()
    net.train()
    net.dropout.eval()
    with torch.no_grad(), net.active(spec):
        before = net(x)
        net.sort_channels()
        after = net(x)
    assert torch.allclose(before, after, rtol=0, atol=1e-10)
    imp = net.stages[1][0].project.weight.abs().sum(dim=(0, 2, 3))
    assert (imp[:-1] >= imp[1:]).all()


def test_subnet_save_load_round_trip(fmnist_net, fmnist_train, tmp_path):
    spec = fmnist_net.space.sample(np.random.default_rng(4))
    ref, out, sub = _equivalence(fmnist_net, spec, fmnist_train)
    path = tmp_path / "sub.safetensors"
    sub.save(path)
    loaded = Subnet.load(path)
    assert loaded.spec == spec
    with torch.no_grad():
        assert torch.equal(loaded(resize(fmnist_train[:32], spec.resolution)), out)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable subnet file"):
        Subnet.load(path)


def test_quantizer_kind_is_selectable():
    for kind, cls in ACT_QUANTIZERS.items():
        net = Supernet(get_space("fmnist"), act_quant=kind)
        assert isinstance(net.stages[0][0].expand.aq.get(4), cls)
    with pytest.raises(ValueError, match="unknown activation quantizer"):
        Supernet(get_space("fmnist"), act_quant="nope")
