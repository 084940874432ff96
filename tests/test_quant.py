import math

import pytest
import torch

from qfa.nn import fused
from qfa.nn.quant import (BatchQuant, LSQActQuant, LSQWeight, MinMaxQuant, QuantBank, affine_fake_quant,
                       affine_fake_quant_reference, batch_range, qrange)


def _bq_scalar(v: float, lo: float, hi: float, bits: int, signed: bool, alpha: float = 1.0, off: float = 0.0):
    """Independent scalar BatchQuant (QFA_FACTS.md section 1), Python floats only."""
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = (hi - lo) / (qmax - qmin)
    z = min(max(qmin - round(lo / s), qmin), qmax)
    q = round(min(max(alpha * v / s + z + off, qmin), qmax))
    return (q - z - off) * s / alpha


def _batch():
    # two channels: c0 = [-1.0, 0.5, 2.0], c1 = [-0.2, 1.0, 3.0]: min mean -0.6, max mean 2.5
    return torch.tensor([[[[-1.0, 0.5, 2.0]], [[-0.2, 1.0, 3.0]]]])


def test_batch_range_is_channel_averaged_min_max():
    lo, hi = batch_range(_batch())
    assert lo.item() == pytest.approx(-0.6) and hi.item() == pytest.approx(2.5)
    assert not lo.requires_grad


def test_hand_computed_unsigned_2bit():
    # s = 3.1/3, z = 0 - round(-0.6/s) = 1; v = x/s + 1 -> q = [0, 1, 3, 1, 2, 3]
    q = BatchQuant(2, signed=False).train()
    out = q(_batch()).flatten().tolist()
    s = 3.1 / 3
    assert out == pytest.approx([-s, 0.0, 2 * s, 0.0, s, 2 * s], abs=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_batchquant_matches_scalar_definition(bits, signed):
    torch.manual_seed(bits)
    x = torch.randn(4, 3, 5, 5) * 2 + 0.3
    q = BatchQuant(bits, signed).train()
    with torch.no_grad():
        q.theta.fill_(0.7)
        q.offset.fill_(0.3)
    alpha = math.log2(1 + 2 ** 0.7)
    assert q.alpha.item() == pytest.approx(alpha)
    out = q(x)
    lo, hi = batch_range(x)
    exp = torch.tensor([_bq_scalar(v, lo.item(), hi.item(), bits, signed, alpha, 0.3) for v in x.flatten().tolist()])
    # float32 vs float64 can flip a value sitting on a rounding boundary: allow none but at most 1 in 1000
    close = torch.isclose(out.flatten(), exp, atol=1e-5)
    assert close.float().mean() >= 0.999
    assert out.unique().numel() <= 2 ** bits
    lo_q, hi_q = qrange(bits, signed)
    assert (hi_q - lo_q + 1) == 2 ** bits


def test_alpha_starts_at_one_and_eval_uses_calibrated_range():
    q = BatchQuant(4, signed=False)
    assert q.alpha.item() == pytest.approx(1.0)
    x = _batch()
    q.begin_calibration()
    q(x)
    q(x * 2)  # second batch twice as wide
    q.end_calibration()
    assert q.running_min.item() == pytest.approx(-0.9) and q.running_max.item() == pytest.approx(3.75)
    q.eval()
    y = torch.tensor([[[[0.1, 5.0]]]])  # a batch with another range: eval ignores it
    exp = [_bq_scalar(v, -0.9, 3.75, 4, False) for v in (0.1, 5.0)]
    assert q(y).flatten().tolist() == pytest.approx(exp, abs=1e-6)


def test_calibration_is_sample_weighted():
    q = BatchQuant(8, signed=True)
    q.begin_calibration()
    q(torch.full((3, 1, 1, 1), 1.0))  # lo 1, hi 1 (3 samples)
    q(torch.full((1, 1, 1, 1), 5.0))  # lo 5, hi 5 (1 sample)
    q.end_calibration()
    assert q.running_max.item() == pytest.approx(2.0)


def test_gradients_reach_input_alpha_and_offset():
    x = (torch.randn(2, 3, 4, 4) * 3).requires_grad_()
    q = BatchQuant(3, signed=True).train()
    q(x).pow(2).sum().backward()
    assert x.grad.abs().sum() > 0 and q.theta.grad.abs() > 0 and q.offset.grad is not None
    # clamped elements get no gradient
    lo, hi = batch_range(x)
    assert (x.grad[(x > hi + 1) | (x < lo - 1)] == 0).all()


@pytest.mark.parametrize("qmin, qmax", [(0, 3), (-4, 3), (-128, 127)])
def test_fused_fake_quant_equals_reference_values_and_gradients(qmin, qmax):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    lo, hi = torch.tensor(-1.0, dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64)
    res = []
    for f in (affine_fake_quant, affine_fake_quant_reference):
        a = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
        o = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
        y = f(x, lo, hi, a, o, qmin, qmax)
        g = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum(), (x, a, o))
        res.append((y, *g))
    for u, v in zip(*res):
        assert torch.allclose(u, v, atol=1e-12)


