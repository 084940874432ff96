"""The file size that search and --max-bytes use is the exported file's, to the byte: computed
from an untrained supernet, compared with files written from a supernet whose every quantizer,
BN and bias parameter was moved as training moves them, calibrated on real Fashion-MNIST."""
import numpy as np
import pytest
import torch

from .conftest import perturb
from export.fold import fold
from export.deploy import FileSize, gzip_bytes
from export.targets import TARGETS
from export.tflite import to_tflite
from qfa.core.space import get_space
from qfa.nn.calibrate import calibrate
from qfa.nn.data import resize
from qfa.nn.quant import ACT_QUANTIZERS
from qfa.nn.supernet import Supernet, extract
from qfa.nas.search import deployed_bytes
from qfa.core.cost import CostModel

SPACE = get_space("fmnist")


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(1)
    net = Supernet(SPACE)
    perturb(net, seed=7)
    return net


def _specs():
    rng = np.random.default_rng(11)
    return [SPACE.min_spec(bits=2), SPACE.max_spec(bits=2), SPACE.max_spec(bits=8), SPACE.max_spec(bits=32),
            *(SPACE.sample(rng) for _ in range(6))]


@pytest.fixture(scope="module")
def sizer():
    return FileSize(SPACE)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_file_size_is_the_exported_files_to_the_byte(trained, sizer, fmnist_train, target):
    cost = CostModel(SPACE)
    for spec in _specs():
        x = resize(fmnist_train[:512], spec.resolution)
        calibrate(trained, spec, x.split(256), 512)
        blob = to_tflite(TARGETS[target].lower(fold(extract(trained, spec), x[:256])), target)
        assert sizer(spec, target) == len(blob), (target, str(spec))
        # the search's objective (weights as stored + int32 biases) is below the file (activation
        # grids, per-channel scales and the flatbuffer add up to ~50% on the largest subnets), and a
        # float target's FP weights count 2 or 4 bytes (counted as 1, an all-FP file is ~4x)
        if not TARGETS[target].int4_weights:
            objective = deployed_bytes(cost, SPACE.encode(spec)[None], TARGETS[target].fp_weight_bytes)[0]
            assert objective < len(blob) < 1.6 * objective + 100_000, (target, str(spec), objective, len(blob))
    assert 0 < gzip_bytes(blob) < len(blob)


def test_uint8_io_and_cache(trained, sizer, fmnist_train):
    from dataclasses import replace
    spec = SPACE.sample(np.random.default_rng(3))
    x = resize(fmnist_train[:256], spec.resolution)
    calibrate(trained, spec, x.split(256), 256)
    tgt = replace(TARGETS["tflite-int8"], io_dtype="uint8")
    blob = to_tflite(tgt.lower(fold(extract(trained, spec), x)), tgt)
    assert sizer(spec, "tflite-int8", uint8_io=True) == len(blob) > sizer(spec, "tflite-int8")
    assert (spec.hash, tgt) in sizer.cache


@pytest.mark.parametrize("act_quant", sorted(ACT_QUANTIZERS))
def test_file_size_for_every_activation_quantizer(fmnist_train, act_quant):
    torch.manual_seed(2)
    net = Supernet(SPACE, act_quant)
    perturb(net, seed=5)
    with torch.no_grad():  # LSQ+: past the data-driven initialisation, its offsets trained off it
        g = torch.Generator().manual_seed(9)
        for name, p in net.named_parameters():
            if name.endswith(".beta"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for name, b in net.named_buffers():
            if name.endswith(".initialized"):
                b.fill_(True)
    sizer = FileSize(SPACE, act_quant)
    for spec in _specs()[:4]:
        x = resize(fmnist_train[:256], spec.resolution)
        calibrate(net, spec, x.split(256), 256)
        blob = to_tflite(TARGETS["tflite-int8"].lower(fold(extract(net, spec), x)), "tflite-int8")
        assert sizer(spec, "tflite-int8") == len(blob), (act_quant, str(spec))


def test_file_size_of_a_partly_trained_supernet(trained, fmnist_train):
    """A short run leaves some offsets at exactly 0 (bitwidths never sampled at a layer): those
    grids need no shift op, so the file is smaller than a fully trained one's. The sizer of that
    supernet (as ``FileSize.of_checkpoint`` builds it) is exact; the stand-in for a trained one is not."""
    import copy
    net = copy.deepcopy(trained)
    with torch.no_grad():
        for i, (name, p) in enumerate(net.named_parameters()):
            if name.endswith(".offset") and i % 3 == 0:
                p.zero_()
    own, stand_in = FileSize(SPACE, net=copy.deepcopy(net)), FileSize(SPACE)
    differs = 0
    for spec in _specs()[:5]:
        x = resize(fmnist_train[:256], spec.resolution)
        calibrate(net, spec, x.split(256), 256)
        size = len(to_tflite(TARGETS["tflite-int8"].lower(fold(extract(net, spec), x)), "tflite-int8"))
        assert own(spec, "tflite-int8") == size, str(spec)
        differs += stand_in(spec, "tflite-int8") != size
    assert differs
