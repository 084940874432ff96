"""Image data: Fashion-MNIST (Debian's ``dataset-fashion-mnist``), ImageFolder trees, splits.

Augmentation randomness is a pure function of (seed, epoch, sample index), so a run resumed
mid-epoch, or split over any number of workers and processes, sees exactly the same images.
"""
from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["FMNIST_DIR", "DataError", "load_fashion_mnist", "resize", "FMNIST_MEAN", "FMNIST_STD",
           "FMNIST_LABELS", "to_tensor", "ImageSet", "FashionMNIST", "ImageFolder", "holdout_split",
           "make_datasets", "HOLDOUT_SEED", "scan_folder", "data_facts", "space_for_data", "skipped_note"]

HOLDOUT_SEED = 2147483647  # OFA's seed for its held-out split of the training set

FMNIST_DIR = Path(os.environ.get("QFA_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
FMNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                 "Bag", "Ankle boot")


class DataError(RuntimeError):
    """Dataset files missing or unreadable."""


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).exists():
            return root / name
    raise DataError(f"Fashion-MNIST file {stem}[.gz] not found in {root}: install it with "
                    "'apt-get install dataset-fashion-mnist' or set QFA_FMNIST_DIR to a folder holding it")


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the 'train' (60k) or 't10k' (10k) split."""
    if split not in ("train", "t10k", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = "train" if split == "train" else "t10k"
    root = Path(root) if root else FMNIST_DIR
    images = _read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    return images, labels


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) grey images -> normalised float (N, 1, H, W)."""
    x = torch.from_numpy(np.array(images, copy=True)).float().div_(255.0).unsqueeze(1)
    return (x - FMNIST_MEAN) / FMNIST_STD


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of an NCHW batch to ``resolution`` (no-op when already that size)."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


