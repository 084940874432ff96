"""Search spaces and the subnet spec: the one currency of the toolkit.

A :class:`SearchSpace` owns every choice set (kernels, expand ratios, depths, resolutions,
bitwidths) exactly once. A :class:`SubnetSpec` is an immutable, validated value naming one
subnet of one space: its architecture and the precision of every searchable conv. Training,
latency tables, search and export all take and give specs.

Compact text form (``str(spec)``, parsed by :meth:`SearchSpace.parse`)::

    r28 b0=w4a4-w4a4 s1=k5e4_w4a4-w3a3-w2a2,k3e3_w8a8-w8a8-w8a8 s2=... head=w4a4-w4a4

``rR`` is the input resolution; ``b0`` the precision of the fixed first block (depthwise,
project); ``sN`` the active blocks of stage N (its depth is how many are listed), each
``k<kernel>e<expand>_`` then one ``w<bits>a<bits>`` per conv (expand, depthwise, project);
``head`` the final-expand and feature-mix convs. ``f`` stands for full precision (32 bits).

Bits are ``(w, a)`` pairs. Full precision is all-or-nothing per conv: a conv is either FP in
both weight and activation or in neither (QFA's stage-0 pairing rule made into a constraint).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, NamedTuple, Sequence

import numpy as np

from qfa.core.fileio import strict_json

__all__ = [
    "FP", "QBits", "StageDef", "BlockSpec", "SubnetSpec", "SearchSpace", "SpecError",
    "make_divisible", "mid_channels", "get_space", "list_spaces", "resolve_space", "space_from_json", "DATA_FIELDS",
]

# What a space takes from the data it is trained on (a variant of a preset differs only here).
DATA_FIELDS = ("in_channels", "num_classes", "resolutions")

FP = 32  # "bitwidth" that means full precision (float32, no quantizer)


class SpecError(ValueError):
    """A spec or space that is malformed or does not belong to the space it claims."""


def _show(v: Any, limit: int = 60) -> str:
    """A user's value in a message: its JSON/repr, cut short."""
    try:
        t = json.dumps(v) if not isinstance(v, str) else repr(v)
    except (TypeError, ValueError):
        t = repr(v)
    return t if len(t) <= limit else t[: limit - 3] + "..."


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number")


def _int(v: Any, where: str) -> int:
    if type(v) is not int:
        raise SpecError(f"{where} must be an integer, got {_show(v)}")
    return v


def _list(v: Any, where: str) -> list:
    if not isinstance(v, list):
        raise SpecError(f"{where} must be a list, got {_kind(v)} {_show(v)}")
    return v


def _qbits_list(v: Any, where: str) -> tuple["QBits", ...]:
    out = []
    for i, q in enumerate(_list(v, where)):
        if not isinstance(q, list) or len(q) != 2:
            raise SpecError(f"{where}[{i}] must be [w_bits, a_bits], got {_show(q)}")
        out.append(QBits(_int(q[0], f"{where}[{i}][0]"), _int(q[1], f"{where}[{i}][1]")))
    return tuple(out)


class QBits(NamedTuple):
    """Precision of one conv: weight bits and input-activation bits (32 = full precision)."""
    w: int
    a: int

    def __str__(self) -> str:
        return f"w{_bit_str(self.w)}a{_bit_str(self.a)}"


def _bit_str(b: int) -> str:
    return "f" if b == FP else str(b)


def _canon_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _short_hash(obj: Any) -> str:
    return hashlib.sha256(_canon_json(obj).encode()).hexdigest()[:16]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of ``divisor`` without dropping below 90% (MobileNet rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def se_channels(channels: int) -> int:
    """Squeeze width of an SE module over ``channels`` (OFA: channels // 4, divisible by 8)."""
    return make_divisible(channels // 4, 8)


def mid_channels(in_channels: int, expand: int) -> int:
    """Channels inside an MBConv block (OFA: make_divisible(round(C_in * e), 8))."""
    return make_divisible(round(in_channels * expand), 8)


@dataclass(frozen=True)
class StageDef:
    """One stage of MBConv blocks: output width, stride of its first block, activation, SE."""
    width: int
    stride: int
    act: str  # "relu" | "hswish"
    se: bool


@dataclass(frozen=True, eq=False)
class BlockSpec:
    """One active MBConv block: kernel, expand ratio and one QBits per conv it holds.

    A block with ``expand == 1`` has no expand conv, so it holds two QBits (depthwise,
    project); otherwise three (expand, depthwise, project).
    """
    kernel: int
    expand: int
    bits: tuple[QBits, ...]

    def __str__(self) -> str:
        return f"k{self.kernel}e{self.expand}_" + "-".join(map(str, self.bits))

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "expand": self.expand, "bits": [list(b) for b in self.bits]}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockSpec) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(_canon_json(self.to_json()))


