"""TensorRT engine runner: checks before deserializing, execute_async_v3 on device buffers, CUDA graphs."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import Runtime
from runtimes.errors import BackendUnavailable, BadInput, IncompatibleArtifact

__all__ = ["TrtRuntime", "open_trt", "check_engine_compatible", "rebuild_command"]

log = logging.getLogger(__name__)
_MODULES = {"tensorrt": ("tensorrt", "tensorrt-cu13"), "rtx": ("tensorrt_rtx", "tensorrt-rtx-cu13")}
_RTX_CCS = {"SM75": "7.5", "SM80": "8.0", "SM86": "8.6", "SM89": "8.9", "SM120": "12.0", "SM121": "12.1"}


def _gpu() -> tuple[str, str]:
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailable("the TensorRT runner uses torch for CUDA buffers: pip install torch") from e
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT engines need a CUDA GPU; none is visible (torch.cuda.is_available() is False)")
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def rebuild_command(folder: Path, entry: dict[str, Any], gpu_cc: str | None = None) -> str:
    """The command that builds this engine again on this machine, from the folder's own ONNX graph: it needs
    neither the model nor its weights, which a folder copied to its target GPU may not have."""
    import shlex

    flavor = entry.get("flavor", "tensorrt")
    if flavor == "rtx" and gpu_cc and gpu_cc not in _RTX_CCS.values():  # a GPU TensorRT-RTX does not target
        flavor = "tensorrt"
    args = ["resnetx", "export", "--out", str(folder), "--engines-only", "--engine", flavor,
            "--precision", str(entry.get("precision", "fp32"))]
    if entry.get("profile"):
        args += ["--batch-range", ",".join(map(str, entry["profile"]))]
    if flavor == "rtx" and gpu_cc:
        args += ["--rtx-compute-capability", "SM" + gpu_cc.replace(".", "")]
    return " ".join(shlex.quote(a) for a in [*args, "--force"])


def check_engine_compatible(entry: dict[str, Any], installed_version: str, gpu_cc: str,
                            folder: Path = Path("DIR")) -> None:
    """Refuse an engine built for another TensorRT version or GPU, before touching its bytes."""
    flavor = entry.get("flavor", "?")
    rebuild = "rebuild it here with: " + rebuild_command(folder, entry, gpu_cc)
    if entry.get("trt_version") != installed_version:
        raise IncompatibleArtifact(
            f"{entry['file']} was built with {flavor} {entry.get('trt_version')}, this machine has {installed_version}; {rebuild}")
    if flavor == "rtx":
        ccs = [_RTX_CCS.get(c, c) for c in entry.get("compute_capabilities", [])]
        if gpu_cc not in ccs:
            why = (f" (TensorRT-RTX targets only {', '.join(sorted(set(_RTX_CCS.values()), key=float))}: use --engine "
                   "tensorrt there)" if gpu_cc not in _RTX_CCS.values() else "")
            raise IncompatibleArtifact(
                f"{entry['file']} targets compute capabilities {', '.join(ccs)}; this GPU is {gpu_cc}{why}; {rebuild}")
    elif entry.get("compute_capability") and entry["compute_capability"] != gpu_cc:
        raise IncompatibleArtifact(
            f"{entry['file']} was built on a {entry.get('gpu')} (compute {entry['compute_capability']}); "
            f"this GPU is compute {gpu_cc}; {rebuild}")


class TrtRuntime(Runtime):
    backend = "trt"

    def __init__(self, path: Path, entry: dict[str, Any], *, cuda_graph: bool = False) -> None:
        flavor = entry.get("flavor", "tensorrt")
        super().__init__(device="cuda", precision=entry.get("precision", "fp32"),
                         mode=flavor + ("+graph" if cuda_graph else ""),
                         batch_range=(entry["profile"][0], entry["profile"][2]))
        module, pip = _MODULES[flavor]
        try:
            trt = importlib.import_module(module)
        except ImportError as e:
            raise BackendUnavailable(f"{module} is not installed: pip install {pip}") from e
        _, cc = _gpu()
        check_engine_compatible(entry, str(trt.__version__), cc, Path(path).parent)
        import torch

        self._torch = torch
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._trt_logger)
        self._engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self._engine is None:
            raise IncompatibleArtifact(f"{Path(path).name} could not be deserialized; rebuild it with: "
                                       f"{rebuild_command(Path(path).parent, entry, cc)}")
        self._cache_file: Path | None = None
        if flavor == "rtx":  # kernels are JIT-compiled for this GPU here: reuse the ones a past run compiled
            self._ctx = self._rtx_context_with_cache(Path(path).with_suffix(".runtime_cache"))
        else:
            self._ctx = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self._cuda_graph = cuda_graph
        self._graphs: dict[int, Any] = {}
        self._bufs: dict[int, tuple[Any, Any]] = {}
        self._in, self._out = "input", "logits"

    def _rtx_context_with_cache(self, cache_file: Path) -> Any:
        """TensorRT-RTX execution context whose runtime cache (JIT-compiled kernels) lives beside the engine."""
        self._rtx_config = self._engine.create_runtime_config()
        self._rtx_cache = self._rtx_config.create_runtime_cache()
        self._cache_bytes = b""
        if cache_file.is_file():
            blob = cache_file.read_bytes()
            if self._rtx_cache.deserialize(blob):  # False: another GPU, driver or version; it is rebuilt
                self._cache_bytes = blob
            else:
                log.info("%s was made for another GPU, driver or TensorRT-RTX: compiling afresh", cache_file.name)
        self._rtx_config.set_runtime_cache(self._rtx_cache)
        self._cache_file = cache_file
        return self._engine.create_execution_context(self._rtx_config)

    def _save_runtime_cache(self) -> None:
        if self._cache_file is None:
            return
        try:
            blob = bytes(memoryview(self._rtx_cache.serialize()))
            if blob and blob != self._cache_bytes:
                from exporters.onnx import atomic_write

                atomic_write(self._cache_file, blob)
        except (OSError, TypeError, ValueError) as e:  # a cache that cannot be saved costs time, not results
            log.warning("could not save the TensorRT-RTX runtime cache %s: %s", self._cache_file, e)

    def _buffers(self, n: int) -> tuple[Any, Any]:
        if n not in self._bufs:
            torch = self._torch
            shape = tuple(self._engine.get_tensor_shape(self._in))[1:]
            classes = int(self._engine.get_tensor_shape(self._out)[-1])
            x = torch.empty((n, *shape), device="cuda", dtype=torch.float32)
            y = torch.empty((n, classes), device="cuda", dtype=torch.float32)
            self._bufs[n] = (x, y)
        return self._bufs[n]

    def infer_async(self, batch: Any) -> Any:
        torch = self._torch
        n = int(batch.shape[0])
        x, y = self._buffers(n)
        src = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
        self._stream.wait_stream(torch.cuda.current_stream())  # an input made by torch's kernels is complete
        with torch.cuda.stream(self._stream):
            x.copy_(src, non_blocking=True)
            if n in self._graphs:
                self._graphs[n].replay()
                return y
            self._ctx.set_input_shape(self._in, tuple(x.shape))
            self._ctx.set_tensor_address(self._in, x.data_ptr())
            self._ctx.set_tensor_address(self._out, y.data_ptr())
            if not self._ctx.execute_async_v3(self._stream.cuda_stream):
                raise BadInput(f"TensorRT refused batch {n}")
            if self._cuda_graph:
                self._stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self._stream):
                    self._ctx.execute_async_v3(self._stream.cuda_stream)
                self._graphs[n] = graph
        return y

    def synchronize(self) -> None:
        self._stream.synchronize()

    def _infer(self, batch: Any) -> np.ndarray:
        y = self.infer_async(batch)
        self._stream.synchronize()
        return y.cpu().numpy()

    def _close(self) -> None:
        self._save_runtime_cache()
        self._graphs.clear()
        self._bufs.clear()
        self._ctx = self._engine = None


def open_trt(path: Path, *, device: str = "cuda", entry: dict[str, Any] | None = None, **opts: Any) -> TrtRuntime:
    if device != "cuda":
        raise BadInput("TensorRT engines run on --device cuda only")
    if entry is None:
        raise BadInput("the TensorRT runner needs the engine's manifest entry (run it from an artifact folder)")
    return TrtRuntime(Path(path), entry, **opts)
