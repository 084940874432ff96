import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from qfa.core.space import FP, BlockSpec, QBits, SearchSpace, SpecError, StageDef, get_space, list_spaces

SPACES = list_spaces()


@pytest.mark.parametrize("name", SPACES)
def test_presets_are_consistent(name):
    s = get_space(name)
    assert s.hash == get_space(name).hash
    assert SearchSpace.from_json(json.loads(json.dumps(s.to_json()))) == s
    assert s.with_bits(s.bits + (FP,) if FP not in s.bits else s.bits[:-1]).hash != s.hash


def test_paper_preset_matches_the_paper():
    s = get_space("paper")
    assert s.stem_width == 24 and s.stem_stride == 2
    assert [st.width for st in s.stages] == [32, 48, 96, 136, 192]
    assert [st.stride for st in s.stages] == [2, 2, 2, 1, 2]
    assert [st.act for st in s.stages] == ["relu", "relu", "hswish", "hswish", "hswish"]
    assert [st.se for st in s.stages] == [False, True, False, True, True]
    assert (s.final_expand_width, s.feature_mix_width, s.num_classes) == (1152, 1536, 1000)
    assert s.resolutions == tuple(range(128, 225, 4)) and len(s.resolutions) == 25
    assert s.stem_bits == (FP, FP) and s.classifier_bits == (8, 8)


def test_paper_count_is_the_papers():
    s = get_space("paper")
    assert s.count() == (6561 ** 2 + 6561 ** 3 + 6561 ** 4) ** 5
    assert f"{s.count():.2g}" == "2.2e+76"
    assert s.count(full=True) == s.count() * 25 * 9 ** 4


def _tiny_space(bits, depths):
    return SearchSpace(name="tiny", in_channels=1, num_classes=2, stem_width=8, stem_stride=1, first_width=8,
                       stages=(StageDef(8, 1, "relu", False),), final_expand_width=8, feature_mix_width=8,
                       kernels=(3, 5), expands=(3,), depths=depths, resolutions=(8, 12), bits=bits)


@pytest.mark.parametrize("bits, depths", [((2, FP), (1, 2)), ((2, 4), (1,)), ((2, 4, FP), (1,))])
def test_count_matches_enumeration(bits, depths):
    s = _tiny_space(bits, depths)
    upper = s.genome_upper()
    genomes = np.array(list(itertools.product(*[range(u) for u in upper])))
    distinct = {tuple(g) for g in s.canonical(genomes)}
    assert len(distinct) == s.count(full=True)
    # and every distinct genome decodes to a distinct valid spec
    assert len({s.decode(np.array(g)).hash for g in distinct}) == len(distinct)


def test_fp_is_all_or_nothing_per_conv():
    s = get_space("fmnist")
    assert QBits(FP, 4) not in s.bit_pairs and QBits(FP, FP) in s.bit_pairs
    spec = s.max_spec(bits=4)
    before = spec.dumps()
    with pytest.raises(SpecError, match="full precision"):
        spec.replace(first=(QBits(FP, 4), QBits(4, 4)))
    with pytest.raises(SpecError, match="full precision"):
        s.parse(str(spec).replace("b0=w4a4", "b0=wfa4", 1))  # the compact form is checked alike
    assert spec.dumps() == before and spec.first == (QBits(4, 4), QBits(4, 4))  # the spec is untouched


@pytest.mark.parametrize("name", SPACES)
def test_json_and_compact_round_trip(name):
    s = get_space(name)
    rng = np.random.default_rng(0)
    for _ in range(20):
        spec = s.sample(rng)
        assert s.spec_from_json(json.loads(spec.dumps())) == spec
        assert s.parse(spec.dumps()) == spec
        assert s.parse(str(spec)) == spec
        assert s.decode(s.encode(spec)) == spec
        assert spec.to_json()["space_hash"] == s.hash