@dataclass(frozen=True, eq=False)
class SubnetSpec:
    """One subnet of ``space``: validated on construction, immutable, JSON round-trip, hashable.

    Equality and ``hash`` are by content (the space hash included); :attr:`hash` is a stable
    16-hex-digit content hash usable in file names and across processes.
    """
    space: "SearchSpace"
    resolution: int
    first: tuple[QBits, ...]                # fixed first block: depthwise, project
    stages: tuple[tuple[BlockSpec, ...], ...]  # active blocks only; depth = len
    head: tuple[QBits, ...]                 # final expand, feature mix
    hash: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Normalise nested lists/tuples to the canonical immutable types, then validate.
        blocks = (tuple(b if isinstance(b, BlockSpec) else BlockSpec(*b) for b in st) for st in self.stages)
        stages = tuple(tuple(BlockSpec(b.kernel, b.expand, tuple(QBits(*q) for q in b.bits)) for b in st)
                       for st in blocks)
        object.__setattr__(self, "first", tuple(QBits(*b) for b in self.first))
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "head", tuple(QBits(*b) for b in self.head))
        self.space.validate(self)
        object.__setattr__(self, "hash", _short_hash(self.to_json()))

    # ---- views ------------------------------------------------------------------------
    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(st) for st in self.stages)

    @property
    def blocks(self) -> list[BlockSpec]:
        """Active MBConv blocks in network order (the fixed first block excluded)."""
        return [b for st in self.stages for b in st]

    def all_bits(self) -> list[QBits]:
        """Every searchable conv's precision, in network order."""
        return [*self.first, *(q for b in self.blocks for q in b.bits), *self.head]

    def with_bits(self, bits: int) -> "SubnetSpec":
        """The same architecture with every searchable conv at ``bits`` (e.g. 32: its float twin)."""
        q = QBits(bits, bits)
        return self.replace(first=(q,) * len(self.first), head=(q,) * len(self.head),
                            stages=tuple(tuple(BlockSpec(b.kernel, b.expand, (q,) * len(b.bits)) for b in st)
                                         for st in self.stages))

    def replace(self, **changes: Any) -> "SubnetSpec":
        return dataclasses.replace(self, **changes)

    # ---- serialisation ----------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "space": self.space.name,
            "space_hash": self.space.hash,
            "resolution": self.resolution,
            "first": [list(b) for b in self.first],
            "stages": [[b.to_json() for b in st] for st in self.stages],
            "head": [list(b) for b in self.head],
        }

    def dumps(self) -> str:
        return _canon_json(self.to_json())

    def __str__(self) -> str:
        parts = [f"r{self.resolution}", "b0=" + "-".join(map(str, self.first))]
        parts += [f"s{i + 1}=" + ",".join(map(str, st)) for i, st in enumerate(self.stages)]
        parts.append("head=" + "-".join(map(str, self.head)))
        return " ".join(parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubnetSpec) and self.hash == other.hash

    def __hash__(self) -> int:
        return hash(self.hash)


@dataclass(frozen=True)
class GenomeLayout:
    """Where each gene of an integer genome lives; the one definition every vectorised reader
    (cost model, predictor features, latency table, search) slices by.

    ``[resolution, depth per stage, per block slot (kernel, expand, 3 bit pairs), first block's
    2 bit pairs, head's 2 bit pairs]``; each gene indexes its choice tuple, and slots beyond a
    stage's depth are canonicalised to 0, so equal subnets have equal genomes."""

    n_stages: int
    max_depth: int
    SLOT: ClassVar[int] = 5   # kernel, expand, and the bit pairs of expand, depthwise, project
    TAIL: ClassVar[int] = 4   # first block's depthwise + project, head's final-expand + feature-mix

    @property
    def length(self) -> int:
        return 1 + self.n_stages + self.n_stages * self.max_depth * self.SLOT + self.TAIL

    @property
    def depths(self) -> slice:
        return slice(1, 1 + self.n_stages)

    @property
    def slot_genes(self) -> slice:
        return slice(1 + self.n_stages, self.length - self.TAIL)

    @property
    def tail(self) -> slice:
        return slice(self.length - self.TAIL, self.length)

    def slot_offset(self, stage: int, block: int) -> int:
        return 1 + self.n_stages + (stage * self.max_depth + block) * self.SLOT

    def rows(self, genomes: np.ndarray) -> np.ndarray:
        """``genomes`` as an (N, length) int64 array (a view where it already is one)."""
        return np.asarray(genomes, dtype=np.int64).reshape(-1, self.length)

    def slots(self, g: np.ndarray) -> np.ndarray:
        """(N, stages, max depth, SLOT) view of the block-slot genes of an (N, length) array
        (a view: splitting the last axis never copies), so writes reach ``g``."""
        return g[:, self.slot_genes].reshape(len(g), self.n_stages, self.max_depth, self.SLOT)

    @property
    def pair_genes(self) -> np.ndarray:
        """Mask of the genes that hold a (w, a) bit pair."""
        m = np.zeros(self.length, bool)
        m[self.slot_genes] = np.tile([False, False, True, True, True], self.n_stages * self.max_depth)
        m[self.tail] = True
        return m


