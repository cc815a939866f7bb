"""Model zoo: architectures, torchvision key names, checkpoint formats, depth validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pipeline.models import (
    IMAGENET_ARCHS,
    ModelSpec,
    build_model,
    known_models,
    load_model,
)
from runtimes.errors import BadInput

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


@pytest.mark.parametrize("arch,rule", [("resnet24", "6n+2"), ("resnet19", "6n+2"), ("resnet2", "6n+2"), ("preact_resnet30", "9n+2")])
def test_cifar_depth_must_fit(arch: str, rule: str) -> None:
    with pytest.raises(BadInput, match=re.escape(rule)):
        build_model(arch, num_classes=10, in_chans=3)


def test_unknown_model_lists_known() -> None:
    with pytest.raises(BadInput, match="unknown model 'vgg16'; known: default, resnet18"):
        load_model(ModelSpec("vgg16"))
    assert "wide_resnet50_2" in known_models()


def test_random_init_is_seeded() -> None:
    a, _ = load_model(ModelSpec("resnet20"))
    b, _ = load_model(ModelSpec("resnet20"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _ref() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    m = build_model("resnet18", num_classes=10, in_chans=3).eval()
    for mod in m.modules():  # non-trivial BN statistics so a wrong load would show
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return m, x, m(x)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "model_state_dict", "module_prefix", "torchscript"])
def test_checkpoint_formats_load_strictly(tmp_path: Path, wrap: str) -> None:
    m, x, y = _ref()
    sd = m.state_dict()
    path = tmp_path / "ckpt.pth"
    if wrap == "plain":
        torch.save(sd, path)
    elif wrap == "module_prefix":
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    elif wrap == "torchscript":
        torch.jit.save(torch.jit.trace(m, x), str(path))
    else:
        torch.save({wrap: sd, "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    loaded, info = load_model(ModelSpec("resnet18", weights=path, image_size=64))
    assert info.num_classes == 10  # inferred from fc.weight
    with torch.no_grad():
        got = loaded(x)
    assert float((got - y).norm() / y.norm()) <= 1e-5
    assert info.weights_sha256 and info.trained


def test_key_mismatch_names_keys(tmp_path: Path) -> None:
    m, _, _ = _ref()
    sd = m.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["layer1.0.conv1.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(BadInput, match=r"1 missing key\(s\) \[layer1.0.conv1.weight\].*1 unexpected key\(s\) \[extra.weight\]"):
        load_model(ModelSpec("resnet18", weights=tmp_path / "bad.pth"))


def test_checkpoint_for_other_arch(tmp_path: Path) -> None:
    torch.save(build_model("resnet20", num_classes=10, in_chans=3).state_dict(), tmp_path / "r20.pth")
    with pytest.raises(BadInput, match="does not fit this model"):
        load_model(ModelSpec("resnet18", weights=tmp_path / "r20.pth"))


def test_class_count_mismatch(tmp_path: Path) -> None:
    torch.save(build_model("resnet20", num_classes=10, in_chans=3).state_dict(), tmp_path / "r20.pth")
    with pytest.raises(BadInput, match="other shapes.*fc.weight"):
        load_model(ModelSpec("resnet20", weights=tmp_path / "r20.pth", num_classes=100))


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # unpickling would run a shell command that creates the marker
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": Evil()}, path)
    with pytest.raises(BadInput, match="could run code; refused"):
        load_model(ModelSpec("resnet20", weights=path))
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(BadInput, match="bad.pth"):
        load_model(ModelSpec("resnet20", weights=path))


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        load_model(ModelSpec("resnet20", weights=tmp_path / "nope.pth"))


def test_default_model_is_trained_fashion_resnet20() -> None:
    m, info = load_model(ModelSpec("default"))
    assert info.arch == "resnet20" and info.in_chans == 1 and info.image_size == 28 and info.num_classes == 10
    assert info.trained and info.class_names and info.class_names[0] == "T-shirt/top"
    with pytest.raises(BadInput, match="--model default takes no"):
        load_model(ModelSpec("default", num_classes=3))


def test_checkpoint_made_for_another_arch_says_which(tmp_path: Path) -> None:
    from pipeline.models import DEFAULT_WEIGHTS

    with pytest.raises(BadInput, match="was saved for resnet20, not resnet56; use --model resnet20"):
        load_model(ModelSpec("resnet56", weights=DEFAULT_WEIGHTS))
