import socket

import numpy as np
import pytest
import torch

from qfa.nn.data import load_fashion_mnist, to_tensor
from qfa.nn.elastic.ops import ElasticBatchNorm2d


@pytest.fixture(scope="session")
def fmnist_train() -> torch.Tensor:
    """2,048 real Fashion-MNIST training images, normalised, (N, 1, 28, 28)."""
    images, _ = load_fashion_mnist("train")
    idx = np.random.default_rng(0).permutation(len(images))[:2048]
    return to_tensor(images[idx])


def perturb(net: torch.nn.Module, seed: int = 0) -> None:
    """Move every quantizer and BN parameter away from its initial value, as training would,
    so that a test sees whether each one is carried over."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("theta", "offset"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif leaf == "step":
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
            elif ".bn." in name or name.startswith("transform") or ".transform_" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
            elif leaf == "bias":
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        net.classifier.weight.normal_(0, 0.2, generator=g)


def boost_bn(net: torch.nn.Module, share: float = 0.05, gain: float = 10.0, seed: int = 3) -> None:
    """Multiply the gain of a random share of BatchNorm channels: folded weight scales beyond
    anything training leaves (x10 stays within what the runtimes accept; x100 does not)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ElasticBatchNorm2d):
                m.weight[torch.rand(m.weight.shape, generator=g) < share] *= gain


@pytest.fixture(scope="session")
def block_cache(tmp_path_factory):
    """One block-model cache ($QFA_CACHE) for every test that profiles: the r24 block models are
    converted once per test run, not once per test."""
    return tmp_path_factory.mktemp("qfa-cache")


def free_port() -> int:
    """A TCP port nothing listens on now (for torchrun's rendezvous, sshd)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
