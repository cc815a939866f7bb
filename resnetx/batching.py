"""Inputs in chunks that fit what a graph or engine accepts."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["batch_chunks"]


def batch_chunks(x: np.ndarray, size: int, pad_to: int = 0) -> Iterator[tuple[np.ndarray, int]]:
    """(chunk, real rows) over x in chunks of `size` rows; a last chunk shorter than `pad_to` is padded with
    copies of its final row (a fixed-batch graph, an engine's minimum batch): drop those rows from the outputs."""
    for i in range(0, len(x), size):
        chunk = x[i : i + size]
        n = len(chunk)
        if n < pad_to:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad_to - n, 0)])
        yield np.ascontiguousarray(chunk, np.float32), n
