"""Dataset readers on fixture files made here, the bundled sample, and the one preprocessing spec."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.model.data import Preprocess, iter_batches, open_dataset, read_idx
from resnetx.errors import BadInput
from tests.conftest import needs_fashion, write_idx


def _fake_fashion(root: Path, n: int = 50, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    sfx = ".gz" if gz else ""
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte{sfx}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{sfx}", labels)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    images, labels = _fake_fashion(tmp_path, gz=gz)
    ds = open_dataset("fashion-mnist", split="test", data_dir=tmp_path)
    assert len(ds) == 50 and ds.class_names and ds.class_names[9] == "Ankle boot"
    np.testing.assert_array_equal(ds.raw(np.arange(5)), images[:5])
    np.testing.assert_array_equal(ds.labels, labels)


def test_idx_truncated(tmp_path: Path) -> None:
    _fake_fashion(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(BadInput, match="truncated or corrupt"):
        read_idx(p)


def test_idx_mismatched_counts(tmp_path: Path) -> None:
    _fake_fashion(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(BadInput, match="do not match"):
        open_dataset("fashion-mnist", data_dir=tmp_path)


def test_missing_dataset_dir_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="apt-get install dataset-fashion-mnist"):
        open_dataset("fashion-mnist", data_dir=tmp_path / "nope")


def _fake_cifar(root: Path) -> None:
    rng = np.random.default_rng(1)
    for name, n in [*[(f"data_batch_{i}", 20) for i in range(1, 6)], ("test_batch", 30)]:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(root / name, "wb") as f:
            pickle.dump(d, f)


def test_cifar10_batches(tmp_path: Path) -> None:
    _fake_cifar(tmp_path)
    train = open_dataset("cifar10", split="train", data_dir=tmp_path)
    test = open_dataset("cifar10", split="test", data_dir=tmp_path)
    assert len(train) == 100 and len(test) == 30
    assert test.raw(np.arange(2)).shape == (2, 32, 32, 3)
    assert test.class_names and test.class_names[0] == "airplane"


def test_cifar10_pickle_with_code_is_refused(tmp_path: Path) -> None:
    _fake_cifar(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(BadInput, match="not a CIFAR-10 python batch"):
        open_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()


def test_cifar10_missing_files(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="lacks CIFAR-10 file"):
        open_dataset("cifar10", split="train", data_dir=tmp_path)


def test_imagefolder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(2)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            img = rng.integers(0, 256, (40 + i * 10, 60, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / cls / f"{i}.png")
    pre = Preprocess(image_size=32, resize=36, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    ds = open_dataset(f"imagefolder:{tmp_path}", preprocess=pre)
    assert len(ds) == 6 and ds.class_names == ("cat", "dog")
    b = next(iter_batches(ds, pre, 4))
    assert b.x.shape == (4, 3, 32, 32) and b.x.dtype == np.float32
    assert list(b.y) == [0, 0, 0, 1]


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="holds neither class folders nor images"):
        open_dataset(f"imagefolder:{tmp_path}")
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat.png")  # unlabelled: no class folders
    flat = open_dataset(f"imagefolder:{tmp_path}")
    assert len(flat) == 1 and flat.labels is None and flat.class_names is None
    (tmp_path / "flat.png").unlink()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"not a jpeg")
    ds = open_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(BadInput, match="cannot be decoded"):
        ds.raw(np.arange(1))
    from PIL import Image

    (tmp_path / "a" / "x.jpg").unlink()
    for i, size in enumerate((28, 32)):  # read at their own size (training): one error, not numpy's
        Image.fromarray(np.zeros((size, size), np.uint8)).save(tmp_path / "a" / f"{i}.png")
    with pytest.raises(BadInput, match=r"differ in size \(28x28x3, 32x32x3\).*resize them"):
        open_dataset(f"imagefolder:{tmp_path}").raw(np.arange(2))


def test_sample_is_bundled_and_balanced() -> None:
    ds = open_dataset("sample")
    assert len(ds) == 1000
    assert np.bincount(ds.labels, minlength=10).tolist() == [100] * 10
    assert ds.raw(np.arange(3)).dtype == np.uint8


def test_synthetic_is_seeded_and_unlabelled() -> None:
    pre = Preprocess(image_size=16, resize=16, channels=3, mean=(0.0,) * 3, std=(1.0,) * 3)
    a = open_dataset("synthetic", preprocess=pre)
    b = open_dataset("synthetic", preprocess=pre)
    assert a.labels is None
    np.testing.assert_array_equal(a.raw(np.arange(4)), b.raw(np.arange(4)))


def test_preprocess_grayscale_to_three_channels() -> None:
    pre = Preprocess(image_size=28, resize=28, channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    img = np.full((2, 28, 28), 255, np.uint8)
    x = pre(img)
    assert x.shape == (2, 3, 28, 28)
    np.testing.assert_allclose(x, 1.0)


def test_preprocess_resize_center_crop() -> None:
    pre = Preprocess(image_size=32, resize=36, channels=1, mean=(0.0,), std=(1.0,))
    x = pre(np.zeros((1, 28, 28), np.uint8))
    assert x.shape == (1, 1, 32, 32)


def test_unknown_dataset() -> None:
    with pytest.raises(BadInput, match="unknown dataset 'mnist'"):
        open_dataset("mnist")


@needs_fashion
def test_real_fashion_mnist() -> None:
    ds = open_dataset("fashion-mnist", split="train")
    assert len(ds) == 60000
    assert len(open_dataset("fashion-mnist", split="test")) == 10000


def test_label_order_note_only_when_names_differ() -> None:
    from pipeline.model.data import FASHION_MNIST_CLASSES, label_order_note

    assert label_order_note("sample", FASHION_MNIST_CLASSES, FASHION_MNIST_CLASSES) is None
    assert label_order_note("x", ("cat", "dog"), None) is None  # a model without names: nothing to compare
    assert label_order_note("x", ("Cat", "Dog"), ("cat", "dog")) is None
    note = label_order_note("imagefolder:d", ("00_cat", "01_dog"), ("cat", "dog"))
    assert note and "00_cat -> cat" in note and "by position" in note
