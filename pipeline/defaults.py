"""The defaults the command line and the options objects share: one literal each, importable without torch."""

from __future__ import annotations

__all__ = ["DEFAULT_REFERENCE_SAMPLES", "DEFAULT_CALIB_SAMPLES", "DEFAULT_OPT_LEVEL", "DEFAULT_BENCH_ACCURACY_SAMPLES",
           "DEFAULT_BATCHES", "DEFAULT_ROUNDS", "DEFAULT_ITERS", "DEFAULT_MIN_SECONDS", "DEFAULT_WARMUP",
           "DEFAULT_WARMUP_SECONDS", "DEFAULT_ACCURACY_SAMPLES", "DEFAULT_SEARCH_SECONDS", "DEFAULT_KIND_TIMEOUT",
           "DEFAULT_RETRIES", "DEFAULT_TOP", "DEFAULT_TRITON_MAX_BATCH", "DEFAULT_QUEUE_DELAY_US",
           "DEFAULT_CONVENTION_SAMPLES", "batches_text"]

DEFAULT_REFERENCE_SAMPLES = 512  # verify's default --samples: export stores the reference for those inputs
DEFAULT_CALIB_SAMPLES = 512  # int8 calibration images
DEFAULT_OPT_LEVEL = 3  # TensorRT's builder optimization level
DEFAULT_BENCH_ACCURACY_SAMPLES = 1000  # images bench's accuracy column is measured on
DEFAULT_BATCHES = (1, 8, 32)  # bench's (and a fleet's) batch sizes
DEFAULT_ROUNDS = 3  # bench's interleaved passes over every runtime
DEFAULT_ITERS = 50  # bench's timed runs per row (at least)
DEFAULT_MIN_SECONDS = 1.0  # ... and timed seconds (at least)
DEFAULT_WARMUP = 10  # bench's warm-up runs (at least)
DEFAULT_WARMUP_SECONDS = 0.5  # ... and warm-up seconds (at least)
DEFAULT_ACCURACY_SAMPLES = 2000  # held-out images that judge the int8 search
DEFAULT_SEARCH_SECONDS = 600.0  # the int8 search's time cap
DEFAULT_KIND_TIMEOUT = 300.0  # seconds a fleet kind's task may wait for a node and run
DEFAULT_RETRIES = 2  # a fleet kind's task runs again on another node of its kind when its node dies
DEFAULT_TOP = 5  # predict: classes shown per image
DEFAULT_TRITON_MAX_BATCH = 64  # Triton's max_batch_size for ONNX graphs with no engine profile to follow
DEFAULT_QUEUE_DELAY_US = 100  # Triton's dynamic batching delay
DEFAULT_CONVENTION_SAMPLES = 200  # labelled images the preprocessing check scores each convention on


def batches_text(batches: tuple[int, ...] = DEFAULT_BATCHES) -> str:
    """'1,8,32': batch sizes as the command line writes them."""
    return ",".join(map(str, batches))
