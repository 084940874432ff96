"""Your own images: ImageFolder trees made here from real Fashion-MNIST images (RGB with a
colour tint per class, other sizes, some files corrupt), through the space fitted to the data,
the loader, a wrong-variant refusal and the whole `qfa run --data`."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qfa.core.space import SpecError, get_space, resolve_space
from qfa.nn.data import DataError, load_fashion_mnist, make_datasets, scan_folder, skipped_note, space_for_data
from qfa.nn.supernet import Supernet

ROOT = Path(__file__).resolve().parents[1]
TINTS = np.array([[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.3, 1.0], [1.0, 1.0, 0.2], [0.2, 1.0, 1.0]])


def make_folder(root: Path, classes: int = 4, per_class: int = 40, rgb: bool = True, val: bool = True,
                size: int = 36, corrupt: int = 2) -> Path:
    """root/{train,val}/<class>/*.png from Fashion-MNIST classes 0..classes-1, tinted per class
    (RGB) or grey, resized to ``size``; ``corrupt`` broken files in the first training class."""
    images, labels = load_fashion_mnist("train")
    names = [f"class_{c}" for c in range(classes)]
    for split, n in (("train", per_class), ("val", per_class // 4)) if val else (("train", per_class),):
        for c, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(labels == c)[(0 if split == "train" else 1000):][:n]
            for i in idx:
                g = images[i].astype(np.float32)
                img = Image.fromarray((g[..., None] * TINTS[c]).astype(np.uint8), "RGB") if rgb else Image.fromarray(images[i], "L")
                img.resize((size, size), Image.BILINEAR).save(d / f"{i}.png")
    first = root / "train" / names[0]
    for k in range(corrupt):
        (first / f"broken{k}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40 if k % 2 == 0 else b"not an image")
    return root


@pytest.fixture(scope="module")
def rgb_root(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("rgb"))


def test_the_space_fits_the_data(rgb_root, tmp_path):
    facts = scan_folder(rgb_root / "train")
    assert facts["channels"] == 3 and facts["labels"] == tuple(f"class_{c}" for c in range(4)) and facts["skipped"] == 2
    grey = make_folder(tmp_path / "grey", classes=3, per_class=8, rgb=False, val=False, corrupt=0)
    assert scan_folder(grey / "train")["channels"] == 1
    fm = get_space("fmnist")
    rgb = space_for_data(fm, str(rgb_root))
    assert (rgb.in_channels, rgb.num_classes, rgb.name) == (3, 4, "fmnist-c3-k4") and rgb.hash != fm.hash
    g = space_for_data(fm, str(grey))
    assert (g.in_channels, g.num_classes, g.name) == (1, 3, "fmnist-k3")
    assert space_for_data(fm, None).hash == fm.hash  # Fashion-MNIST itself: the preset
    assert space_for_data(fm, str(rgb_root), in_channels=1).name == "fmnist-k4"  # read RGB as grey: the user's call
    r = space_for_data(fm, str(rgb_root), resolutions=[32, 40])
    assert r.resolutions == (32, 40) and r.name == "fmnist-c3-k4-r32-40"
    with pytest.raises(DataError, match="num_classes=5, but .* has 4 classes"):
        space_for_data(fm, str(rgb_root), num_classes=5)
    for bad in ({"in_channels": 2}, {"num_classes": 1}, {"resolutions": [8]}, {"resolutions": []}, {"in_channels": True}):
        with pytest.raises(SpecError):
            fm.fit_data(**bad)
    (tmp_path / "s.json").write_text(json.dumps(rgb.to_json()))
    assert resolve_space(str(tmp_path / "s.json")).hash == rgb.hash
    tampered = dict(rgb.to_json(), stem_width=99)
    (tmp_path / "t.json").write_text(json.dumps(tampered))
    with pytest.raises(SpecError, match="differs from its preset"):
        resolve_space(str(tmp_path / "t.json"))


def test_the_loader_reads_what_the_space_asks(rgb_root, tmp_path):
    space = space_for_data(get_space("fmnist"), str(rgb_root))
    d = make_datasets(str(rgb_root), 32, space=space)
    x, y = d["train"][0]
    assert x.shape == (3, 32, 32) and d["train"].labels == tuple(f"class_{c}" for c in range(4))
    assert len(d["train"]) + len(d["holdout"]) == 4 * 40 and len(d["test"]) == 4 * 10  # 2 corrupt files skipped
    assert skipped_note(d).startswith("skipped 2 file(s) that are not readable images (first: ")
    # normalisation from the training split: the tinted, mostly black images are far from 0.5
    mean, std = d["train"].mean, d["train"].std
    assert len(mean) == 3 and all(0.05 < m < 0.4 for m in mean) and d["test"].mean == mean
    xs = torch.stack([d["holdout"][i][0] for i in range(len(d["holdout"]))])
    assert abs(float(xs.mean())) < 0.35 and 0.6 < float(xs.std()) < 1.5
    # grey reading of the same files, and a 10-class space refused
    g = make_datasets(str(rgb_root), 28, space=space_for_data(get_space("fmnist"), str(rgb_root), in_channels=1))
    assert g["test"][0][0].shape == (1, 28, 28)
    with pytest.raises(DataError, match=r"has 4 classes; space 'fmnist' has 10"):
        make_datasets(str(rgb_root), 32, space=get_space("fmnist"))
    # no val/: a fixed test split is carved from train, apart from the held-out split
    flat = make_folder(tmp_path / "flat", classes=3, per_class=20, val=False, corrupt=0)
    for root in (flat, flat / "train"):  # root/train/<class> or root/<class>
        f = make_datasets(str(root), 24)
        tr, ho, te = (set(map(str, np.asarray(f[k].files)[f[k].indices])) for k in ("train", "holdout", "test"))
        assert len(te) == 6 and not (tr & te) and not (ho & te) and len(tr) + len(ho) + len(te) == 60
    # an empty class folder, a folder without classes: one clear error each
    (flat / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="class folder .*empty holds no readable images"):
        make_datasets(str(flat), 24)
    with pytest.raises(DataError, match="holds no class folders"):
        make_datasets(str(flat / "train" / "empty"), 24)


def test_a_checkpoint_of_another_variant_is_refused(rgb_root, tmp_path):
    ckpt = tmp_path / "fm.pt"  # an (untrained) Fashion-MNIST supernet's checkpoint
    from qfa.nn.checkpoint import save_checkpoint
    sp = get_space("fmnist")
    save_checkpoint(ckpt, {"model": Supernet(sp).state_dict(), "space": sp.name, "space_hash": sp.hash,
                           "space_json": json.dumps(sp.to_json()), "act_quant": "bq", "step": 0, "config": {}})
    r = subprocess.run([sys.executable, "-m", "qfa", "eval", "--checkpoint", str(ckpt), "--sample", "min",
                        "--data", str(rgb_root)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert re.search(r"has 4 classes; space 'fmnist' has 10", r.stderr)


@pytest.mark.slow
def test_qfa_run_on_your_own_rgb_images(rgb_root, tmp_path):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "qfa", "run", "--data", str(rgb_root), "--run", str(run), "--tiny",
                        "--set", "space.resolutions=[24]", "--allow-over-budget", "--json"],
                       capture_output=True, text=True, timeout=1800, cwd=ROOT,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert "is for space 'fmnist', the supernet's is 'fmnist-c3-k4-r24', so profiling this host" in r.stderr
    # the new tables are named for this CPU, one per delegate, and for the target (the default's)
    from hw.transport import Local, RunConfig, device_slug
    from qfa.app.main_job import DEFAULT_TABLE
    target = json.loads(DEFAULT_TABLE.with_suffix(".json").read_text())["target"]
    slug = device_slug(Local('local', RunConfig()).facts())
    tables = [str(run / "tables" / f"{slug}-{tag}-{target.removeprefix('tflite-')}.csv") for tag in ("1t", "1t-builtin")]
    assert [c["table"] for c in summary["configurations"]] == tables and summary["table"] in tables
    side = json.loads((run / "model.json").read_text())
    assert side["labels"] == [f"class_{c}" for c in range(4)] and side["input"]["shape_nhwc"] == [1, 24, 24, 3]
    assert side["input"]["normalize"]["mean"] == list(make_datasets(str(rgb_root), 24)["train"].mean)
    assert json.loads((run / "space.json").read_text())["name"] == "fmnist-c3-k4-r24"
    assert summary["within_budget"] == (summary["measured_latency_ms"] <= summary["budget_ms"])  # timed on the file
    from export.verify import TFLiteModel
    m = TFLiteModel(run / "model.tflite")
    assert m.out["shape"].tolist() == [1, 4]


def test_nothing_outside_its_loader_and_preset_assumes_fashion_mnist():
    """Fashion-MNIST's channels, classes, normalisation and labels live in its loader
    (qfa/nn/data.py) and the presets' definitions; everything else asks the space or the data."""
    pattern = re.compile(r"FMNIST_|load_fashion_mnist|make_datasets\(None|FashionMNIST\(|to_tensor\(|num_classes\s*=\s*10\b|"
                         r"in_channels\s*=\s*1\b|0\.2860|0\.3530")
    hits = []
    for pkg in ("qfa", "hw", "export", "latency_tables"):
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(ROOT).as_posix()
            for i, line in enumerate(f.read_text().splitlines(), 1):
                if pattern.search(line) and rel != "qfa/nn/data.py" and not (rel == "qfa/core/space.py" and 'name="' in line):
                    hits.append(f"{rel}:{i}: {line.strip()}")
    assert hits == []
