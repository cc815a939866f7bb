"""What a runtime costs in memory: the process's RSS and its peak on the CPU, the device's use on a GPU."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
from pathlib import Path

import numpy as np

__all__ = ["mem_mb", "trim_heap", "prime_backends", "reset_peak_rss", "peak_rss_mb", "rss_mb"]


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


def prime_backends(backends: set[str], device: str) -> None:
    """Run each backend once on a tiny graph before any baseline: loading and first use of its library
    (code pages, thread pools, oneDNN state; on cuda torch's cuDNN and cuBLAS handles) is a cost of the
    process, paid once, and no row should carry it."""
    if "torch" in backends:
        import torch

        with torch.inference_mode():
            x = torch.ones(1, 3, 8, 8, device=device)
            torch.nn.functional.conv2d(x, torch.ones(4, 3, 3, 3, device=device), padding=1)
            torch.nn.functional.linear(x.flatten(1), torch.ones(4, 192, device=device))
        if device == "cuda":
            torch.cuda.synchronize()
    if "ort" in backends and device == "cpu":  # the CUDA provider's handles belong to each session
        with contextlib.suppress(ImportError):  # a missing onnxruntime is reported by its rows
            import onnxruntime as ort
            from onnx import TensorProto, helper

            w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(108, np.float32))
            graph = helper.make_graph(
                [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "prime",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            sess.run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})


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
