"""keras.applications.ResNet50 at 224x224 through resnetx beside Keras's own pipeline, in one run: the model (random
weights, none can be downloaded here) saved as .keras, image files written at the model's size, then `resnetx export
--keras --preprocess caffe` (fp32, fp16, int8), `resnetx verify`, and `resnetx predict --json` of each graph beside
Keras's `preprocess_input(x, mode="caffe")` + `predict` on the same files. Prints rel. L2 and top-1 agreement.

    python scripts/keras_resnet50.py --images /tmp/kcifar20/val --count 300 --out /tmp/kr50

The images are written at 224x224 so that neither side resizes (Keras's load_img scales with nearest-neighbour,
resnetx with bilinear). Keras runs on the torch backend (KERAS_BACKEND=torch): no TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")
ROOT = Path(__file__).resolve().parents[1]
SIZE = 224


def _images(src: Path, count: int, out: Path) -> list[Path]:
    """The first `count` images under src (sorted, across its class folders evenly), written at SIZE as PNG."""
    from PIL import Image

    classes = sorted(p for p in src.iterdir() if p.is_dir()) or [src]
    per = -(-count // len(classes))
    picked = [f for c in classes for f in sorted(c.glob("*.png"))[:per]][:count]
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, f in enumerate(picked):
        files.append(out / f"{i:04d}.png")
        Image.open(f).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR).save(files[-1])
    return files


def _resnetx(*args: str) -> str:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "118"})
    print(f"$ resnetx {' '.join(args)}   ({time.perf_counter() - start:.0f} s, exit {done.returncode})")
    print(done.stdout[-4000:])
    if done.returncode not in (0, 1):
        sys.exit(done.stderr[-2000:] or done.stdout[-2000:])
    return done.stdout


def _compare(name: str, got: np.ndarray, want: np.ndarray) -> None:
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    agree = float(np.mean(got.argmax(1) == want.argmax(1)))
    print(f"{name:>5} graph (resnetx predict) vs Keras preprocess_input + predict: rel. L2 {rel:.2e}, "
          f"top-1 agreement {100 * agree:.2f}% on {len(want)} images")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True, help="a folder of PNG images (class folders or flat)")
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    import keras
    from keras.applications.imagenet_utils import preprocess_input

    a.out.mkdir(parents=True, exist_ok=True)
    files = _images(a.images, a.count, a.out / "images")
    model = keras.applications.ResNet50(weights=None, classes=10, input_shape=(SIZE, SIZE, 3))
    model.save(a.out / "r50.keras")
    x = np.stack([keras.utils.img_to_array(keras.utils.load_img(f)) for f in files])
    want = np.asarray(model.predict(preprocess_input(x, mode="caffe"), batch_size=16, verbose=0), np.float64)
    folder = a.out / "folder"
    _resnetx("export", "--keras", str(a.out / "r50.keras"), "--preprocess", "caffe", "--precision", "fp32,fp16,int8",
             "--calib-data", f"imagefolder:{a.out / 'images'}", "--calib-samples", "128", "--out", str(folder))
    _resnetx("verify", str(folder), "--data", f"imagefolder:{a.out / 'images'}", "--samples", str(len(files)))
    for precision in ("fp32", "fp16", "int8"):
        out = a.out / f"predict.{precision}.json"
        _resnetx("predict", str(folder), str(a.out / "images"), "--precision", precision, "--json", str(out))
        _compare(precision, np.array([r["outputs"] for r in json.loads(out.read_text())]), want)


if __name__ == "__main__":
    main()
