"""Classify an image with a model of this Triton model repository (written by `resnetx triton`).

    pip install 'tritonclient[http]' pillow numpy
    python client.py IMAGE [--model NAME] [--url localhost:8000] [--top 5]

It applies the preprocessing the model was exported with (below, from resnetx's manifest): shorter side
resized (bilinear) to `resize`, center crop to `image_size`, RGB (or grayscale for 1 channel; flipped to BGR for a
BGR model), divided by `divide` (255 unless said), minus `mean` (or the per-pixel mean image beside this script),
over `std`, NCHW. It needs only numpy and Pillow; the request needs tritonclient.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

# `resnetx triton` writes the repository's models, their preprocessing and class names here.
CONFIG: dict[str, Any] = {}

_NUMPY = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8, "INT8": np.int8,
          "INT32": np.int32, "INT64": np.int64}


def load_image(path: str | Path, pre: dict[str, Any]) -> np.ndarray:
    """The image as uint8 H,W,C: converted, shorter side resized to pre['resize'], center-cropped."""
    from PIL import Image

    size = int(pre["image_size"])
    with Image.open(path) as im:
        im = im.convert("L" if int(pre["channels"]) == 1 else "RGB")
        w, h = im.size
        s = int(pre["resize"]) / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        a = np.asarray(im.crop((left, top, left + size, top + size)), np.uint8)
    return a if a.ndim == 3 else a[..., None]


def preprocess(path: str | Path, pre: dict[str, Any] | None = None) -> np.ndarray:
    """The model's input for one image: float32, 1,C,S,S, normalised."""
    pre = pre or CONFIG["preprocess"]
    x = load_image(path, pre).astype(np.float32)
    divide = float(pre.get("divide", 255.0))
    if divide != 1.0:
        x = x / np.float32(divide)
    if pre.get("channel_order") == "bgr":
        x = x[..., ::-1]
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    if pre.get("mean_image"):  # a per-pixel mean (C, H, W), shipped beside this script
        x -= np.load(Path(__file__).with_name(pre["mean_image"]["file"]), allow_pickle=False)[None]
    else:
        x -= np.asarray(pre["mean"], np.float32)[:, None, None]
    x /= np.asarray(pre["std"], np.float32)[:, None, None]
    return x


def request(x: np.ndarray, model: str, url: str) -> np.ndarray:
    """One inference on the server: the logits of the image `x` (1,C,S,S)."""
    import tritonclient.http as http

    m = CONFIG["models"][model]
    if m["fixed_batch"]:  # a fixed-batch model takes exactly that many images
        x = np.repeat(x, m["fixed_batch"], axis=0)
    x = x.astype(_NUMPY[m["datatype"]])
    inp = http.InferInput(m["input"], list(x.shape), m["datatype"])
    inp.set_data_from_numpy(x)
    client = http.InferenceServerClient(url)
    result = client.infer(model, [inp], outputs=[http.InferRequestedOutput(m["output"])])
    return np.asarray(result.as_numpy(m["output"]), np.float32)[0]


def top_k(logits: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The k best classes and their probabilities (the softmax of logits; a softmax head's outputs as they are)."""
    if CONFIG.get("output") == "probabilities":
        p = logits
    else:
        p = np.exp(logits - logits.max())
        p /= p.sum()
    names = CONFIG.get("class_names") or [str(i) for i in range(len(logits))]
    return [(names[i], float(p[i])) for i in np.argsort(-p)[:k]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image")
    ap.add_argument("--model", default=CONFIG.get("default_model"), choices=sorted(CONFIG.get("models", {})))
    ap.add_argument("--url", default="localhost:8000", help="the server's HTTP endpoint")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args(argv)
    if not Path(args.image).is_file():
        print(f"error: {args.image} does not exist", file=sys.stderr)
        return 2
    try:
        logits = request(preprocess(args.image), args.model, args.url)
    except ImportError:
        print("error: tritonclient is not installed: pip install 'tritonclient[http]'", file=sys.stderr)
        return 3
    except Exception as e:  # noqa: BLE001 - the server's errors, in one line
        print(f"error: {args.url} {args.model}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}",
              file=sys.stderr)
        return 3
    for name, p in top_k(logits, args.top):
        print(f"{p:7.2%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
