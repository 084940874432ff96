"""Image data: Fashion-MNIST (Debian's ``dataset-fashion-mnist``), ImageFolder trees, splits.

Augmentation randomness is a pure function of (seed, epoch, sample index), so a run resumed
mid-epoch, or split over any number of workers and processes, sees exactly the same images.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["FMNIST_DIR", "DataError", "load_fashion_mnist", "resize", "FMNIST_MEAN", "FMNIST_STD",
           "FMNIST_LABELS", "to_tensor", "ImageSet", "FashionMNIST", "ImageFolder", "holdout_split",
           "make_datasets", "HOLDOUT_SEED"]

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


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageFolder(ImageSet):
    """``root/<class>/<image>`` (ImageNet layout). Training: random-resized crop (scale
    0.08-1) + flip; evaluation: resize to 1.14x then centre crop; both at ``resolution``."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD
    EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG")

    def __init__(self, root: str | os.PathLike, resolution: int, augment: bool = False, seed: int = 0) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"image folder not found: {root}")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not classes:
            raise DataError(f"{root} holds no class folders (expected root/<class>/<image>)")
        self.labels = tuple(classes)
        self.files, targets = [], []
        for ci, c in enumerate(classes):
            for f in sorted((root / c).iterdir()):
                if f.suffix in self.EXTS:
                    self.files.append(f)
                    targets.append(ci)
        if not self.files:
            raise DataError(f"{root} holds no images ({', '.join(self.EXTS)})")
        self.targets = np.asarray(targets, dtype=np.int64)
        self.resolution = resolution
        super().__init__(np.arange(len(self.files)), augment, seed)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        from PIL import Image
        i = self.indices[k]
        img = Image.open(self.files[i]).convert("RGB")
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
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std, int(self.targets[i])


def make_datasets(data: str | None, resolution: int, seed: int = 0,
                  holdout_fraction: float = 0.1) -> dict[str, ImageSet]:
    """{'train', 'holdout', 'test'} for Fashion-MNIST (``data`` None or 'fmnist') or an
    ImageFolder root holding ``train/`` and ``val/``. 'holdout' is carved from train."""
    if data in (None, "", "fmnist"):
        train = FashionMNIST("train", augment=True, seed=seed)
        test = FashionMNIST("test")
    else:
        root = Path(data)
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            raise DataError(f"{root}: expected an ImageFolder root with train/ and val/ sub-folders")
        train = ImageFolder(root / "train", resolution, augment=True, seed=seed)
        test = ImageFolder(root / "val", resolution)
    tr, ho = holdout_split(len(train), holdout_fraction)
    return {"train": train.subset(tr), "holdout": train.subset(ho, augment=False), "test": test}