def holdout_split(n: int, fraction: float = 0.1, seed: int = HOLDOUT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (train, held-out) index split of a training set: the held-out part serves
    calibration checks and predictor labels; the test set is kept for final reporting."""
    perm = np.random.default_rng(seed).permutation(n)
    k = int(round(n * fraction))
    return np.sort(perm[k:]), np.sort(perm[:k])


class ImageSet(Dataset):
    """Base: a subset of an image collection, optionally augmented, normalised CHW float out."""

    labels: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(self, indices: np.ndarray | None, augment: bool, seed: int) -> None:
        self.indices = indices
        self.augment, self.seed, self.epoch = augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(i)])

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, positions: np.ndarray, augment: bool | None = None) -> "ImageSet":
        import copy
        other = copy.copy(self)
        other.indices = self.indices[positions]
        if augment is not None:
            other.augment = augment
        return other


class FashionMNIST(ImageSet):
    """Fashion-MNIST, 28x28 grey; training augmentation: 2-px padded random crop + flip."""

    labels = FMNIST_LABELS
    mean, std = (FMNIST_MEAN,), (FMNIST_STD,)
    resolution = 28

    def __init__(self, split: str = "train", augment: bool = False, seed: int = 0,
                 root: str | os.PathLike | None = None) -> None:
        self.images, self.targets = load_fashion_mnist(split, root)
        super().__init__(np.arange(len(self.images)), augment, seed)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        i = self.indices[k]
        img = self.images[i]
        if self.augment:
            rng = self._rng(i)
            dy, dx = rng.integers(0, 5, size=2)
            img = np.pad(img, 2)[dy:dy + 28, dx:dx + 28]
            if rng.random() < 0.5:
                img = img[:, ::-1]
        return to_tensor(img[None])[0], int(self.targets[i])


GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
STATS_IMAGES = 2000  # training images the normalisation statistics are computed from
VERIFY_LIMIT = 50_000  # trees up to this many files are decoded-checked when scanned; larger: headers only


@functools.lru_cache(maxsize=8)
def _scan(root: str, mtime_ns: int) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...], int, int, str]:
    """(class names, (file, class index) pairs, channels the images need (1 grey, 3 colour),
    files skipped as unreadable, the first of them) of ``root/<class>/<image>``. Every file's
    header is read, and up to VERIFY_LIMIT files are verified too (cached until the folder
    changes)."""
    from PIL import Image, UnidentifiedImageError
    base = Path(root)
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root} holds no class folders (expected {root}/<class>/<image>)")
    listed = [[f for f in sorted((base / c).iterdir()) if f.is_file() and not f.name.startswith(".")] for c in classes]
    verify = sum(map(len, listed)) <= VERIFY_LIMIT
    files, channels, skipped, first_bad = [], 1, 0, ""
    for ci, c in enumerate(classes):
        n_before = len(files)
        for f in listed[ci]:
            try:
                with Image.open(f) as img:
                    mode = img.mode
                    if verify:
                        img.verify()
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                skipped += 1
                first_bad = first_bad or str(f)
                continue
            files.append((str(f), ci))
            channels = channels if mode in GREY_MODES else 3
        if len(files) == n_before:
            raise DataError(f"class folder {base / c} holds no readable images")
    return tuple(classes), tuple(files), channels, skipped, first_bad


def scan_folder(root: str | os.PathLike) -> dict:
    """What an ImageFolder tree holds: ``labels`` (class folder names), ``files``, ``channels``
    (1 when every image is grey, else 3) and ``skipped`` (files that are not readable images)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    stamp = max([root.stat().st_mtime_ns] + [d.stat().st_mtime_ns for d in root.iterdir() if d.is_dir()])
    labels, files, channels, skipped, first_bad = _scan(str(root), stamp)
    return {"labels": labels, "files": files, "channels": channels, "skipped": skipped, "first_skipped": first_bad}


class ImageFolder(ImageSet):
    """``root/<class>/<image>`` (ImageNet layout) of any image size, read grey (``channels=1``)
    or RGB (3). Training: random-resized crop (scale 0.08-1) + flip; evaluation: resize to
    1.14x then centre crop; both at ``resolution``. Files that are not readable images are
    skipped (``skipped`` counts them); ``labels`` orders the classes (another split's order
    when given, so that its class indices mean the same)."""

    def __init__(self, root: str | os.PathLike, resolution: int, augment: bool = False, seed: int = 0,
                 channels: int = 3, labels: tuple[str, ...] | None = None) -> None:
        found = scan_folder(root)
        self.labels = tuple(labels or found["labels"])
        unknown = sorted(set(found["labels"]) - set(self.labels))
        if unknown:
            raise DataError(f"{root} has classes the training split lacks: {', '.join(unknown[:5])}")
        index = {c: i for i, c in enumerate(self.labels)}
        self.files = [f for f, _ in found["files"]]
        self.targets = np.asarray([index[found["labels"][ci]] for _, ci in found["files"]], dtype=np.int64)
        self.skipped, self.first_skipped = found["skipped"], found["first_skipped"]
        self.resolution, self.channels = resolution, channels
        self.mean, self.std = (0.5,) * channels, (0.5,) * channels  # make_datasets sets the training split's
        super().__init__(np.arange(len(self.files)), augment, seed)

    def pixels(self, k: int) -> torch.Tensor:
        """Image ``k`` transformed, in [0, 1], (C, r, r), before normalisation."""
        from PIL import Image
        i = self.indices[k]
        try:
            img = Image.open(self.files[i]).convert("L" if self.channels == 1 else "RGB")
        except OSError as e:
            raise DataError(f"cannot read image {self.files[i]}: {str(e).splitlines()[0][:100]}") from None
        r = self.resolution
        w, h = img.size
        if self.augment:
            rng = self._rng(i)
            for _ in range(10):
                area = w * h * rng.uniform(0.08, 1.0)
                ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
                cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
                if 0 < cw <= w and 0 < ch <= h:
                    x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
                    break
            else:
                cw = ch = min(w, h)
                x0, y0 = (w - cw) // 2, (h - ch) // 2
            img = img.resize((r, r), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            s = int(round(r * 1.14))
            scale = s / min(w, h)
            img = img.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
            w2, h2 = img.size
            x0, y0 = (w2 - r) // 2, (h2 - r) // 2
            img = img.crop((x0, y0, x0 + r, y0 + r))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
        return x[None] if x.ndim == 2 else x.permute(2, 0, 1)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        c = self.channels
        x = self.pixels(k)
        return (x - torch.tensor(self.mean).view(c, 1, 1)) / torch.tensor(self.std).view(c, 1, 1), int(self.targets[self.indices[k]])

    def compute_stats(self, n: int = STATS_IMAGES) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std over (up to) ``n`` of these images, as evaluation sees them."""
        pick = np.random.default_rng(0).permutation(len(self))[:n]
        plain = self.subset(np.arange(len(self)), augment=False)
        x = torch.stack([plain.pixels(int(k)) for k in pick])
        return tuple(float(v) for v in x.mean((0, 2, 3))), tuple(max(float(v), 1e-3) for v in x.std((0, 2, 3)))


def skipped_note(sets: dict[str, ImageSet]) -> str:
    """One line on the files of ``make_datasets``' splits that were skipped as unreadable ('' if none)."""
    seen = {id(getattr(d, "files", None)): d for d in sets.values() if getattr(d, "skipped", 0)}
    n = sum(d.skipped for d in seen.values())
    first = next((d.first_skipped for d in seen.values()), "")
    return f"skipped {n} file(s) that are not readable images (first: {first})" if n else ""


def data_facts(data: str | None) -> dict:
    """``{"channels", "num_classes"}`` of a dataset: what a space fitted to it takes."""
    if data in (None, "", "fmnist"):
        return {"channels": 1, "num_classes": len(FMNIST_LABELS)}
    found = scan_folder(_train_root(Path(data)))
    return {"channels": found["channels"], "num_classes": len(found["labels"])}


def _train_root(root: Path) -> Path:
    """An ImageFolder root's training classes: ``root/train`` if present, else ``root`` itself."""
    return root / "train" if (root / "train").is_dir() else root


def space_for_data(space, data: str | None, in_channels: int | None = None, num_classes: int | None = None,
                   resolutions: list[int] | None = None):
    """``space`` fitted to ``data``: each of ``in_channels`` / ``num_classes`` / ``resolutions``
    as given, else as the data says (its class folders and image modes). A class count the data
    contradicts is a DataError."""
    facts = data_facts(data)
    if num_classes is not None and num_classes != facts["num_classes"]:
        raise DataError(f"num_classes={num_classes}, but {data or 'Fashion-MNIST'} has {facts['num_classes']} classes")
    return space.fit_data(in_channels or facts["channels"], facts["num_classes"], resolutions)


def make_datasets(data: str | None, resolution: int, seed: int = 0, holdout_fraction: float = 0.1,
                  space=None) -> dict[str, ImageSet]:
    """{'train', 'holdout', 'test'} for Fashion-MNIST (``data`` None or 'fmnist') or an
    ImageFolder root (``root/train`` and ``root/val``; without ``val/`` the test split is carved
    from train, and a root that holds class folders itself is all train). 'holdout' is carved
    from train. Images are read with ``space``'s input channels, whose class count must be the
    data's; an ImageFolder is normalised with its training split's statistics."""
    if data in (None, "", "fmnist"):
        if space is not None and (space.in_channels, space.num_classes) != (1, len(FMNIST_LABELS)):
            raise DataError(f"Fashion-MNIST is 1-channel with {len(FMNIST_LABELS)} classes; space {space.name!r} "
                            f"takes {space.in_channels} channels and {space.num_classes} classes (give its --data)")
        train = FashionMNIST("train", augment=True, seed=seed)
        test = FashionMNIST("test")
        tr, ho = holdout_split(len(train), holdout_fraction)
        return {"train": train.subset(tr), "holdout": train.subset(ho, augment=False), "test": test}
    root = Path(data)
    channels = space.in_channels if space is not None else scan_folder(_train_root(root))["channels"]
    train = ImageFolder(_train_root(root), resolution, augment=True, seed=seed, channels=channels)
    if space is not None and len(train.labels) != space.num_classes:
        raise DataError(f"{data} has {len(train.labels)} classes; space {space.name!r} has {space.num_classes}")
    if (root / "val").is_dir():
        test = ImageFolder(root / "val", resolution, channels=channels, labels=train.labels)
        rest = np.arange(len(train))
    else:  # no separate test split: carve one from train (fixed, apart from the held-out one)
        rest, te = holdout_split(len(train), 0.1, seed=HOLDOUT_SEED - 1)
        test = train.subset(te, augment=False)
    tr, ho = holdout_split(len(rest), holdout_fraction)
    train_set = train.subset(rest[tr])
    mean, std = train_set.compute_stats()
    for d in (train, test, train_set):
        d.mean, d.std = mean, std
    return {"train": train_set, "holdout": train.subset(rest[ho], augment=False), "test": test}
