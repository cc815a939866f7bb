"""Timing loops: latency of single synchronised calls, throughput of back-to-back ones, the batch sweep."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resnetx.errors import BackendUnavailable, BadInput
from runtimes.base import Runtime

__all__ = ["Timing", "time_runtime", "time_throughput", "sweep_batches", "capacity_error", "SATURATION_GAIN",
           "MAX_AUTO_BATCH"]

SATURATION_GAIN = 0.05  # --batch auto stops when doubling the batch adds less throughput than this
MAX_AUTO_BATCH = 4096


@dataclass
class Timing:
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    iters: int
    seconds: float
    raw: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))  # every sample, ms
    cov: float = 0.0  # coefficient of variation: std / mean
    round_spread: float = 0.0  # (largest - smallest) per-round median / overall median; 0 with one round

    @classmethod
    def from_samples(cls, ms: np.ndarray, seconds: float, rounds: list[np.ndarray] | None = None) -> Timing:
        p = np.percentile(ms, [50, 90, 95, 99])
        medians = [float(np.median(r)) for r in rounds or [] if len(r)]
        spread = (max(medians) - min(medians)) / float(p[0]) if len(medians) > 1 and p[0] > 0 else 0.0
        mean = float(ms.mean())
        return cls(float(p[0]), float(p[1]), float(p[2]), float(p[3]), mean, float(ms.std()), float(ms.min()),
                   int(len(ms)), float(seconds), ms, float(ms.std()) / mean if mean > 0 else 0.0, spread)


def time_runtime(
    rt: Runtime,
    inputs: list[Any],
    *,
    warmup: int,
    warmup_seconds: float,
    iters: int,
    min_seconds: float,
    max_seconds: float = 60.0,
    device_resident: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Warm up (by count AND time), then time single runs until both `iters` and `min_seconds`
    are met (or `max_seconds` passes). Each sample is one synchronised call on the next buffer.

    device_resident: inputs already on the device and outputs left there (enqueue + sync timed);
    otherwise host in -> host out, transfers included.
    """
    if iters < 1 or warmup < 0:
        raise BadInput("--iters must be >= 1 and --warmup >= 0")

    def once(x: Any) -> None:
        if device_resident:
            rt.infer_async(x)
            rt.synchronize()
        else:
            rt.infer(x)

    start = clock()
    i = 0
    while i < warmup or clock() - start < warmup_seconds:
        once(inputs[i % len(inputs)])
        i += 1
        if clock() - start > max_seconds:
            break
    samples: list[float] = []
    t_start = clock()
    while len(samples) < iters or clock() - t_start < min_seconds:
        x = inputs[len(samples) % len(inputs)]
        t0 = clock()
        once(x)
        samples.append((clock() - t0) * 1e3)
        if clock() - t_start > max_seconds and len(samples) >= 3:
            break
    return Timing.from_samples(np.asarray(samples), clock() - t_start)


def time_throughput(rt: Runtime, inputs: list[Any], *, seconds: float, window: int = 8,
                    clock: Callable[[], float] = time.perf_counter) -> float:
    """Images per second with the device kept fed: `window` batches enqueued back to back, one synchronisation per
    window (trtexec's throughput, MLPerf's Offline scenario), for at least `seconds` (after one warm window)."""
    if window < 1:
        raise BadInput("the throughput window must be >= 1 batch")

    def one_window(start_index: int) -> None:
        for k in range(window):
            rt.infer_async(inputs[(start_index + k) % len(inputs)])
        rt.synchronize()

    one_window(0)
    images, windows, start = 0, 0, clock()
    while windows == 0 or clock() - start < seconds:
        one_window(windows * window)
        images += window * int(inputs[0].shape[0])
        windows += 1
    return images / max(clock() - start, 1e-12)


CAPACITY_WORDS = ("out of memory", "outofmemory", "bad_alloc", "failed to allocate", "cudaerrormemoryallocation",
                  "outside the range", "takes batches", "profile")


def capacity_error(e: BaseException) -> bool:
    """Whether an exception says a batch does not fit (memory, an engine's or graph's batch range): where --batch
    auto stops. Anything else is re-raised."""
    if isinstance(e, MemoryError) or "OutOfMemory" in type(e).__name__:
        return True
    if isinstance(e, (BadInput, BackendUnavailable)) or type(e).__module__.startswith(("onnxruntime", "torch")) \
            or isinstance(e, RuntimeError):
        return any(w in str(e).lower().replace(" ", "") or w in str(e).lower() for w in CAPACITY_WORDS)
    return False


def sweep_batches(measure: Callable[[int], float], max_batch: int = MAX_AUTO_BATCH,
                  gain: float = SATURATION_GAIN) -> tuple[list[int], str]:
    """--batch auto (Model Navigator's and perf_analyzer's rule): double the batch from 1 until throughput grows
    by less than `gain`, or a batch does not fit (memory, the runtime's range: `capacity_error`), or `max_batch`.
    (batches measured, why it stopped.) measure(batch) returns images/s or raises; any other error is re-raised."""
    batches: list[int] = []
    best = 0.0
    b = 1
    while True:
        try:
            ips = measure(b)
        except Exception as e:
            if not capacity_error(e):  # a bug, a broken file: not where throughput saturates
                raise
            return batches, f"batch {b} failed ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
        batches.append(b)
        if best and ips < best * (1 + gain):
            return batches, (f"throughput grew {100 * (ips / best - 1):+.1f}% from batch {b // 2} to {b} "
                             f"(less than {100 * gain:.0f}%)")
        best = max(best, ips)
        if b * 2 > max_batch:
            return batches, f"reached batch {b}, the largest to try ({max_batch})"
        b *= 2
