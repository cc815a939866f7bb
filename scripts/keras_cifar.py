"""Keras's CIFAR-10 ResNet example, trained briefly on Fashion-MNIST turned to 32x32 RGB, as docs/keras.md takes it
through resnetx: the images scaled to [0, 1] less their per-pixel mean, the model saved as .keras and .h5, the mean
image as mean.npy, and image folders (train/ and val/, one folder per class) of the same 32x32 RGB images.

    python scripts/keras_cifar.py --version 1 --depth 20 --epochs 3 --out /tmp/kcifar20
    python scripts/keras_cifar.py --version 2 --depth 29 --epochs 3 --out /tmp/kcifar29
    python scripts/keras_cifar.py --depth 8 --data sample --epochs 8 --out tests/data/keras_r8 --no-folders

Keras runs on the torch backend (KERAS_BACKEND=torch): no TensorFlow. Pretrained Keras weights download from the
internet, so these are trained here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.model.data import FASHION_MNIST_CLASSES, open_dataset  # noqa: E402
from tests.keras_models import fashion_rgb32, resnet_v1, resnet_v2  # noqa: E402


def _data(name: str, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, labels, val images, labels) as 32x32 RGB uint8: Fashion-MNIST's splits, or the bundled
    sample's first 800 / last 200."""
    if name == "sample":
        ds = open_dataset("sample")
        x, y = fashion_rgb32(ds.raw(np.arange(len(ds)))), ds.labels.astype(np.int64)
        return x[:800], y[:800], x[800:], y[800:]
    train, test = open_dataset(name, split="train"), open_dataset(name, split="test")
    n = min(limit, len(train))
    idx = np.random.default_rng(0).permutation(len(train))[:n]
    return (fashion_rgb32(train.raw(np.sort(idx))), train.labels[np.sort(idx)].astype(np.int64),
            fashion_rgb32(test.raw(np.arange(2000))), test.labels[:2000].astype(np.int64))


def _folders(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    from PIL import Image

    for k, name in enumerate(FASHION_MNIST_CLASSES):
        d = root / f"{k}_{name.replace('/', '-').replace(' ', '_')}"
        d.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(y == k):
            Image.fromarray(x[i]).save(d / f"{i:05d}.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", type=int, choices=(1, 2), default=1)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--data", default="fashion-mnist", help="fashion-mnist, or sample (the bundled 1000 images)")
    ap.add_argument("--limit", type=int, default=10000, help="training images (fashion-mnist)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-folders", action="store_true", help="no image folders (the tests' model)")
    a = ap.parse_args()
    import keras

    keras.utils.set_random_seed(0)
    xt, yt, xv, yv = _data(a.data, a.limit)
    mean = (xt.astype(np.float32) / 255.0).mean(0)  # the example's per-pixel mean, HWC
    model = (resnet_v1 if a.version == 1 else resnet_v2)(depth=a.depth)
    for layer in model.layers:  # a short run: batch-norm statistics that settle in a few hundred steps
        if hasattr(layer, "momentum"):
            layer.momentum = 0.9
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    start = time.perf_counter()
    model.fit(xt / 255.0 - mean, yt, epochs=a.epochs, batch_size=32, verbose=2)
    acc = float((model.predict(xv / 255.0 - mean, verbose=0).argmax(1) == yv).mean())
    print(f"trained {model.name} on {len(xt)} images in {time.perf_counter() - start:.0f} s; top-1 {100 * acc:.2f}% on "
          f"{len(xv)} held-out images (x / 255 - mean image)")
    a.out.mkdir(parents=True, exist_ok=True)
    fresh = (resnet_v1 if a.version == 1 else resnet_v2)(depth=a.depth)  # never compiled: no optimizer state saved
    fresh.set_weights(model.get_weights())
    fresh.save(a.out / "model.keras")
    fresh.save(a.out / "model.h5")
    np.save(a.out / "mean.npy", mean.astype(np.float32))
    (a.out / "classes.txt").write_text("\n".join(FASHION_MNIST_CLASSES) + "\n")
    if not a.no_folders:
        _folders(a.out / "train", xt, yt)
        _folders(a.out / "val", xv, yv)
    print(f"wrote {a.out}/model.keras, model.h5, mean.npy, classes.txt" + ("" if a.no_folders else ", train/, val/"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
