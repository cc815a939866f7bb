"""One runner shape for every backend: open -> infer(batch) -> logits -> close (the registry of runtimes is
runtimes/registry.py, above the runners)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

import numpy as np

from resnetx.batching import batch_chunks
from resnetx.errors import BackendUnavailable, BadInput

__all__ = ["Device", "Runtime", "require_cuda"]


class Device(str, Enum):
    auto = "auto"  # cuda when torch sees a GPU, else cpu
    cpu = "cpu"
    cuda = "cuda"

    def resolve(self) -> str:
        """'cpu' or 'cuda'."""
        if self is Device.auto:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.value


class Runtime:
    """Base runner. The public methods check state once, then call the hooks each backend fills:
    `_infer` (and, where the backend can leave results on the device, `_infer_async` and `_synchronize`),
    `_close`. `name` (e.g. 'ort-cpu-fp32') is what reports print verbatim."""

    backend = "base"

    def __init__(self, *, device: str, precision: str, mode: str = "",
                 batch_range: tuple[int, int] | None = None) -> None:
        self.device = device
        self.precision = precision
        self.mode = mode
        self.batch_range = batch_range  # (min, max) batch the artifact accepts, None = any
        self.static_shapes = False  # each new batch size costs a compile or a capture: infer_all pads
        self.one_time_seconds: dict[int, float] = {}  # batch size -> its first call's compile or capture
        self._open = True

    @property
    def name(self) -> str:
        return "-".join(p for p in (self.backend, self.mode, self.device, self.precision) if p)

    def _check(self, batch: Any) -> None:
        if not self._open:
            raise RuntimeError(f"{self.name} is closed")
        if reason := self.out_of_range(int(batch.shape[0])):
            raise BadInput(f"{self.name}: {reason}")

    def infer(self, batch: Any) -> np.ndarray:
        """float32 NCHW batch (numpy or torch) -> float32 logits as numpy, synchronised."""
        self._check(batch)
        return self._infer(batch)

    def infer_async(self, batch: Any) -> Any:
        """Enqueue without copying the result to the host, for timing device-resident runs; `synchronize` ends
        the work. Backends that cannot do better run `_infer`."""
        self._check(batch)
        return self._infer_async(batch)

    def synchronize(self) -> None:
        """Wait for all work enqueued by infer_async."""
        if self._open:
            self._synchronize()

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

    def _infer_async(self, batch: Any) -> Any:
        return self._infer(batch)

    def _synchronize(self) -> None:
        pass

    def _close(self) -> None:
        pass


def require_cuda(consequence: str = "") -> None:
    """`--device cuda` was asked for: where torch sees no GPU, refuse at once and say what to do."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("--device cuda asked for, but torch sees no CUDA device (install a CUDA build "
                                 f"of torch, or use --device cpu){consequence}")
