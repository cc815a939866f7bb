"""What a runtime costs in memory: the process's RSS and its peak on the CPU, the device's use on a GPU."""

from __future__ import annotations

import ctypes
import gc
import os
from pathlib import Path

__all__ = ["mem_mb", "trim_heap", "reset_peak_rss", "peak_rss_mb", "rss_mb"]


def mem_mb(device: str) -> float:
    """Memory in use: the GPU's (every allocator: torch, onnxruntime, TensorRT) on cuda, else the RSS."""
    if device == "cuda":
        import torch

        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20
    return rss_mb()


def trim_heap() -> None:
    """Give freed heap memory back to the OS before a baseline is taken. glibc keeps what the process freed
    (an export before the bench, as in `resnetx run`, or the runtime opened before) and hands it out again
    without the RSS rising, so a runtime opened after it would read 0 MB."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the RSS may read low after earlier work
        pass


def reset_peak_rss() -> bool:
    """Linux: restart the process's peak-RSS mark (VmHWM) so the next peak is this runtime's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
