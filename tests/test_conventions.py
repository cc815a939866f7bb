"""The preprocessing check, on a model trained here whose classes are told apart by colour: declared with the channel
order flipped, or with raw 0-255 pixels instead of [0, 1] ones, verify names the flag that fits; declared the way it
was trained, it says nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.model.conventions import conventions
from pipeline.model.preprocess import MODES, Preprocess
from tests.test_cli import invoke

COLOURS = ((200, 40, 40), (40, 40, 200), (40, 200, 40), (150, 150, 150))  # red, blue, green, grey


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 16x16 RGB images per colour class: the class's colour, noise, a random bright square."""
    rng = np.random.default_rng(seed)
    x, y = [], []
    for k, colour in enumerate(COLOURS):
        base = np.asarray(colour, np.float32) + rng.normal(0, 25, (n, 16, 16, 3))
        for img in base:
            r, c = rng.integers(0, 10, 2)
            img[r : r + 6, c : c + 6] += 40
        x.append(np.clip(base, 0, 255).astype(np.uint8))
        y += [k] * n
    return np.concatenate(x), np.asarray(y)


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint of a CIFAR ResNet-8 trained on [0, 1] RGB pixels, an image folder of its classes)."""
    from PIL import Image

    from pipeline.model.zoo import build_model, save_checkpoint

    root = tmp_path_factory.mktemp("colours")
    pre = Preprocess(16, 16, 3, mean=(0.0,) * 3, std=(1.0,) * 3)
    x, y = _images(300, 0)
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=4, in_chans=3)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    xt, yt = torch.from_numpy(pre(x)), torch.from_numpy(y)
    model.train()
    for _ in range(3):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    ckpt = root / "colours.pt"
    save_checkpoint(ckpt, model, {"arch": "resnet8", "num_classes": 4, "in_chans": 3, "image_size": 16,
                                  "preprocess": pre.to_dict(), "class_names": [f"c{k}" for k in range(4)]})
    xv, yv = _images(40, 1)
    for i, (img, k) in enumerate(zip(xv, yv, strict=True)):
        (root / "val" / f"c{k}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "val" / f"c{k}" / f"{i:03d}.png")
    return ckpt, root / "val"


@pytest.mark.parametrize(("declared", "named"), [
    (("--channel-order", "bgr"), "--channel-order rgb"),
    (("--mean", "0", "--std", f"{1 / 255:.9g}"), "--mean 0 --std 1"),
    ((), None),
])
def test_verify_names_the_convention_the_model_was_trained_with(colour_model: tuple[Path, Path], declared: tuple,
                                                                 named: str | None, tmp_path: Path) -> None:
    ckpt, val = colour_model
    out = tmp_path / "f"
    r = invoke("export", "--model", "resnet8", "--weights", ckpt, *declared, "--out", out, "--exporter", "legacy",
               "--reference-samples", "0")
    assert r.exit_code == 0, r.output
    r = invoke("verify", out, "--data", f"imagefolder:{val}", "--samples", "164")
    text = " ".join(r.output.split())
    if named is None:
        assert r.exit_code == 0 and "preprocessing check" not in text, text
    else:
        assert f"with {named}" in text and "preprocessing check: top-1" in text, text
        declared_pct = float(text.split("preprocessing check: top-1 ")[1].split("%")[0])
        assert declared_pct < 70  # flipped red/blue, or inputs 255 times too large: far off


def test_the_conventions_tried_are_the_common_mistakes_and_never_the_declared_one() -> None:
    caffe = Preprocess(224, 256, 3, MODES["caffe"]["mean"], MODES["caffe"]["std"], "bgr", 1.0, "caffe")
    flags = [c.flag for c in conventions(caffe)]
    assert flags[0] == "--channel-order rgb" and "--preprocess caffe" not in flags and flags[1].startswith("--mean 0")
    assert {"--preprocess tf", "--preprocess torch"} <= set(flags)
    grey = Preprocess(28, 28, 1, (0.5,), (0.5,))
    assert [c.flag.split(" (")[0] for c in conventions(grey)] == ["--mean 0 --std 1", f"--mean 0 --std {1 / 255:.9g}"]


def test_export_runs_the_check_on_its_accuracy_data(colour_model: tuple[Path, Path], tmp_path: Path) -> None:
    ckpt, val = colour_model
    r = invoke("export", "--model", "resnet8", "--weights", ckpt, "--channel-order", "bgr", "--out", tmp_path / "f",
               "--exporter", "legacy", "--reference-samples", "0", "--accuracy-data", f"imagefolder:{val}")
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "preprocessing check" in text and "re-export with --channel-order rgb" in text, text