@pytest.mark.parametrize("kind", ["batchquant", "lsq"])
def test_compiled_quantizer_loops_equal_their_eager_definitions(kind):
    # 2^20 elements x 8 grids: enough values land within an ulp of a .5 that a fused multiply-add
    # on one side (eager addcmul) and two roundings on the other flip some of them (12 did)
    torch.manual_seed(0)
    x = torch.randn(1 << 20) * 3
    g = torch.randn_like(x)
    for k in range(8):
        if kind == "batchquant":
            s, z = fused.range_params(torch.tensor(-4.0 - 0.1 * k), torch.tensor(4.0), 0, 255)
            fwd, bwd, args = fused.affine_forward, fused.affine_backward, (1.1 / s, z + 0.2 + 0.01 * k, 0, 255)
        else:
            fwd, bwd, args = fused.lsq_forward, fused.lsq_backward, (torch.tensor(0.0123 * (1 + 0.1 * k)), -128, 127)
        assert torch.equal(fwd(x, *args), fwd.eager(x, *args))
        got, want = bwd(g, x, *args), bwd.eager(g, x, *args)
        assert torch.equal(got[0], want[0])
        for a, b in zip(got[1:], want[1:]):  # sums: same terms, another order
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-1), (a, b)
    assert fused._enabled, "torch.compile failed here: the toolkit fell back to the eager loops"


@pytest.mark.parametrize("bits, expected", [
    (3, [-1.0, -0.25, 0.0, 0.5, 0.75]),   # w/s = [-4,-1.2,0.4,2.4,8] -> clamp [-4,3] -> round
    (2, [-0.5, -0.25, 0.0, 0.25, 0.25]),  # clamp [-2,1]
    (4, [-1.0, -0.25, 0.0, 0.5, 1.75]),   # clamp [-8,7]
    (8, [-1.0, -0.25, 0.0, 0.5, 2.0]),
])
def test_lsq_weight_hand_computed(bits, expected):
    q = LSQWeight(bits, numel_full=5)
    with torch.no_grad():
        q.step.fill_(0.25)
    w = torch.tensor([-1.0, -0.3, 0.1, 0.6, 2.0])
    assert q(w).tolist() == pytest.approx(expected)


def test_lsq_weight_init_and_gradients():
    w = torch.randn(16, 8, requires_grad=True)
    q = LSQWeight(4, numel_full=w.numel())
    q.init_from(w)
    assert q.step.item() == pytest.approx(2 * w.abs().mean().item() / math.sqrt(7), rel=1e-5)
    q(w).sum().backward()
    assert w.grad.abs().sum() > 0 and q.step.grad.abs() > 0


def test_minmax_ema_tracks_range_without_host_sync():
    q = MinMaxQuant(4, signed=False).train()
    q(torch.tensor([[[[0.0, 1.0]]]]))
    assert q.running_max.item() == pytest.approx(1.0)  # first batch initialises
    q(torch.tensor([[[[0.0, 3.0]]]]))
    assert q.running_max.item() == pytest.approx(1.0 + 0.01 * 2.0)
    assert not [p for p in q.parameters()]


def test_lsq_activation_initialises_then_learns():
    q = LSQActQuant(3, signed=False).train()
    x = torch.rand(8, 2, 4, 4) * 4
    y = q(x)
    assert bool(q.initialized) and q.step.item() == pytest.approx(batch_range(x)[1].item() / 7, rel=1e-5)
    y.sum().backward()
    assert q.step.grad is not None and q.beta.grad is not None


def test_bank_has_one_quantizer_per_bitwidth_and_kernel_and_fp_is_identity():
    bank = QuantBank(lambda b, k: BatchQuant(b, False), (2, 3, 4, 32), kernels=(3, 5, 7))
    assert sorted(bank.q) == sorted(f"k{k}_b{b}" for k in (3, 5, 7) for b in (2, 3, 4))
    x = torch.randn(2, 3, 4, 4)
    assert bank(x, 32, 5) is x
    assert bank.get(2, 3) is not bank.get(2, 5)
