"""The preprocessing check: a wrong convention on both sides of a comparison passes every parity check, so where
labelled images of the model's own classes are given, the fp32 graph is scored once more under each common
convention mistake (channel order flipped, 0-255 against 0-1 pixels, the other Keras preprocess_input modes, mean/std
left out) on a small sample drawn across the classes, and a warning names the flag when one scores clearly better
than what the manifest declares."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.model.data import Dataset, eval_indices
from pipeline.model.preprocess import MODES, Preprocess

__all__ = ["Convention", "conventions", "convention_check", "CLEARLY_BETTER"]

CLEARLY_BETTER = 10.0  # points of top-1 a convention must win by (and by three standard errors) to be named


@dataclass(frozen=True)
class Convention:
    """One way the model might have been trained, and the flag that declares it."""

    flag: str
    pre: Preprocess


def conventions(pre: Preprocess) -> list[Convention]:
    """The common mistakes around the declared preprocessing, each a different preprocessing (the declared one and
    any that compute the same are left out)."""
    size = {"image_size": pre.image_size, "resize": pre.resize, "channels": pre.channels}
    c, order = pre.channels, pre.channel_order
    found = []  # the smallest changes first: at equal scores the first found is named
    if c == 3:
        flipped = "bgr" if order == "rgb" else "rgb"
        found.append(Convention(f"--channel-order {flipped}", replace(pre, channel_order=flipped, mode=None)))
    found.append(Convention("--mean 0 --std 1 (pixels on [0, 1], no normalisation)",
                            Preprocess(**size, mean=(0.0,) * c, std=(1.0,) * c, channel_order=order)))
    found.append(Convention(f"--mean 0 --std {1 / 255:.9g} (raw 0-255 pixels)",
                            Preprocess(**size, mean=(0.0,) * c, std=(1 / 255,) * c, channel_order=order)))
    if c == 3:
        found += [Convention(f"--preprocess {mode}", Preprocess(**size, mean=m["mean"], std=m["std"],
                                                                channel_order=m["channel_order"], divide=m["divide"],
                                                                mode=mode)) for mode, m in MODES.items()]
    return [v for v in found if not _same(v.pre, pre)]


def _same(a: Preprocess, b: Preprocess) -> bool:
    """Whether two preprocessings give the same input (up to rounding)."""
    if a.mean_image is not None or b.mean_image is not None or a.channel_order != b.channel_order:
        return a == b
    sa = np.array([1 / (a.divide * s) for s in a.std])
    sb = np.array([1 / (b.divide * s) for s in b.std])
    oa, ob = np.array(a.mean) * a.divide, np.array(b.mean) * b.divide
    return bool(np.allclose(sa, sb, rtol=1e-4) and np.allclose(oa, ob, rtol=1e-4, atol=1e-3))


def _top1(graph: Path, pre: Preprocess, raw: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from exporters.onnx import cpu_session, run_cpu

    out = run_cpu(cpu_session(graph), pre(raw), batch=64)
    return out.argmax(1) == labels


def convention_check(graph: Path, pre: Preprocess, ds: Dataset, samples: int, seed: int = 0) -> list[str]:
    """A warning naming the convention that scores clearly better than the declared one on `samples` labelled images
    of `ds` (the model's classes), and the others that do; nothing when the declared one wins or draws."""
    if ds.labels is None or len(ds) < 20:
        return []
    idx = eval_indices(ds, min(samples, len(ds)), seed) if ds.name.startswith("imagefolder:") else \
        np.random.default_rng(seed).permutation(len(ds))[: min(samples, len(ds))]
    raw, labels = ds.raw(np.sort(idx)), ds.labels[np.sort(idx)]
    declared = _top1(graph, pre, raw, labels)
    if declared.mean() > 1 - CLEARLY_BETTER / 100:
        return []
    found = []
    for v in conventions(pre):
        got = _top1(graph, v.pre, raw, labels)
        d = got.astype(np.float64) - declared
        gain, se = 100 * d.mean(), 100 * d.std(ddof=1) / math.sqrt(len(d))
        if gain >= CLEARLY_BETTER and gain >= 3 * se:
            found.append((gain, v, got.mean()))
    if not found:
        return []
    found.sort(key=lambda f: -f[0])  # stable: at equal gains, the order conventions() lists them in
    _, best, top1 = found[0]
    also = "; also better than declared: " + ", ".join(f"{v.flag.split(' (')[0]} {100 * t:.1f}%" for _, v, t in
                                                     found[1:]) if len(found) > 1 else ""
    return [f"preprocessing check: top-1 {100 * declared.mean():.1f}% as declared ({pre.words()}), "
            f"{100 * top1:.1f}% with {best.flag} on {len(labels)} {ds.name} images: the model was probably trained "
            f"that way; re-export with {best.flag.split(' (')[0]}{also}"]