def test_hash_is_stable_across_processes_and_sensitive_to_content():
    s = get_space("fmnist")
    spec = s.max_spec(bits=4)
    code = ("from qfa.core.space import get_space; s=get_space('fmnist'); print(s.max_spec(bits=4).hash)")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == spec.hash and len(spec.hash) == 16
    assert s.max_spec(bits=8).hash != spec.hash
    assert spec.replace(resolution=28).hash != spec.hash
    assert len({spec, s.max_spec(bits=4)}) == 1


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(resolution=29), "resolution=29 not in allowed (24, 28, 32)"),
    (lambda d: d["stages"][0][0].update(kernel=9), "stages[0][0].kernel=9 not in allowed (3, 5, 7)"),
    (lambda d: d["stages"][1][0].update(expand=5), "stages[1][0].expand=5 not in allowed (3, 4, 6)"),
    (lambda d: d["stages"][0][0]["bits"].__setitem__(1, [5, 4]), "stages[0][0].bits[1].w=5 not in allowed bits"),
    (lambda d: d["stages"][0][0]["bits"].pop(), "stages[0][0].bits must hold 3 QBits"),
    (lambda d: d["stages"].pop(), "stages has 2 entries; space 'fmnist' has 3"),
    (lambda d: d["stages"][2].append(d["stages"][2][0]), "stages[2] depth=4 not in allowed (1, 2, 3)"),
    (lambda d: d["head"].pop(), "head must hold 2 QBits"),
    (lambda d: d.update(space_hash="0" * 16), "spec belongs to space 'fmnist' (0000000000000000)"),
    (lambda d: d.pop("first"), "spec JSON lacks field(s) ['first']"),
    (lambda d: d["first"].__setitem__(0, "w4"), "first[0] must be [w_bits, a_bits], got 'w4'"),
    # nothing is coerced: numbers are integers, as the spec writes them
    (lambda d: d.update(resolution=28.5), "resolution must be an integer, got 28.5"),
    (lambda d: d.update(resolution=28.0), "resolution must be an integer, got 28.0"),
    (lambda d: d.update(resolution="28"), "resolution must be an integer, got '28'"),
    (lambda d: d.update(resolution=True), "resolution must be an integer, got true"),
    (lambda d: d["head"].__setitem__(0, [2.5, 2]), "head[0][0] must be an integer, got 2.5"),
    (lambda d: d["head"].__setitem__(0, ["8", 8]), "head[0][0] must be an integer, got '8'"),
    (lambda d: d["stages"].__setitem__(0, 5), "stages[0] must be a list, got a number 5"),
    (lambda d: d["stages"][0].__setitem__(0, [3]), "stages[0][0] must be an object with kernel, expand and bits"),
    (lambda d: d.update(extra=1), "unknown field(s) 'extra'"),
])
def test_invalid_specs_name_the_field(mutate, message):
    s = get_space("fmnist")
    d = json.loads(s.max_spec(bits=4).dumps())
    mutate(d)
    with pytest.raises(SpecError) as e:
        s.spec_from_json(d)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_spec_of_another_space_is_rejected():
    paper_spec = get_space("paper").min_spec()
    with pytest.raises(SpecError, match="belongs to space 'paper'"):
        get_space("fmnist").spec_from_json(paper_spec.dumps())
    with pytest.raises(SpecError, match="belongs to space 'paper'"):
        get_space("fmnist").encode(paper_spec)


def test_malformed_text():
    s = get_space("fmnist")
    for text, msg in [("{not json", "malformed spec JSON"), ("r28 b0=w4a4-w4a4", "lacks 'head'"),
                      ("r28 b0=w4x4-w4a4 s1=k3e3_w4a4-w4a4-w4a4 s2=k3e3_w4a4-w4a4-w4a4 s3=k3e3_w4a4-w4a4-w4a4 "
                       "head=w4a4-w4a4", "cannot read precision 'w4x4'"), ("[1, 2]", "spec JSON must be an object, got a list")]:
        with pytest.raises(SpecError, match=msg.replace("(", r"\(").replace("[", r"\[")):
            s.parse(text)


