"""The architectures: torchvision's key names and outputs, CIFAR depths."""

from __future__ import annotations

import re

import pytest
import torch

from pipeline.model.resnet import IMAGENET_ARCHS
from pipeline.model.zoo import build_model, load_model
from pipeline.sources import ModelSpec
from resnetx.errors import BadInput

# torchvision's state_dict sizes (parameters + BN buffers incl. num_batches_tracked)
TORCHVISION_KEYS = {"resnet18": 122, "resnet34": 218, "resnet50": 320, "resnet101": 626, "resnet152": 932,
                    "resnext50_32x4d": 320, "wide_resnet50_2": 320}
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160, "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904,
                      "wide_resnet50_2": 68_883_240}


@pytest.mark.parametrize("arch", list(IMAGENET_ARCHS))
def test_imagenet_arch_matches_torchvision_layout(arch: str) -> None:
    m = build_model(arch, num_classes=1000, in_chans=3)
    sd = m.state_dict()
    assert len(sd) == TORCHVISION_KEYS[arch]
    assert sum(p.numel() for p in m.parameters()) == TORCHVISION_PARAMS[arch]
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.weight", "fc.weight", "fc.bias"):
        assert key in sd, key


def _torchvision():  # noqa: ANN202
    try:
        import torchvision.models
    except Exception as e:  # not installed, or built for another torch (as beside torch 2.13 here)
        pytest.skip(f"torchvision unavailable: {type(e).__name__}: {str(e)[:80]}")
    return torchvision.models


@pytest.mark.parametrize("arch", list(IMAGENET_ARCHS))
def test_same_outputs_as_torchvision(arch: str) -> None:
    """A torchvision model's own state_dict loads strictly and gives the same logits (runs where
    torchvision imports, e.g. the GPU machine; skipped here)."""
    tv = getattr(_torchvision(), arch)(weights=None, num_classes=10).eval()
    ours = build_model(arch, num_classes=10, in_chans=3).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", list(IMAGENET_ARCHS))
def test_imagenet_arch_runs_small(arch: str) -> None:
    m, info = load_model(ModelSpec(arch, num_classes=7, image_size=64))
    with torch.no_grad():
        y = m(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 7)
    assert info.family == "imagenet" and info.preprocess.image_size == 64


@pytest.mark.parametrize("arch", ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                                  "preact_resnet29", "preact_resnet56", "preact_resnet110", "preact_resnet164"])
def test_cifar_archs(arch: str) -> None:
    m, info = load_model(ModelSpec(arch, in_chans=1, image_size=28))
    depth = int(arch.rsplit("resnet", 1)[1])
    convs = sum(isinstance(x, torch.nn.Conv2d) and "downsample" not in n for n, x in m.named_modules())
    linear = sum(isinstance(x, torch.nn.Linear) for x in m.modules())
    assert convs + linear == depth  # weighted layers on the main path = the depth in the name
    with torch.no_grad():
        assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("arch,rule", [("resnet24", "6n+2"), ("resnet19", "6n+2"), ("resnet2", "6n+2"),
                                       ("preact_resnet30", "9n+2")])
def test_cifar_depth_must_fit(arch: str, rule: str) -> None:
    with pytest.raises(BadInput, match=re.escape(rule)):
        build_model(arch, num_classes=10, in_chans=3)
