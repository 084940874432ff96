"""Every exported file loads under every runtime configuration (XNNPACK and TFLite's builtin
kernels), for random specs x every target, from a barely trained supernet (a real 51-step
`qfa train` run: where dead channels with arbitrary weight scales occur, in some runs and not
others; the last test makes one on purpose) and from one with extreme scales
(perturbed quantizers, BatchNorm gains x10). Beyond what the runtimes accept (gains x1000),
the export refuses in one line and writes nothing. Real LiteRT interpreter loads.

bench/export_loads.py runs the same check over >= 200 specs per supernet."""
import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from .conftest import boost_bn, perturb
from export.deploy import ExportError, export_subnet, fold_subnet
from export.lower import fit_xnnpack, xnnpack_limit_errors
from export.targets import DELEGATES, TARGETS
from export.tflite import to_tflite
from export.verify import TFLiteModel, load_failures, op_errors
from qfa.core.space import get_space
from qfa.nn.data import make_datasets
from qfa.nn.supernet import Supernet

SPACE = get_space("fmnist")
N_RANDOM = int(os.environ.get("QFA_LOAD_SPECS", "12"))
BARELY = ["batch_size=16", "float.epochs=0.005", "stage0.epochs=0.005", "stage1.epochs=0.005", "calib_images=64",
          "eval_images=0", "float.warmup_epochs=0", "stage0.warmup_epochs=0", "stage1.warmup_epochs=0"]


@pytest.fixture(scope="module")
def barely_trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("barely")
    args = [sys.executable, "-m", "qfa", "train", "fmnist", "--out", str(out)]
    for kv in BARELY:
        args += ["--set", kv]
    r = subprocess.run(args, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-2000:]
    return Supernet.from_checkpoint(out / "last.pt")


@pytest.fixture(scope="module")
def extreme():
    torch.manual_seed(1)
    net = Supernet(SPACE)
    perturb(net, seed=1)
    boost_bn(net)
    return net


def _specs():
    return SPACE.sample_specs(f"max:2,min:2,max:8,min:8,random:{N_RANDOM}", seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["barely_trained", "extreme"])
def test_every_export_loads_under_every_delegate(request, which):
    net = request.getfixturevalue(which)
    data, refused = {}, []
    specs = _specs()
    for spec in specs:
        if spec.resolution not in data:
            data[spec.resolution] = make_datasets(None, spec.resolution)
        g0, *_ = fold_subnet(net, spec, data[spec.resolution], calib_images=128, range_images=128)
        for target in TARGETS.values():
            g = target.lower(copy.deepcopy(g0))
            assert xnnpack_limit_errors(g) == [], (str(spec), target.name)
            bad = load_failures(to_tflite(g, target))
            if bad:
                refused.append((str(spec), target.name, bad))
    assert refused == []


def test_a_file_no_runtime_loads_is_refused_in_one_line(tmp_path):
    torch.manual_seed(1)
    net = Supernet(SPACE)
    perturb(net, seed=1)
    boost_bn(net, gain=1000.0)
    out = tmp_path / "m.tflite"
    with pytest.raises(ExportError, match=r"m\.tflite would not load under xnnpack.*requantization scale") as e:
        export_subnet(net, SPACE.min_spec(bits=2), make_datasets(None, 24), out, calib_images=128, range_images=128)
    assert "\n" not in str(e.value) and not out.exists() and not out.with_suffix(".json").exists()


def test_a_dead_channel_of_any_scale_loads_and_outputs_its_bias(extreme, fmnist_train):
    """All-zero weights leave a channel's weight scale arbitrary; at in*w/out >= 256 XNNPACK
    refuses the whole file. fit_xnnpack makes the file load and changes no output."""
    spec = SPACE.min_spec(bits=2)
    g, *_ = fold_subnet(extreme, spec, make_datasets(None, spec.resolution), calib_images=128, range_images=128)
    g = TARGETS["tflite-int8"].lower(g)
    op = next(o for o in g.ops if o.kind == "conv" and o.depthwise)
    c = 1
    op.weight = op.weight.copy()
    op.weight[..., c] = 0
    op.w_scale = op.w_scale.astype(np.float64).copy()
    op.w_scale[c] = 2000.0 * g.tensors[op.output].scale / g.tensors[op.inputs[0]].scale
    assert any("requantization scale" in e for e in xnnpack_limit_errors(g))
    assert set(load_failures(to_tflite(g))) == {"xnnpack"}
    fit_xnnpack(g)
    assert xnnpack_limit_errors(g) == []
    blob = to_tflite(g)
    assert load_failures(blob) == {}
    x = np.ascontiguousarray(fmnist_train[:2, :, 2:-2, 2:-2].permute(0, 2, 3, 1).numpy())  # 24x24, the min spec
    for delegate in DELEGATES:
        m = TFLiteModel(blob, preserve=True, delegate=delegate)
        errs = op_errors(g, m, x)
        assert max(errs.values()) <= 1, (delegate, {k: v for k, v in errs.items() if v > 1})
