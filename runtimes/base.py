"""One runner shape for every backend: open -> infer(batch) -> logits -> close."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from runtimes.errors import BackendUnavailable, BadInput, IncompatibleArtifact

__all__ = [
    "Runtime",
    "RUNTIMES",
    "open_runtime",
    "require_cuda",
    "batch_chunks",
    "BackendUnavailable",
    "IncompatibleArtifact",
]


def batch_chunks(x: np.ndarray, size: int, pad_to: int = 0) -> Iterator[tuple[np.ndarray, int]]:
    """(chunk, real rows) over x in chunks of `size` rows; a last chunk shorter than `pad_to` is padded with
    copies of its final row (a fixed-batch graph, an engine's minimum batch): drop those rows from the outputs."""
    for i in range(0, len(x), size):
        chunk = x[i : i + size]
        n = len(chunk)
        if n < pad_to:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad_to - n, 0)])
        yield np.ascontiguousarray(chunk, np.float32), n


class Runtime:
    """Base runner. Backends fill `_infer` (and `_close`); the public methods check state once.

    `name` (e.g. 'ort-cpu-fp32') is what reports print verbatim.
    """

    backend = "base"

    def __init__(self, *, device: str, precision: str, mode: str = "", batch_range: tuple[int, int] | None = None) -> None:
        self.device = device
        self.precision = precision
        self.mode = mode
        self.batch_range = batch_range  # (min, max) batch the artifact accepts, None = any
        self.static_shapes = False  # each new batch size costs a compile or a capture: infer_all pads
        self._open = True

    @property
    def name(self) -> str:
        return "-".join(p for p in (self.backend, self.mode, self.device, self.precision) if p)

    def infer(self, batch: Any) -> np.ndarray:
        """float32 NCHW batch (numpy or torch) -> float32 logits as numpy, synchronised."""
        if not self._open:
            raise RuntimeError(f"{self.name} is closed")
        if reason := self.out_of_range(int(batch.shape[0])):
            raise BadInput(f"{self.name}: {reason}")
        return self._infer(batch)

    def out_of_range(self, n: int) -> str | None:
        """Why a batch of n cannot run here (an engine's profile, a fixed-batch graph), or None when it can."""
        if self.batch_range is None or self.batch_range[0] <= n <= self.batch_range[1]:
            return None
        lo, hi = self.batch_range
        return (f"batch {n} is outside the range {lo}..{hi} it was built for; use a batch in {lo}..{hi}, or "
                "re-export (engines: --batch-range; ONNX: dynamic batch)")

    def infer_all(self, x: np.ndarray, batch: int, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Logits for any number of inputs: chunks of at most `batch` kept inside the artifact's
        batch range, the last chunk padded up to its minimum, or to the full chunk for runtimes with
        static shapes (padding rows are dropped)."""
        lo, hi = self.batch_range or (1, batch)
        step = max(lo, min(batch, hi))
        out = []
        for chunk, n in batch_chunks(x, step, pad_to=step if self.static_shapes else lo):
            out.append(self.infer(chunk)[:n])
            if on_batch:
                on_batch(n)
        return np.concatenate(out).astype(np.float32)

    def infer_async(self, batch: Any) -> Any:
        """Enqueue without copying the result to the host; for timing device-resident runs.

        Backends that cannot do better fall back to `infer`. `synchronize` ends the work.
        """
        return self.infer(batch)

    def synchronize(self) -> None:
        """Wait for all work enqueued by infer_async."""

    def close(self) -> None:
        if self._open:
            self._close()
            self._open = False

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _infer(self, batch: Any) -> np.ndarray:
        raise NotImplementedError

    def _close(self) -> None:
        pass


# name -> (module, opener function); modules are imported on first use, so a missing backend
# costs nothing until it is asked for.
RUNTIMES: dict[str, tuple[str, str]] = {
    "torch": ("runtimes.torch_rt", "open_torch"),
    "ort": ("runtimes.ort_rt", "open_ort"),
    "trt": ("runtimes.trt_rt", "open_trt"),
}


def require_cuda(consequence: str = "") -> None:
    """`--device cuda` was asked for: where torch sees no GPU, refuse at once and say what to do."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("--device cuda asked for, but torch sees no CUDA device (install a CUDA build "
                                 f"of torch, or use --device cpu){consequence}")


def open_runtime(backend: str, artifact: Any, device: str = "cpu", **opts: Any) -> Runtime:
    """Open `artifact` (an nn.Module for torch, a file for ort/trt) on `device` with `backend`."""
    if backend not in RUNTIMES:
        raise BadInput(f"unknown runtime {backend!r}; known: {', '.join(RUNTIMES)}")
    module, fn = RUNTIMES[backend]
    opener: Callable[..., Runtime] = getattr(importlib.import_module(module), fn)
    return opener(artifact, device=device, **opts)