def test_min_max_and_sandwich():
    s = get_space("paper")
    mx, mn = s.max_spec(), s.min_spec()
    assert mx.depths == (4,) * 5 and mn.depths == (2,) * 5
    assert mx.resolution == 224 and mn.resolution == 128
    assert {b.expand for b in mx.blocks} == {6} and {b.expand for b in mn.blocks} == {3}
    assert set(mx.all_bits()) == {QBits(4, 4)} and set(mn.all_bits()) == {QBits(2, 2)}
    rng = np.random.default_rng(3)
    sw = s.sandwich(rng, n_random=4)
    assert len(sw) == 6
    assert sw[0].depths == mx.depths and sw[0].resolution == 224 and len(set(sw[0].all_bits())) == 1
    assert len({b.kernel for b in sw[0].blocks}) == 1
    assert sw[1].depths == mn.depths and sw[1].resolution == 128 and len(set(sw[1].all_bits())) == 1
    # restricted bits (training stage 1) are honoured, and bits outside the space refused
    fm = get_space("fmnist")
    for spec in fm.sandwich(rng, 4, bits=(2, 3, 4)):
        assert {b for q in spec.all_bits() for b in q} <= {2, 3, 4}
    with pytest.raises(SpecError, match="not in the space's bits"):
        s.sample(rng, bits=(2, 8))
    # min_lowest: the min subnet at the stage's lowest bits every step, every other draw unchanged
    for seed in range(6):
        plain = fm.sandwich(np.random.default_rng(seed), 4, bits=(2, 3, 4, 8, 32))
        lowest = fm.sandwich(np.random.default_rng(seed), 4, bits=(2, 3, 4, 8, 32), min_lowest=True)
        assert set(lowest[1].all_bits()) == {QBits(2, 2)}
        assert [b.kernel for b in lowest[1].blocks] == [b.kernel for b in plain[1].blocks]
        assert lowest[0] == plain[0] and lowest[2:] == plain[2:]


def test_sampling_is_seeded_and_covers_choices():
    s = get_space("fmnist")
    a = [s.sample(np.random.default_rng(7)) for _ in range(3)]
    b = [s.sample(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    rng = np.random.default_rng(0)
    specs = [s.sample(rng) for _ in range(300)]
    assert {sp.resolution for sp in specs} == set(s.resolutions)
    assert {d for sp in specs for d in sp.depths} == set(s.depths)
    assert {b.kernel for sp in specs for b in sp.blocks} == set(s.kernels)
    assert {q for sp in specs for q in sp.all_bits()} == set(s.bit_pairs)


def test_blockspec_and_spec_are_immutable():
    spec = get_space("fmnist").min_spec()
    with pytest.raises(Exception):
        spec.resolution = 32
    with pytest.raises(Exception):
        spec.stages[0][0].kernel = 5
    assert isinstance(spec.stages[0][0], BlockSpec)


@pytest.mark.parametrize("text, message", [
    ('{"resolution": 1e400}', "number 1e400 is out of range"),
    ('{"resolution": Infinity}', "Infinity is not a number"),
    ('{"resolution": ' + "9" * 4300 + "}", "has 4300 digits"),
    ("[" * 100_000, "nested too deeply"),
    ('{"resolution": 28, "resolution": 24}', "key 'resolution' appears twice"),
    ("r\uff12\uff18 b0=w8a8-w8a8", "cannot read 'r\uff12\uff18'"),  # fullwidth digits are not digits here
    ("r28 r24 b0=w8a8-w8a8", "gives the resolution twice"),
    ("r28 b0=w8a8-w8a8 b0=w4a4-w4a4", "gives b0 twice"),
    ("r28 s1=k3e3_w8a8-w8a8-w8a8 s1=k3e3_w8a8-w8a8-w8a8", "gives s1 twice"),
    ("r28 b0=w8.0a8-w8a8 s1=k3e3_w8a8-w8a8-w8a8 s2=k3e3_w8a8-w8a8-w8a8 s3=k3e3_w8a8-w8a8-w8a8 head=w8a8-w8a8",
     "cannot read precision 'w8.0a8'"),
])
def test_spec_text_is_read_strictly(text, message):
    with pytest.raises(SpecError) as e:
        get_space("fmnist").parse(text)
    assert message in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 300


def test_a_bom_and_surrounding_space_are_not_part_of_the_spec():
    s = get_space("fmnist")
    spec = s.max_spec(bits=4)
    assert s.parse("\ufeff " + str(spec) + "\n") == spec == s.parse("\ufeff" + spec.dumps())
