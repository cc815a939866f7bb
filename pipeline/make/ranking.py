"""Ranking an int8 graph's layers by what reverting each recovers, and the logits it is judged on: shared by the
accuracy search (export) and verify's localisation, which ask the same question of a made graph."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from exporters.onnx import cpu_session, run_cpu
from pipeline.model.data import ImageSet

__all__ = ["Logits", "rank_layers", "ranking_images", "LOGIT_CHUNK", "RANKING_IMAGES", "RANKING_PASSES",
           "PROXY_CACHE_BYTES"]

LOGIT_CHUNK = 256  # images decoded at a time for a trial's logits
# each layer's recovery is ranked on the proxy images int8 gets most wrong: 64, fewer where the layers are many
# (at least 32), so that ranking reads at most RANKING_PASSES times as many images as a measured trial. On the
# residual-hostile model of `scripts/int8_anchor.py` 64 put the same eight layers first as 128 (two swapped), in
# half the time
RANKING_IMAGES = (32, 64)
RANKING_PASSES = 4
PROXY_CACHE_BYTES = 256 << 20  # the proxy rows' decoded inputs are kept in memory up to this size


class Logits:
    """Logits of ONNX graphs (onnxruntime CPU; a file or an onnx.ModelProto) on a set of images, or on some rows
    of it, read a chunk at a time."""

    def __init__(self, images: ImageSet | np.ndarray, fuse_qdq: bool = True) -> None:
        self.images = images
        # False for the tensorrt recipe's graphs, measured and estimated alike: quicker for their signed int8
        # activations, and an estimate of a graph then gives its measurement's answers (see cpu_session)
        self.fuse_qdq = fuse_qdq

    def of(self, graph: Path | Any, rows: np.ndarray | None = None) -> np.ndarray:
        sess = cpu_session(graph, self.fuse_qdq)
        if isinstance(self.images, np.ndarray):
            return run_cpu(sess, self.images if rows is None else self.images[rows], batch=64)
        return np.concatenate([run_cpu(sess, x, batch=64) for x in self.images.chunks(LOGIT_CHUNK, rows)])

    def subset(self, rows: np.ndarray) -> Logits:
        """The logits of those rows only: their inputs decoded once and kept, when they fit PROXY_CACHE_BYTES."""
        if isinstance(self.images, np.ndarray):
            return Logits(self.images[rows], self.fuse_qdq)
        first = next(self.images.chunks(1, rows[:1]))
        if first.nbytes * len(rows) > PROXY_CACHE_BYTES:
            return _Rows(self, rows)
        return Logits(np.concatenate(list(self.images.chunks(LOGIT_CHUNK, rows))), self.fuse_qdq)


class _Rows(Logits):
    """Some rows of a set of images too large to keep decoded: read again for every graph."""

    def __init__(self, parent: Logits, rows: np.ndarray) -> None:
        super().__init__(parent.images, parent.fuse_qdq)
        self.rows = rows

    def of(self, graph: Path | Any, rows: np.ndarray | None = None) -> np.ndarray:
        return super().of(graph, self.rows if rows is None else self.rows[rows])


def ranking_images(layers: int, judged: int) -> int:
    """How many images rank `layers` layers when a measured trial reads `judged` (see RANKING_IMAGES)."""
    return int(np.clip(RANKING_PASSES * judged // max(layers, 1), *RANKING_IMAGES))


def rank_layers(layers: list[str], graph_without: Callable[[str], Path | Any], logits: Logits, reference: np.ndarray,
                plain: np.ndarray, images: int = RANKING_IMAGES[1],
                on_layer: Callable[[int], None] | None = None) -> list[str]:
    """The quantized layers, the one whose reverting alone brings the logits closest to the reference first, on
    the `images` images where plain int8 departs most from it. graph_without(layer) is the int8 graph with it
    reverted (a file or a graph in memory); on_layer hears how many layers are ranked so far."""
    err = ((plain - reference) ** 2).mean(1)
    rows = np.sort(np.argsort(-err, kind="stable")[:images])
    ref = reference[rows]
    base = float(((plain[rows] - ref) ** 2).mean())
    gains = []
    for i, layer in enumerate(layers):
        got = logits.of(graph_without(layer), rows)
        gains.append((base - float(((got - ref) ** 2).mean()), -i, layer))
        if on_layer:
            on_layer(i + 1)
    return [layer for _, _, layer in sorted(gains, reverse=True)]
