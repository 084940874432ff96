"""Cost model: MACs, parameters, BitOPs, bit-weighted MFLOPs and model bytes of any spec.

One walk over a spec's layers (:func:`spec_layers`) defines every shape; the per-layer report
(:func:`layer_costs`) and the vectorised :class:`CostModel` (for search: thousands of genomes
per call) are both built from it, so they cannot disagree.

Conventions:
- MACs count conv/linear multiply-accumulates (OFA and QFA call these "FLOPs").
- BitOPs = sum of MACs x w_bits x a_bits (full precision counted as 32 bits).
- bit-weighted MFLOPs (the QFA paper's cost) = sum of MACs x min(w,8) x min(a,8) / 64 / 1e6.
- Parameters count weights and biases; BatchNorm is folded away, so every conv with BN
  gains a bias. Bytes = weights at their nominal bits + a 32-bit bias per output channel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import numpy as np

from qfa.core.space import QBits, SearchSpace, SubnetSpec, mid_channels, se_channels

__all__ = ["LatencyModel", "ConvLayer", "spec_layers", "layer_costs", "total_costs", "CostModel", "COST_KEYS"]

COST_KEYS = ("macs", "params", "bitops", "mflops_bw", "bytes")


def _out_hw(h: int, k: int, s: int) -> int:
    return (h + 2 * (k // 2) - k) // s + 1


@dataclass(frozen=True)
class ConvLayer:
    """One conv (or 1x1-conv classifier) of a subnet, with its shapes and precision."""
    name: str
    cin: int
    cout: int
    kernel: int
    stride: int
    depthwise: bool
    h_in: int
    bits: QBits
    bias: bool  # has a bias after BN folding (BN or explicit bias)

    @property
    def h_out(self) -> int:
        return _out_hw(self.h_in, self.kernel, self.stride)

    @property
    def weights(self) -> int:
        return self.cout * (1 if self.depthwise else self.cin) * self.kernel ** 2

    @property
    def macs(self) -> int:
        return self.h_out ** 2 * self.weights

    def costs(self) -> dict[str, float]:
        w, a = self.bits
        return {
            "macs": self.macs,
            "params": self.weights + (self.cout if self.bias else 0),
            "bitops": self.macs * w * a,
            "mflops_bw": self.macs * min(w, 8) * min(a, 8) / 64 / 1e6,
            "bytes": self.weights * w / 8 + (4 * self.cout if self.bias else 0),
        }


def _block_layers(space: SearchSpace, name: str, cin: int, cout: int, stride: int, se: bool, h: int,
                  kernel: int, expand: int, bits: Sequence[QBits]) -> Iterator[ConvLayer]:
    bits = list(bits)
    mid = cin
    if expand != 1:
        mid = mid_channels(cin, expand)
        yield ConvLayer(f"{name}.expand", cin, mid, 1, 1, False, h, bits.pop(0), True)
    yield ConvLayer(f"{name}.dw", mid, mid, kernel, stride, True, h, bits[0], True)
    if se:
        red = se_channels(mid)
        yield ConvLayer(f"{name}.se.reduce", mid, red, 1, 1, False, 1, space.se_bits, True)
        yield ConvLayer(f"{name}.se.expand", red, mid, 1, 1, False, 1, space.se_bits, True)
    yield ConvLayer(f"{name}.project", mid, cout, 1, 1, False, _out_hw(h, kernel, stride), bits[1], True)


def spec_layers(spec: SubnetSpec) -> list[ConvLayer]:
    """Every conv of ``spec`` in network order (names match the supernet's module paths)."""
    s = spec.space
    h = spec.resolution
    out = [ConvLayer("stem", s.in_channels, s.stem_width, 3, s.stem_stride, False, h, s.stem_bits, True)]
    h = out[0].h_out
    out += _block_layers(s, "first", s.stem_width, s.first_width, 1, False, h, 3, 1, spec.first)
    cin = s.first_width
    for si, (st, blocks) in enumerate(zip(s.stages, spec.stages)):
        for bi, b in enumerate(blocks):
            stride = st.stride if bi == 0 else 1
            out += _block_layers(s, f"stages.{si}.{bi}", cin, st.width, stride, st.se, h, b.kernel, b.expand, b.bits)
            h, cin = _out_hw(h, b.kernel, stride), st.width
    out.append(ConvLayer("final_expand", cin, s.final_expand_width, 1, 1, False, h, spec.head[0], True))
    out.append(ConvLayer("feature_mix", s.final_expand_width, s.feature_mix_width, 1, 1, False, 1,
                         spec.head[1], False))
    out.append(ConvLayer("classifier", s.feature_mix_width, s.num_classes, 1, 1, False, 1,
                         s.classifier_bits, True))
    return out


def layer_costs(spec: SubnetSpec) -> list[dict]:
    """Per-layer rows: name, shapes, bits and the cost measures."""
    return [{"name": l.name, "cin": l.cin, "cout": l.cout, "kernel": l.kernel, "stride": l.stride,
             "h_in": l.h_in, "w_bits": l.bits.w, "a_bits": l.bits.a, **l.costs()} for l in spec_layers(spec)]


def total_costs(spec: SubnetSpec) -> dict[str, float]:
    tot = dict.fromkeys(COST_KEYS, 0.0)
    for l in spec_layers(spec):
        for k, v in l.costs().items():
            tot[k] += v
    return tot


class LatencyModel(Protocol):
    """What the search needs of a latency model (``hw.table.LatencyTable`` is one): its space,
    the resolutions it covers, the deployment target it was measured for, and predicted
    milliseconds for a batch of genomes (NaN where it cannot say)."""

    space: SearchSpace

    @property
    def resolutions(self) -> Sequence[int]: ...

    @property
    def target_name(self) -> str: ...

    @property
    def runtime(self) -> dict: ...

    def predict_many(self, genomes: np.ndarray) -> np.ndarray: ...


class CostModel:
    """Vectorised costs of many genomes of one space (see ``SearchSpace.encode``).

    Tables of per-conv MACs and weights are precomputed per (resolution, slot, kernel, expand)
    from the same layer walk as :func:`spec_layers`; a call is then a few gathers and sums.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = s = space
        self.pairs = np.array(s.bit_pairs, dtype=np.float64)  # (P, 2)
        nr, nk, ne, ns, dmax = len(s.resolutions), len(s.kernels), len(s.expands), len(s.stages), max(s.depths)
        # Searched convs per slot: expand, dw, project -> (slot, conv, R, K, E) MACs and weights.
        self.slot_macs = np.zeros((ns * dmax, 3, nr, nk, ne))
        self.slot_weights = np.zeros((ns * dmax, 3, nk, ne))
        self.slot_bias = np.zeros((ns * dmax, 3, nk, ne))
        self.slot_fixed = np.zeros((ns * dmax, len(COST_KEYS), nr, nk, ne))  # SE convs (fixed bits)
        fixed_names = ("stem", "classifier")
        self.fixed = np.zeros((len(COST_KEYS), nr))  # stem + classifier
        self.head_macs = np.zeros((4, nr))  # first.dw, first.project, final_expand, feature_mix
        self.head_weights = np.zeros(4)
        self.head_bias = np.zeros(4)
        q8 = QBits(8, 8)
        for ri, r in enumerate(s.resolutions):
            ref = s.uniform(depth=dmax, kernel=s.kernels[0], expand=s.expands[0], bits=s.bits[0], resolution=r)
            layers = {l.name: l for l in spec_layers(ref)}
            for n in fixed_names:
                self.fixed[:, ri] += [layers[n].costs()[k] for k in COST_KEYS]
            for hi, n in enumerate(("first.dw", "first.project", "final_expand", "feature_mix")):
                self.head_macs[hi, ri] = layers[n].macs
                self.head_weights[hi] = layers[n].weights
                self.head_bias[hi] = layers[n].cout if layers[n].bias else 0
            h = layers["first.project"].h_out
            cin = s.first_width
            for si, st in enumerate(s.stages):
                for bi in range(dmax):
                    j = si * dmax + bi
                    stride = st.stride if bi == 0 else 1
                    for ki, k in enumerate(s.kernels):
                        for ei, e in enumerate(s.expands):
                            convs = list(_block_layers(s, "b", cin, st.width, stride, st.se, h, k, e, (q8,) * 3))
                            searched = [c for c in convs if ".se." not in c.name]
                            for ci, c in enumerate(searched):
                                self.slot_macs[j, ci, ri, ki, ei] = c.macs
                                self.slot_weights[j, ci, ki, ei] = c.weights
                                self.slot_bias[j, ci, ki, ei] = c.cout
                            for c in convs:
                                if ".se." in c.name:
                                    self.slot_fixed[j, :, ri, ki, ei] += [c.costs()[key] for key in COST_KEYS]
                    h, cin = _out_hw(h, s.kernels[0], stride), st.width

    def __call__(self, genomes: np.ndarray) -> dict[str, np.ndarray]:
        """Costs of each row of ``genomes`` (N x genome_len) as arrays of length N."""
        s = self.space
        g, lay = s.canonical(genomes), s.layout
        n, nj = len(g), s.n_slots
        res = g[:, 0]
        active = s.active_slots(g).reshape(n, nj)
        slots = lay.slots(g).reshape(n, nj, lay.SLOT)
        k, e = slots[..., 0], slots[..., 1]
        j = np.arange(nj)[None, :]
        r = res[:, None]
        out = {}
        wa = self.pairs[slots[..., 2:]]  # (N, J, 3, 2)
        w, a = wa[..., 0], wa[..., 1]
        macs = np.stack([self.slot_macs[j, c, r, k, e] for c in range(3)], -1) * active[..., None]
        wts = np.stack([self.slot_weights[j, c, k, e] for c in range(3)], -1) * active[..., None]
        bias = np.stack([self.slot_bias[j, c, k, e] for c in range(3)], -1) * active[..., None]
        fixed = self.slot_fixed[j, :, r, k, e] * active[..., None]  # (N, J, KEYS)
        hwa = self.pairs[g[:, lay.tail]]  # (N, 4, 2)
        hw_, ha = hwa[..., 0], hwa[..., 1]
        hm = self.head_macs[:, res].T  # (N, 4)
        hwts = np.broadcast_to(self.head_weights, hm.shape)
        for key in COST_KEYS:
            ki = COST_KEYS.index(key)
            if key == "macs":
                v = macs.sum((1, 2)) + hm.sum(1)
            elif key == "params":
                v = (wts + bias).sum((1, 2)) + (hwts + self.head_bias).sum(1)
            elif key == "bitops":
                v = (macs * w * a).sum((1, 2)) + (hm * hw_ * ha).sum(1)
            elif key == "mflops_bw":
                v = ((macs * np.minimum(w, 8) * np.minimum(a, 8)).sum((1, 2))
                     + (hm * np.minimum(hw_, 8) * np.minimum(ha, 8)).sum(1)) / 64 / 1e6
            else:  # bytes
                v = (wts * w / 8 + 4 * bias).sum((1, 2)) + (hwts * hw_ / 8 + 4 * self.head_bias).sum(1)
            out[key] = v + fixed[..., ki].sum(1) + self.fixed[ki, res]
        return out

    def of_specs(self, specs: Sequence[SubnetSpec]) -> dict[str, np.ndarray]:
        return self(np.stack([self.space.encode(sp) for sp in specs]))