@dataclass(frozen=True)
class SearchSpace:
    """A MobileNetV3-family weight-sharing space with per-conv mixed precision.

    Fixed parts: the stem conv (``stem_bits``, FP by default as in the paper), a first block
    (3x3 depthwise, expand 1, ReLU, identity shortcut), the classifier (``classifier_bits``,
    >= 8 bits) and the SE convs (``se_bits``). Searched: per stage depth, per block kernel,
    expand and three QBits, the first block's and the head's QBits, and the resolution.
    """
    name: str
    in_channels: int
    num_classes: int
    stem_width: int
    stem_stride: int
    first_width: int
    stages: tuple[StageDef, ...]
    final_expand_width: int
    feature_mix_width: int
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[int, ...] = (3, 4, 6)
    depths: tuple[int, ...] = (2, 3, 4)
    resolutions: tuple[int, ...] = tuple(range(128, 225, 4))
    bits: tuple[int, ...] = (2, 3, 4)
    stem_bits: QBits = QBits(FP, FP)
    se_bits: QBits = QBits(FP, FP)
    classifier_bits: QBits = QBits(8, 8)

    def __post_init__(self) -> None:
        for name in ("kernels", "expands", "depths", "resolutions", "bits"):
            vals = tuple(getattr(self, name))
            if not vals or list(vals) != sorted(set(vals)):
                raise SpecError(f"space {self.name!r}: {name} must be a non-empty sorted set, got {vals}")
            object.__setattr__(self, name, vals)
        object.__setattr__(self, "stages", tuple(StageDef(**s) if isinstance(s, dict) else s
                                                 for s in self.stages))
        for name in ("stem_bits", "se_bits", "classifier_bits"):
            object.__setattr__(self, name, QBits(*getattr(self, name)))
        bad = [b for b in self.bits if b not in (2, 3, 4, 5, 6, 7, 8, FP)]
        if bad:
            raise SpecError(f"space {self.name!r}: unsupported bitwidths {bad}; allowed 2..8 and {FP} (FP)")
        if self.classifier_bits.w < 8 or self.classifier_bits.a < 8:
            raise SpecError(f"space {self.name!r}: classifier_bits must be >= 8 bits, got {self.classifier_bits}")

    # ---- identity ---------------------------------------------------------------------
    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["stages"] = [dataclasses.asdict(s) for s in self.stages]
        for k in ("stem_bits", "se_bits", "classifier_bits"):
            d[k] = list(getattr(self, k))
        for k in ("kernels", "expands", "depths", "resolutions", "bits"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SearchSpace":
        d = dict(d)
        d["stages"] = tuple(StageDef(**s) for s in d["stages"])
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    @functools.cached_property
    def hash(self) -> str:
        return _short_hash(self.to_json())

    @functools.cached_property
    def _index(self) -> dict[str, dict]:
        """Choice -> gene index maps (encode is on the search's hot path)."""
        return {"r": {v: i for i, v in enumerate(self.resolutions)},
                "d": {v: i for i, v in enumerate(self.depths)},
                "k": {v: i for i, v in enumerate(self.kernels)},
                "e": {v: i for i, v in enumerate(self.expands)},
                "q": {v: i for i, v in enumerate(self.bit_pairs)}}

    @property
    def preset(self) -> str:
        """The preset this space is (or is a data-fitted variant of): ``fmnist-c3-k5`` -> ``fmnist``."""
        return self.name.split("-")[0]

    def fit_data(self, in_channels: int | None = None, num_classes: int | None = None,
                 resolutions: Sequence[int] | None = None) -> "SearchSpace":
        """This space for other data: input channels (1 grey, 3 RGB), class count, resolutions.

        A variant is another space, with its own hash and a name that says how it differs from
        its preset (``fmnist-c3-k5``), so weights, tables and specs of one are refused by the
        other with both names. Unchanged fields keep the preset's name."""
        changes = {k: v for k, v in (("in_channels", in_channels), ("num_classes", num_classes),
                                     ("resolutions", resolutions)) if v is not None}
        for k in ("in_channels", "num_classes"):
            if k in changes and type(changes[k]) is not int:
                raise SpecError(f"space {k} must be an integer, got {_show(changes[k])}")
        if changes.get("in_channels", 1) not in (1, 3):
            raise SpecError(f"space in_channels must be 1 (grey) or 3 (RGB), got {changes['in_channels']}")
        if not 2 <= changes.get("num_classes", 2) <= 100_000:
            raise SpecError(f"space num_classes must be 2..100000, got {changes['num_classes']}")
        if "resolutions" in changes:
            r = changes["resolutions"]
            if not isinstance(r, (list, tuple)) or not r or not all(type(v) is int and 16 <= v <= 1024 for v in r):
                raise SpecError(f"space resolutions must be a non-empty list of integers 16..1024, got {_show(r)}")
            changes["resolutions"] = tuple(sorted(set(r)))
        base = get_space(self.preset, self.bits) if self.preset in _PRESETS else self
        fields = {k: changes.get(k, getattr(self, k)) for k in DATA_FIELDS}
        tag = "".join(f"-{c}{v}" for c, k, v in (("c", "in_channels", fields["in_channels"]),
                                                  ("k", "num_classes", fields["num_classes"]))
                      if v != getattr(base, k))
        if fields["resolutions"] != base.resolutions:
            tag += f"-r{fields['resolutions'][0]}" + (f"-{fields['resolutions'][-1]}" if len(fields["resolutions"]) > 1 else "")
        return dataclasses.replace(self, name=self.preset + tag, **fields)

    def with_bits(self, bits: Iterable[int]) -> "SearchSpace":
        """The same architecture with another bit choice set (e.g. adding FP for stage 0)."""
        return dataclasses.replace(self, bits=tuple(sorted(set(bits))))

    # ---- derived structure ------------------------------------------------------------
    @functools.cached_property
    def bit_pairs(self) -> tuple[QBits, ...]:
        """Allowed (w, a) pairs of one searchable conv (FP pairs only with FP)."""
        return tuple(QBits(w, a) for w in self.bits for a in self.bits if (w == FP) == (a == FP))

    @property
    def n_slots(self) -> int:
        return len(self.stages) * max(self.depths)

    def stage_in_channels(self) -> list[int]:
        return [self.first_width] + [s.width for s in self.stages[:-1]]

    # ---- validation -------------------------------------------------------------------
    def _check_bits(self, where: str, q: QBits, allowed: Sequence[int]) -> None:
        for part, b in (("w", q.w), ("a", q.a)):
            if b not in allowed:
                raise SpecError(f"{where}.{part}={b} not in allowed bits {tuple(allowed)}")
        if (q.w == FP) != (q.a == FP):
            raise SpecError(f"{where}={tuple(q)}: full precision ({FP}) must be used for both w and a")

    def _check_group(self, where: str, qs: Sequence[QBits], convs: Sequence[str], allowed: Sequence[int]) -> None:
        if len(qs) != len(convs):
            raise SpecError(f"{where} must hold {len(convs)} QBits ({', '.join(convs)}), got {len(qs)}")
        for i, q in enumerate(qs):
            self._check_bits(f"{where}[{i}]", q, allowed)

    def validate(self, spec: SubnetSpec, bits: Sequence[int] | None = None) -> None:
        """Raise :class:`SpecError` naming the first offending field and its allowed values."""
        bits = self.bits if bits is None else bits
        if spec.space.hash != self.hash:
            raise SpecError(f"spec belongs to space {spec.space.name!r} ({spec.space.hash}), "
                            f"not {self.name!r} ({self.hash})")
        if spec.resolution not in self.resolutions:
            raise SpecError(f"resolution={spec.resolution} not in allowed {self.resolutions}")
        self._check_group("first", spec.first, ("depthwise", "project"), bits)
        self._check_group("head", spec.head, ("final expand", "feature mix"), bits)
        if len(spec.stages) != len(self.stages):
            raise SpecError(f"stages has {len(spec.stages)} entries; space {self.name!r} has {len(self.stages)}")
        for si, st in enumerate(spec.stages):
            if len(st) not in self.depths:
                raise SpecError(f"stages[{si}] depth={len(st)} not in allowed {self.depths}")
            for bi, b in enumerate(st):
                where = f"stages[{si}][{bi}]"
                if b.kernel not in self.kernels:
                    raise SpecError(f"{where}.kernel={b.kernel} not in allowed {self.kernels}")
                if b.expand not in self.expands:
                    raise SpecError(f"{where}.expand={b.expand} not in allowed {self.expands}")
                self._check_group(f"{where}.bits", b.bits, ("expand", "depthwise", "project"), bits)

    # ---- construction -----------------------------------------------------------------
    def spec_from_json(self, data: dict | str) -> SubnetSpec:
        """Build a spec from its JSON (dict or text); the space name and hash must match.
        Strict: every number an integer (not ``8.0`` or ``"8"``), no unknown fields."""
        if isinstance(data, str):
            try:
                data = strict_json(data)
            except ValueError as e:
                raise SpecError(f"malformed spec JSON: {e}") from None
        if not isinstance(data, dict):
            raise SpecError(f"spec JSON must be an object, got {_kind(data)}")
        missing = [k for k in ("resolution", "first", "stages", "head") if k not in data]
        if missing:
            raise SpecError(f"spec JSON lacks field(s) {missing}")
        unknown = sorted(set(data) - {"space", "space_hash", "resolution", "first", "stages", "head"})
        if unknown:
            raise SpecError(f"spec JSON has unknown field(s) {', '.join(_show(k) for k in unknown)}")
        name, h = data.get("space", self.name), data.get("space_hash", self.hash)
        if name != self.name or h != self.hash:
            raise SpecError(f"spec belongs to space {_show(name)} ({h if isinstance(h, str) else _show(h)}), not {self.name!r} ({self.hash})")

        def block(b: Any, where: str) -> BlockSpec:
            if not isinstance(b, dict) or set(b) != {"kernel", "expand", "bits"}:
                raise SpecError(f"{where} must be an object with kernel, expand and bits, got {_show(b)}")
            return BlockSpec(_int(b["kernel"], f"{where}.kernel"), _int(b["expand"], f"{where}.expand"),
                             _qbits_list(b["bits"], f"{where}.bits"))
        stages = tuple(tuple(block(b, f"stages[{si}][{bi}]") for bi, b in enumerate(_list(st, f"stages[{si}]")))
                       for si, st in enumerate(_list(data["stages"], "stages")))
        return SubnetSpec(self, _int(data["resolution"], "resolution"), _qbits_list(data["first"], "first"),
                          stages, _qbits_list(data["head"], "head"))

    _QB = re.compile(r"w([0-9]{1,2}|f)a([0-9]{1,2}|f)", re.ASCII)
    _BLK = re.compile(r"k([0-9]{1,2})e([0-9]{1,2})_(.+)", re.ASCII)

    def _parse_bits(self, text: str, where: str) -> tuple[QBits, ...]:
        out = []
        for tok in text.split("-"):
            m = self._QB.fullmatch(tok)
            if not m:
                raise SpecError(f"{where}: cannot read precision {_show(tok)}; expected like 'w4a4' or 'wfaf'")
            out.append(QBits(*(FP if g == "f" else int(g) for g in m.groups())))
        return tuple(out)

    def parse(self, text: str) -> SubnetSpec:
        """Parse a spec from JSON text or from the compact form (see module docstring)."""
        text = text.strip().lstrip("\ufeff").strip()
        if text.startswith(("{", "[", '"')):  # JSON (of the wrong kind, unless an object)
            return self.spec_from_json(text)
        if len(text) > 100_000:
            raise SpecError(f"compact spec of {len(text):,} characters is too long")
        fields: dict[str, str | None] = dict.fromkeys(["r", "b0", "head"])
        stages: dict[int, str] = {}
        for tok in text.split():
            m = re.fullmatch(r"r([0-9]{1,5})", tok, re.ASCII)
            key, sep, val = ("r", "=", m[1]) if m else tok.partition("=")
            if not sep:
                raise SpecError(f"cannot read {_show(tok)} in compact spec; expected rR, b0=, sN= or head=")
            if re.fullmatch(r"s[0-9]{1,2}", key, re.ASCII):
                if int(key[1:]) in stages:
                    raise SpecError(f"compact spec gives {key} twice")
                stages[int(key[1:])] = val
            elif key in fields:
                if fields[key] is not None:
                    raise SpecError(f"compact spec gives {'the resolution' if key == 'r' else key} twice")
                fields[key] = val
            else:
                raise SpecError(f"unknown key {_show(key)} in compact spec; expected b0, s1..s{len(self.stages)}, head")
        for k, v in fields.items():
            if v is None:
                raise SpecError(f"compact spec lacks '{k}'")
        if sorted(stages) != list(range(1, len(self.stages) + 1)):
            raise SpecError(f"compact spec must list stages s1..s{len(self.stages)}, got {sorted(stages)}")
        blocks = []
        for si in sorted(stages):
            st = []
            for bt in stages[si].split(","):
                m = self._BLK.fullmatch(bt)
                if not m:
                    raise SpecError(f"s{si}: cannot read block {_show(bt)}; expected like 'k5e4_w4a4-w4a4-w4a4'")
                st.append(BlockSpec(int(m[1]), int(m[2]), self._parse_bits(m[3], f"s{si}")))
            blocks.append(tuple(st))
        return SubnetSpec(self, int(fields["r"]), self._parse_bits(fields["b0"], "b0"), tuple(blocks),
                          self._parse_bits(fields["head"], "head"))

    # ---- sampling ---------------------------------------------------------------------
    def _bits_subset(self, bits: Sequence[int] | None) -> tuple[QBits, ...]:
        if bits is None:
            return self.bit_pairs
        extra = sorted(set(bits) - set(self.bits))
        if extra:
            raise SpecError(f"bits {extra} not in the space's bits {self.bits}")
        return tuple(q for q in self.bit_pairs if q.w in bits and q.a in bits)

    def uniform(self, *, depth: int, kernel: int, expand: int, bits: int,
                resolution: int) -> SubnetSpec:
        """A spec with the same choice everywhere (sandwich min/max, uniform-precision checks)."""
        q = QBits(bits, bits)
        stages = tuple(tuple(BlockSpec(kernel, expand, (q, q, q)) for _ in range(depth))
                       for _ in self.stages)
        return SubnetSpec(self, resolution, (q, q), stages, (q, q))

    def max_spec(self, bits: int | None = None, kernel: int | None = None) -> SubnetSpec:
        """Largest subnet: max depth, expand, resolution; kernel and bits default to the max."""
        return self.uniform(depth=self.depths[-1], kernel=kernel or self.kernels[-1],
                            expand=self.expands[-1], bits=bits or self.bits[-1],
                            resolution=self.resolutions[-1])

    def min_spec(self, bits: int | None = None, kernel: int | None = None) -> SubnetSpec:
        """Smallest subnet: min depth, expand, resolution; kernel and bits default to the min."""
        return self.uniform(depth=self.depths[0], kernel=kernel or self.kernels[0],
                            expand=self.expands[0], bits=bits or self.bits[0],
                            resolution=self.resolutions[0])

    def sample(self, rng: np.random.Generator, bits: Sequence[int] | None = None) -> SubnetSpec:
        """One subnet with every gene drawn uniformly and independently (as OFA/QFA sample).

        ``bits`` restricts precisions to a subset of the space's bits (e.g. stage 1 of training).
        """
        pairs = self._bits_subset(bits)

        def q() -> QBits:
            return pairs[rng.integers(len(pairs))]

        stages = []
        for _ in self.stages:
            d = self.depths[rng.integers(len(self.depths))]
            stages.append(tuple(BlockSpec(int(self.kernels[rng.integers(len(self.kernels))]),
                                          int(self.expands[rng.integers(len(self.expands))]),
                                          (q(), q(), q())) for _ in range(d)))
        return SubnetSpec(self, int(self.resolutions[rng.integers(len(self.resolutions))]),
                          (q(), q()), tuple(stages), (q(), q()))

    def sample_specs(self, text: str, seed: int = 0) -> list[SubnetSpec]:
        """Specs named by ``max[:B]``, ``min[:B]``, ``random:N`` (mixed precision) or
        ``random:N:B`` (every conv at B), comma-separated. Random architectures depend only on
        the seed, so ``random:5:8`` and ``random:5:2`` are the same 5 subnets at two precisions."""
        deployable = [b for b in self.bits if b != FP]
        specs = []
        for part in text.split(","):
            name, *args = part.strip().split(":")
            try:
                nums = [int(a) for a in args]
            except ValueError:
                nums = None
            if nums is None or name not in ("max", "min", "random") or len(nums) > (2 if name == "random" else 1):
                raise SpecError(f"cannot read {part!r}; use e.g. max:4,min:2,random:5 or random:5:4")
            if name == "max":
                specs.append(self.max_spec(bits=nums[0] if nums else max(deployable)))
            elif name == "min":
                specs.append(self.min_spec(bits=nums[0] if nums else None))
            else:
                rng = np.random.default_rng(seed)
                for _ in range(nums[0] if nums else 1):
                    spec = self.sample(rng, bits=deployable)
                    specs.append(spec.with_bits(nums[1]) if len(nums) == 2 else spec)
        return specs

    def sandwich(self, rng: np.random.Generator, n_random: int = 4,
                 bits: Sequence[int] | None = None, min_lowest: bool = False) -> list[SubnetSpec]:
        """The paper's sandwich: max and min subnet, each with one random kernel and one random
        uniform bitwidth for the whole net, then ``n_random`` independently sampled subnets.

        ``min_lowest`` puts the min subnet at the lowest bitwidth every step (the smallest
        subnet in every dimension, as BigNAS's sandwich); the draws are the same either way."""
        allowed = sorted({q.w for q in self._bits_subset(bits)})
        out = []
        for make, lowest in ((self.max_spec, False), (self.min_spec, min_lowest)):
            k = int(self.kernels[rng.integers(len(self.kernels))])
            b = int(allowed[rng.integers(len(allowed))])
            out.append(make(bits=allowed[0] if lowest else b, kernel=k))
        out += [self.sample(rng, bits) for _ in range(n_random)]
        return out

    # ---- integer genome (pymoo, predictor, vectorised costs) ----------------------------
    @functools.cached_property
    def layout(self) -> "GenomeLayout":
        return GenomeLayout(len(self.stages), max(self.depths))

    @property
    def genome_len(self) -> int:
        return self.layout.length

    def genome_upper(self) -> np.ndarray:
        """Number of choices of each gene (genes range over 0..upper-1)."""
        p = len(self.bit_pairs)
        slot = [len(self.kernels), len(self.expands), p, p, p]
        return np.array([len(self.resolutions)] + [len(self.depths)] * len(self.stages)
                        + slot * self.n_slots + [p] * GenomeLayout.TAIL, dtype=np.int64)

    def encode(self, spec: SubnetSpec) -> np.ndarray:
        if spec.space.hash != self.hash:
            raise SpecError(f"spec belongs to space {spec.space.name!r} ({spec.space.hash}), not {self.name!r}")
        ix, lay = self._index, self.layout
        pidx = ix["q"]
        g = np.zeros(lay.length, dtype=np.int64)
        g[0] = ix["r"][spec.resolution]
        for si, st in enumerate(spec.stages):
            g[lay.depths.start + si] = ix["d"][len(st)]
            for bi, b in enumerate(st):
                o = lay.slot_offset(si, bi)
                g[o:o + lay.SLOT] = (ix["k"][b.kernel], ix["e"][b.expand], *(pidx[q] for q in b.bits))
        g[lay.tail] = [pidx[q] for q in (*spec.first, *spec.head)]
        return g

    def active_slots(self, genomes: np.ndarray) -> np.ndarray:
        """(N, stages, max depth) mask of the block slots within each row's stage depths."""
        depth = np.asarray(self.depths)[self.layout.rows(genomes)[:, self.layout.depths]]
        return np.arange(self.layout.max_depth)[None, None, :] < depth[:, :, None]

    def active_genes(self, genomes: np.ndarray) -> np.ndarray:
        """(N, genome length) mask: every gene but those of inactive block slots."""
        g = self.layout.rows(genomes)
        mask = np.ones(g.shape, bool)
        self.layout.slots(mask)[...] = self.active_slots(g)[..., None]
        return mask

    def canonical(self, genomes: np.ndarray) -> np.ndarray:
        """Zero the genes of inactive block slots (vectorised over rows)."""
        g = np.array(self.layout.rows(genomes), copy=True)
        self.layout.slots(g)[...] *= self.active_slots(g)[..., None]
        return g

    def decode(self, genome: Sequence[int]) -> SubnetSpec:
        g = np.asarray(genome, dtype=np.int64)
        if g.shape != (self.genome_len,) or (g < 0).any() or (g >= self.genome_upper()).any():
            raise SpecError(f"genome must hold {self.genome_len} genes within {self.genome_upper().tolist()}")
        pairs, lay = self.bit_pairs, self.layout
        stages = []
        for si, d in enumerate(g[lay.depths]):
            blocks = []
            for bi in range(self.depths[d]):
                o = lay.slot_offset(si, bi)
                k, e, *b = g[o:o + lay.SLOT]
                blocks.append(BlockSpec(self.kernels[k], self.expands[e], tuple(pairs[i] for i in b)))
            stages.append(tuple(blocks))
        t = g[lay.tail]
        return SubnetSpec(self, self.resolutions[g[0]], (pairs[t[0]], pairs[t[1]]), tuple(stages),
                          (pairs[t[2]], pairs[t[3]]))

    # ---- counting ---------------------------------------------------------------------
    def count(self, full: bool = False) -> int:
        """Exact number of subnets.

        ``full=False`` counts the MBConv stages only (the paper's (6561^2+6561^3+6561^4)^5 for
        the paper preset); ``full=True`` also counts resolution, first-block and head precision.
        """
        p = len(self.bit_pairs)
        per_block = len(self.kernels) * len(self.expands) * p ** 3
        per_stage = sum(per_block ** d for d in self.depths)
        n = per_stage ** len(self.stages)
        if full:
            n *= len(self.resolutions) * p ** 2 * p ** 2
        return n

    def summary(self) -> dict:
        return {
            "name": self.name, "hash": self.hash,
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "kernels": list(self.kernels), "expands": list(self.expands),
            "depths": list(self.depths), "resolutions": list(self.resolutions),
            "bits": list(self.bits), "bit_pairs_per_conv": len(self.bit_pairs),
            "stem_bits": list(self.stem_bits), "se_bits": list(self.se_bits),
            "classifier_bits": list(self.classifier_bits),
            "count_blocks": self.count(), "count_full": self.count(full=True),
        }


# ---- presets --------------------------------------------------------------------------
def _paper() -> SearchSpace:
    # OFA MobileNetV3 at width 1.2, as in the QFA paper and its release.
    return SearchSpace(
        name="paper", in_channels=3, num_classes=1000, stem_width=24, stem_stride=2,
        first_width=24,
        stages=(StageDef(32, 2, "relu", False), StageDef(48, 2, "relu", True),
                StageDef(96, 2, "hswish", False), StageDef(136, 1, "hswish", True),
                StageDef(192, 2, "hswish", True)),
        final_expand_width=1152, feature_mix_width=1536,
    )


def _fmnist() -> SearchSpace:
    # Same family, sized for 24-32 px grey images on 2 CPU cores: stride-1 stem, 3 stages,
    # depth 1..3, 8-bit and FP (stage 0 of training) among the bit choices.
    return SearchSpace(
        name="fmnist", in_channels=1, num_classes=10, stem_width=16, stem_stride=1,
        first_width=16,
        stages=(StageDef(24, 2, "relu", False), StageDef(40, 2, "hswish", True),
                StageDef(64, 2, "hswish", True)),
        final_expand_width=384, feature_mix_width=512,
        depths=(1, 2, 3), resolutions=(24, 28, 32), bits=(2, 3, 4, 8, FP),
        se_bits=QBits(8, 8),
    )


def _edge() -> SearchSpace:
    # The fmnist family widened for small RGB images (64-96 px) on modest hardware: a stride-2
    # stem, stages 24/40/80; in_channels and num_classes are fitted to the data.
    return SearchSpace(
        name="edge", in_channels=3, num_classes=10, stem_width=16, stem_stride=2,
        first_width=16,
        stages=(StageDef(24, 2, "relu", False), StageDef(40, 2, "hswish", True),
                StageDef(80, 2, "hswish", True)),
        final_expand_width=480, feature_mix_width=640,
        depths=(1, 2, 3), resolutions=(64, 80, 96), bits=(2, 3, 4, 8, FP),
        se_bits=QBits(8, 8),
    )


_PRESETS = {"paper": _paper, "fmnist": _fmnist, "edge": _edge}


def list_spaces() -> list[str]:
    return sorted(_PRESETS)


def get_space(name: str, bits: Iterable[int] | None = None) -> SearchSpace:
    """A preset space by name, optionally with another bit choice set."""
    if name not in _PRESETS:
        raise SpecError(f"unknown space {name!r}; available: {', '.join(list_spaces())}")
    space = _PRESETS[name]()
    return space.with_bits(bits) if bits is not None else space


def resolve_space(text: str) -> SearchSpace:
    """A space named on a command line: a preset name, or a JSON file a run wrote
    (``RUN/space.json``: a preset fitted to its data)."""
    if text in _PRESETS:
        return get_space(text)
    from pathlib import Path
    p = Path(text)
    if p.suffix != ".json":
        raise SpecError(f"unknown space {text!r}; available: {', '.join(list_spaces())}, or a space .json file")
    try:
        d = strict_json(p.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:
        raise SpecError(f"cannot read space file {text}: {str(e).splitlines()[0][:120]}") from None
    return space_from_json(d, text)


def space_from_json(d: Any, where: str = "space") -> SearchSpace:
    """A space from its JSON (:meth:`SearchSpace.to_json`), checked: a file's space is input."""
    if not isinstance(d, dict) or not isinstance(d.get("name"), str) or d["name"].split("-")[0] not in _PRESETS:
        raise SpecError(f"{where}: not a search space of a known preset ({', '.join(list_spaces())})")
    try:
        space = SearchSpace.from_json(d)
        preset = get_space(space.preset, space.bits)
        variant = preset.fit_data(*(getattr(space, k) for k in DATA_FIELDS))
    except (TypeError, ValueError, KeyError) as e:
        raise SpecError(f"{where}: malformed search space ({str(e).splitlines()[0][:120]})") from None
    if variant.to_json() != space.to_json():  # only the data fields may differ from the preset
        raise SpecError(f"{where}: space {space.name!r} differs from its preset beyond {', '.join(DATA_FIELDS)}")
    return variant
