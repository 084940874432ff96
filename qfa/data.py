"""Image data: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` and resizing helpers."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FMNIST_DIR", "DataError", "load_fashion_mnist", "resize", "FMNIST_MEAN", "FMNIST_STD",
           "FMNIST_LABELS", "to_tensor"]

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
