"""Training: a short real run improves over chance; the shipped default model meets its bar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.model.data import iter_batches, open_dataset
from pipeline.model.train import TrainConfig, evaluate, train
from pipeline.model.zoo import DEFAULT_WEIGHTS, load_model
from pipeline.sources import ModelSpec
from resnetx.errors import BadInput
from tests.conftest import needs_fashion, write_idx

# Full Fashion-MNIST test accuracy of the shipped model is in its card; the 1,000-image sample
# is a different, smaller slice, so its floor sits a few points under.
SAMPLE_FLOOR = 89.0


def _tiny_fashion(root: Path) -> None:
    """A learnable fixture: each class is a bright bar at its own row band."""
    import numpy as np

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 600), ("t10k", 200)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, y in enumerate(labels):
            images[i, 2 + 2 * y : 4 + 2 * y, 4:24] = 255
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)


def test_short_training_beats_chance(tmp_path: Path) -> None:
    _tiny_fashion(tmp_path)
    out = tmp_path / "m.pt"
    result = train(TrainConfig(model="resnet20", data="fashion-mnist", data_dir=tmp_path, epochs=2, batch_size=32,
                               lr=0.05, flip=False, pad=0, out=out))  # crops would shift the bars across classes
    assert result.best_top1 > 40.0  # chance is 10%
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["best_top1"] == pytest.approx(result.best_top1, abs=0.01) and len(card["history"]) == 2
    model, info = load_model(ModelSpec("resnet20", weights=out))  # export --weights reads it
    assert info.in_chans == 1 and info.image_size == 28 and info.class_names[0] == "T-shirt/top"
    ds = open_dataset("fashion-mnist", split="test", data_dir=tmp_path)
    assert evaluate(model, ds, info.preprocess) == pytest.approx(result.best_top1, abs=0.01)


def test_an_image_folder_holds_out_a_tenth_across_its_classes_to_score(tmp_path: Path) -> None:
    """An image folder is one set of images read in class order. Its first --limit images would be its first
    classes, and scoring on its first images would score training images (of one class): a tenth of each class
    is held out instead, and --limit/--eval-limit draw across the classes."""
    import numpy as np
    from PIL import Image

    from pipeline.model.train import _split

    rng = np.random.default_rng(0)
    for k in range(10):
        (tmp_path / "f" / f"c{k}").mkdir(parents=True)
        for i in range(50):
            img = rng.integers(0, 60, (28, 28)).astype(np.uint8)
            img[2 + 2 * k : 4 + 2 * k, 4:24] = 255  # learnable: each class a bright bar at its own rows
            Image.fromarray(img).save(tmp_path / "f" / f"c{k}" / f"{i}.png")
    cfg = TrainConfig(model="resnet20", data=f"imagefolder:{tmp_path / 'f'}", epochs=3, batch_size=32, lr=0.05,
                      flip=False, pad=0, limit=400, eval_limit=20, out=tmp_path / "m.pt")
    ds = open_dataset(cfg.data)
    trained, scored, words = _split(cfg, ds, ds)
    assert not set(trained) & set(scored)
    assert np.bincount(ds.labels[trained]).tolist() == [40] * 10 and np.bincount(ds.labels[scored]).tolist() == [2] * 10
    assert words.endswith("50 of its 500 images held out of training, drawn seeded across its classes")
    result = train(cfg)
    assert result.best_top1 > 40.0  # chance is 10%; the first 400 (eight classes) scored on class 0's first 20: ~0
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["best_top1"] == pytest.approx(result.best_top1, abs=0.01)
    model, info = load_model(ModelSpec("resnet20", weights=tmp_path / "m.pt"))
    assert "held out of training" in info.reference_accuracy["dataset"] and info.reference_accuracy["images"] == 20


def test_train_rejects_default_and_bad_schedule(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="shipped model"):
        train(TrainConfig(model="default", out=tmp_path / "x.pt"))
    with pytest.raises(BadInput, match="schedule"):
        train(TrainConfig(schedule="linear", out=tmp_path / "x.pt"))
    with pytest.raises(BadInput, match="no train split"):  # it is test images: no scoring on what was learned
        train(TrainConfig(model="resnet20", data="sample", out=tmp_path / "x.pt"))


def test_shipped_model_accuracy_on_sample() -> None:
    assert DEFAULT_WEIGHTS.is_file()
    model, info = load_model(ModelSpec("default"))
    acc = evaluate(model, open_dataset("sample"), info.preprocess)
    assert acc >= SAMPLE_FLOOR
    card = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert card["command"].startswith("resnetx train") and card["best_top1"] >= 92.0


@needs_fashion
@pytest.mark.slow
def test_shipped_model_accuracy_full_test_set() -> None:
    model, info = load_model(ModelSpec("default"))
    ds = open_dataset("fashion-mnist", split="test")
    assert evaluate(model, ds, info.preprocess) >= 92.0
    assert sum(len(b.x) for b in iter_batches(ds, info.preprocess, 1000)) == 10000


def test_train_then_export_through_the_cli(tmp_path: Path) -> None:
    """The README's flow: resnetx train writes a checkpoint and its card; export --weights takes it."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    (tmp_path / "fm").mkdir()
    _tiny_fashion(tmp_path / "fm")
    ckpt = tmp_path / "m.pt"
    r = CliRunner().invoke(app, ["train", "--model", "resnet8", "--data-dir", str(tmp_path / "fm"), "--epochs", "2",
                                 "--batch-size", "32", "--limit", "256", "--eval-limit", "64", "--device", "cpu",
                                 "--out", str(ckpt)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "epoch   2:" in r.output and "best test top-1" in r.output and ckpt.is_file()
    card = json.loads(ckpt.with_suffix(".json").read_text())
    assert len(card["history"]) == 2 and card["config"]["limit"] == 256 and card["best_epoch"] in (1, 2)
    r = CliRunner().invoke(app, ["export", "--model", "resnet8", "--weights", str(ckpt), "--precision", "fp32",
                                 "--exporter", "legacy", "--reference-samples", "0", "--out", str(tmp_path / "a")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    model = json.loads((tmp_path / "a" / "manifest.json").read_text())["model"]
    assert model["arch"] == "resnet8" and (model["in_chans"], model["image_size"]) == (1, 28)
    assert model["weights"] == str(ckpt.resolve()) and model["class_names"][0] == "T-shirt/top"
