"""The weight-sharing mixed-precision supernet and its extracted subnets.

:class:`QFANet` is the network skeleton: built with every choice of a space it is the
:class:`Supernet`; built with exactly one spec's choices it is a :class:`Subnet`. Both run
the same forward code, which is why an extracted subnet reproduces the supernet exactly.
The active subnet is one value, ``Supernet.active_spec``; nothing else holds architecture state.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from qfa.nn.elastic.blocks import ElasticMBConv
from qfa.nn.elastic.ops import ElasticConv2d
from qfa.nn.quant import deploy_quant
from qfa.core.space import BlockSpec, SearchSpace, SpecError, SubnetSpec, get_space, list_spaces, mid_channels

__all__ = ["QFANet", "Supernet", "Subnet", "extract", "NotCalibratedError"]


class NotCalibratedError(RuntimeError):
    """Evaluating a subnet whose BatchNorm/quantizer statistics were not calibrated for it."""


class QFANet(nn.Module):
    """MobileNetV3 skeleton over ``space``; ``spec=None`` offers every choice (the supernet).

    Args:
        space: the search space.
        act_quant: activation quantizer kind: "bq" (BatchQuant), "minmax" or "lsq".
        spec: build only this subnet's layers, at its exact sizes.
        dropout: dropout before the classifier (QFA: 0.1).
    """

    def __init__(self, space: SearchSpace, act_quant: str = "bq", spec: SubnetSpec | None = None,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.space, self.act_quant = space, act_quant
        s = space
        def conv_bits(q) -> tuple[tuple[int, ...], tuple[int, ...]]:
            """(weight bits, activation bits) a conv's quantizer banks serve."""
            return (s.bits, s.bits) if spec is None else ((q.w,), (q.a,))

        self.stem = ElasticConv2d(s.in_channels, s.stem_width, (3,), s.stem_stride,
                                  w_bits=(s.stem_bits.w,), a_bits=(s.stem_bits.a,), act_signed=True,
                                  act_quant=act_quant, act="hswish")
        first_bits = [conv_bits(q) for q in (spec.first if spec else (None, None))]
        self.first = ElasticMBConv(s.stem_width, s.first_width, 1, "relu", False, mids=(s.stem_width,),
                                   kernels=(3,), bits=first_bits, has_expand=False, se_bits=s.se_bits,
                                   act_quant=act_quant)
        self.stages = nn.ModuleList()
        in_ch = s.first_width
        for si, st in enumerate(s.stages):
            blocks = nn.ModuleList()
            n_blocks = max(s.depths) if spec is None else spec.depths[si]
            for bi in range(n_blocks):
                b = None if spec is None else spec.stages[si][bi]
                expands = s.expands if b is None else (b.expand,)
                blocks.append(ElasticMBConv(
                    in_ch, st.width, st.stride if bi == 0 else 1, st.act, st.se,
                    mids=tuple(mid_channels(in_ch, e) for e in expands),
                    kernels=s.kernels if b is None else (b.kernel,),
                    bits=[conv_bits(q) for q in (b.bits if b else (None,) * 3)],
                    has_expand=True, se_bits=s.se_bits, act_quant=act_quant))
                in_ch = st.width
            self.stages.append(blocks)
        head = spec.head if spec else (None, None)
        fb, mb = conv_bits(head[0]), conv_bits(head[1])
        self.final_expand = ElasticConv2d(in_ch, s.final_expand_width, w_bits=fb[0], a_bits=fb[1],
                                          act_signed=True, act_quant=act_quant, act="hswish")
        self.feature_mix = ElasticConv2d(s.final_expand_width, s.feature_mix_width, w_bits=mb[0], a_bits=mb[1],
                                         act_signed=False, act_quant=act_quant, bn=False, act="hswish")
        self.dropout = nn.Dropout(dropout)
        self.classifier = ElasticConv2d(s.feature_mix_width, s.num_classes, w_bits=(s.classifier_bits.w,),
                                        a_bits=(s.classifier_bits.a,), act_signed=False, act_quant=act_quant,
                                        bn=False, bias=True)
        nn.init.normal_(self.classifier.weight, std=0.01)

    def _forward(self, x: torch.Tensor, spec: SubnetSpec, deployed: bool = False) -> torch.Tensor:
        """``deployed``: with the 8-bit tensors of an int8 target's file that no trained quantizer
        owns quantized too (``deploy_quant`` of :class:`Supernet`: a training option)."""
        s, d = self.space, deployed
        x = self.stem(x, s.stem_width, s.stem_bits, deployed=d)
        x = self.first(x, BlockSpec(3, 1, spec.first), d)
        for blocks, stage in zip(self.stages, spec.stages):
            for block, b in zip(blocks, stage):
                x = block(x, b, d)
        x = self.final_expand(x, s.final_expand_width, spec.head[0], deployed=d)
        x = (deploy_quant(x) if d else x).mean((2, 3), keepdim=True)
        x = self.feature_mix(x, s.feature_mix_width, spec.head[1], deployed=d)
        x = self.classifier(self.dropout(x), s.num_classes, s.classifier_bits, deployed=d)
        return (deploy_quant(x) if d else x).flatten(1)

    def elastic_convs(self) -> Iterator[ElasticConv2d]:
        return (m for m in self.modules() if isinstance(m, ElasticConv2d))

    @torch.no_grad()
    def init_weight_quantizers(self) -> None:
        """(Re)initialise every LSQ step from the current latent weights (after loading FP weights)."""
        for conv in self.elastic_convs():
            conv.init_weight_quantizers()


class Supernet(QFANet):
    """The weight-sharing supernet: every subnet of ``space`` can be activated by its spec.

    ``set_active(spec)`` / ``with net.active(spec):`` choose the subnet that ``forward`` runs.
    In eval mode the subnet must have been calibrated (``qfa.nn.calibrate``) since BatchNorm and
    BatchQuant statistics are per subnet; a stale calibration raises :class:`NotCalibratedError`.
    """

    def __init__(self, space: SearchSpace, act_quant: str = "bq", dropout: float = 0.1) -> None:
        super().__init__(space, act_quant, None, dropout)
        self._active: SubnetSpec | None = None
        self.calibrated_for: str | None = None  # hash of the spec whose statistics are loaded
        self.deploy_quant = False  # train with an int8 file's other 8-bit tensors quantized (a stage option)
        self.init_weight_quantizers()

    @property
    def active_spec(self) -> SubnetSpec | None:
        return self._active

    def set_active(self, spec: SubnetSpec) -> None:
        if not isinstance(spec, SubnetSpec):
            raise TypeError(f"set_active takes a SubnetSpec, got {type(spec).__name__}")
        if spec.space.hash != self.space.hash:
            raise SpecError(f"spec belongs to space {spec.space.name!r} ({spec.space.hash}); "
                            f"this supernet is {self.space.name!r} ({self.space.hash})")
        self._active = spec

    @contextlib.contextmanager
    def active(self, spec: SubnetSpec) -> Iterator["Supernet"]:
        """Activate ``spec`` for the block, then restore the previous subnet."""
        prev = self._active
        self.set_active(spec)
        try:
            yield self
        finally:
            self._active = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self._active
        if spec is None:
            raise RuntimeError("no active subnet: call set_active(spec) first")
        if not self.training and self.calibrated_for != spec.hash:
            raise NotCalibratedError(f"subnet {spec.hash} is not calibrated: run qfa.nn.calibrate.calibrate() "
                                     "before evaluating it")
        return self._forward(x, spec, self.deploy_quant and self.training)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "Supernet":
        """The supernet of a training checkpoint (``qfa train``'s ``last.pt`` or its run folder)."""
        from qfa.nn.checkpoint import CheckpointError, checkpoint_space, load_checkpoint
        state = load_checkpoint(path)
        space = checkpoint_space(state, path)
        try:
            net = cls(space, state["act_quant"], float(state.get("dropout", 0.1)))
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: checkpoint does not hold a usable supernet ({str(e).splitlines()[0][:160]})") from None
        weights, want = state.get("model"), net.state_dict()
        if not isinstance(weights, dict):
            raise CheckpointError(f"{path}: checkpoint holds no weights")
        if not _fits(want, weights):
            missing, extra = len(want.keys() - weights.keys()), len(weights.keys() - want.keys())
            shapes = sum(k in weights and getattr(weights[k], "shape", None) != v.shape for k, v in want.items())
            fits = [n for n in list_spaces() if n != space.name and _fits(cls(get_space(n)).state_dict(), weights)]
            raise CheckpointError(f"{path}: its weights do not fit the search space it names, {space.name!r} "
                                  f"({space.hash}): {missing} missing, {extra} unexpected, {shapes} of "
                                  "another shape; " + (f"they are the weights of space {fits[0]!r}" if fits else
                                                       "they fit no known space (a damaged checkpoint)"))
        try:
            net.load_state_dict(weights)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: checkpoint does not hold a usable supernet ({str(e).splitlines()[0][:160]})") from None
        net.trained_step = int(state.get("step", 0))
        config = state.get("config") if isinstance(state.get("config"), dict) else {}
        net.data = config.get("data") if isinstance(config.get("data"), str) else None  # None: Fashion-MNIST
        stages = config.get("stages") if isinstance(config.get("stages"), list) else []
        last = stages[-1] if stages and isinstance(stages[-1], dict) else {}
        net.final_bits = tuple(b for b in last.get("bits", ()) if isinstance(b, int))  # what the last stage trained
        return net.to(device)

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder expand channels by importance in every block (call after float training)."""
        for blocks in self.stages:
            for block in blocks:
                block.sort_channels()
        self.calibrated_for = None


def _fits(want: dict, weights: dict) -> bool:
    return want.keys() == weights.keys() and all(getattr(weights[k], "shape", None) == v.shape for k, v in want.items())


class Subnet(QFANet):
    """A standalone subnet: only ``spec``'s layers, weights and fixed quantization parameters."""

    def __init__(self, spec: SubnetSpec, act_quant: str = "bq") -> None:
        super().__init__(spec.space, act_quant, spec)
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, self.spec)

    def save(self, path: str | os.PathLike) -> None:
        """Write weights and spec to one safetensors file (atomically)."""
        from safetensors.torch import save_file
        path = Path(path)
        meta = {"format": "qfa-subnet/1", "spec": self.spec.dumps(), "act_quant": self.act_quant,
                "space": json.dumps(self.space.to_json(), sort_keys=True)}
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Subnet":
        """Load a subnet written by :meth:`save` (no pickle: tensors and JSON only)."""
        from safetensors import safe_open
        from safetensors.torch import load_file
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(path))
        except FileNotFoundError:
            raise
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path}: not a readable subnet file ({type(e).__name__}: {e})") from None
        if meta.get("format") != "qfa-subnet/1":
            raise ValueError(f"{path}: not a qfa subnet file (format={meta.get('format')!r})")
        space = SearchSpace.from_json(json.loads(meta["space"]))
        net = cls(space.spec_from_json(meta["spec"]), meta["act_quant"])
        net.load_state_dict(tensors)
        return net.eval()


@torch.no_grad()
def extract(supernet: Supernet, spec: SubnetSpec) -> Subnet:
    """A standalone copy of ``spec``'s subnet with its calibrated statistics, in eval mode."""
    if supernet.calibrated_for != spec.hash:
        raise NotCalibratedError(f"calibrate subnet {spec.hash} before extracting it")
    sub = Subnet(spec, supernet.act_quant).to(next(supernet.parameters()).device)
    src = dict(supernet.named_modules())
    for name, mod in sub.named_modules():
        big = src[name]
        for pname, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
            v = big.extract_tensor(pname, t.shape) if hasattr(big, "extract_tensor") else None
            if v is None:
                v = getattr(big, pname)[tuple(slice(0, n) for n in t.shape)]
            t.copy_(v)
    return sub.eval()
