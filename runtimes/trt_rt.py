"""TensorRT engine runner: checks before deserializing, execute_async_v3 on device buffers, CUDA graphs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from resnetx.contract import INPUT_NAME, OUTPUT_NAME
from resnetx.errors import BackendUnavailable, BadInput, IncompatibleArtifact
from resnetx.files import atomic_write
from resnetx.flavors import FLAVORS, RTX_CCS, EngineTarget, Flavor, gpu_kind_of, import_flavor
from runtimes.base import Runtime

__all__ = ["TrtRuntime", "RuntimeCacheFile", "open_trt", "check_engine_compatible"]

log = logging.getLogger(__name__)


def _gpu_kind() -> str | None:
    import torch

    return gpu_kind_of(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None


def _gpu_cc() -> str:
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailable("the TensorRT runner uses torch for CUDA buffers: pip install torch") from e
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT engines need a CUDA GPU; none is visible (torch.cuda.is_available() is "
                                 "False)")
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


def check_engine_compatible(target: EngineTarget, installed_version: str, gpu_cc: str,
                            name: str = "the engine", gpu_kind: str | None = None) -> None:
    """Refuse an engine built for another TensorRT version or GPU, before touching its bytes, naming both targets.
    The error names the GPU at hand (`gpu_cc`) so that the caller can say how to rebuild it here."""
    flavor = target.flavor.value
    if target.trt_version != installed_version:
        raise IncompatibleArtifact(f"{name} was built with {flavor} {target.trt_version}, this machine has "
                                   f"{installed_version}", gpu_cc=gpu_cc)
    if why := target.runs_on(gpu_cc, gpu_kind):
        if target.flavor is Flavor.rtx and gpu_cc not in RTX_CCS.values():
            why += (f" ({FLAVORS[Flavor.rtx].name} targets only "
                    f"{', '.join(sorted(set(RTX_CCS.values()), key=float))}: use --engine tensorrt there)")
        raise IncompatibleArtifact(f"{name} (target {target.tag}) cannot run here: {why}", gpu_cc=gpu_cc)


class RuntimeCacheFile:
    """TensorRT-RTX's runtime cache (the kernels it JIT-compiles for the GPU at hand) kept in a file beside the
    engine, so the next load skips the compile. TensorRT-RTX itself refuses a cache made on another GPU, driver
    or version; then it compiles afresh and the file is replaced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._loaded = b""
        self._config: Any = None
        self._cache: Any = None

    def context(self, engine: Any) -> Any:
        """An execution context of `engine` that uses (and fills) the cache."""
        self._config = engine.create_runtime_config()
        self._cache = self._config.create_runtime_cache()
        if self.path.is_file():
            blob = self.path.read_bytes()
            if self._cache.deserialize(blob):
                self._loaded = blob
            else:
                log.info("%s was made for another GPU, driver or TensorRT-RTX: compiling afresh", self.path.name)
        self._config.set_runtime_cache(self._cache)
        return engine.create_execution_context(self._config)

    def save(self) -> None:
        """Write the cache back when it holds kernels it did not hold when loaded."""
        if self._cache is None:
            return
        try:
            blob = bytes(memoryview(self._cache.serialize()))
            if blob and blob != self._loaded:
                atomic_write(self.path, blob)
        except (OSError, TypeError, ValueError) as e:  # a cache that cannot be saved costs time, not results
            log.warning("could not save the TensorRT-RTX runtime cache %s: %s", self.path, e)


class TrtRuntime(Runtime):
    backend = "trt"

    def __init__(self, path: Path, target: EngineTarget, *, cuda_graph: bool = False) -> None:
        super().__init__(device="cuda", precision=target.precision,
                         mode=target.flavor.value + ("+graph" if cuda_graph else ""),
                         batch_range=(target.profile[0], target.profile[2]))
        trt = import_flavor(target.flavor)
        path = Path(path)
        check_engine_compatible(target, str(trt.__version__), _gpu_cc(), path.name, _gpu_kind())
        import torch

        self._torch = torch
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._trt_logger).deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:
            raise IncompatibleArtifact(f"{path.name} could not be deserialized", gpu_cc=_gpu_cc())
        self._cache: RuntimeCacheFile | None = None
        if target.flavor is Flavor.rtx:  # kernels are JIT-compiled for this GPU here: reuse a past run's
            self._cache = RuntimeCacheFile(path.with_suffix(".runtime_cache"))
            self._ctx = self._cache.context(self._engine)
        else:
            self._ctx = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self._cuda_graph = cuda_graph
        self._graphs: dict[int, Any] = {}
        self._bufs: dict[int, tuple[Any, Any]] = {}

    def _buffers(self, n: int) -> tuple[Any, Any]:
        if n not in self._bufs:
            torch = self._torch
            shape = tuple(self._engine.get_tensor_shape(INPUT_NAME))[1:]
            classes = int(self._engine.get_tensor_shape(OUTPUT_NAME)[-1])
            x = torch.empty((n, *shape), device="cuda", dtype=torch.float32)
            y = torch.empty((n, classes), device="cuda", dtype=torch.float32)
            self._bufs[n] = (x, y)
        return self._bufs[n]

    def _infer_async(self, batch: Any) -> Any:
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
            self._ctx.set_input_shape(INPUT_NAME, tuple(x.shape))
            self._ctx.set_tensor_address(INPUT_NAME, x.data_ptr())
            self._ctx.set_tensor_address(OUTPUT_NAME, y.data_ptr())
            if not self._ctx.execute_async_v3(self._stream.cuda_stream):
                raise BadInput(f"TensorRT refused batch {n}")
            if self._cuda_graph:
                self._stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self._stream):
                    self._ctx.execute_async_v3(self._stream.cuda_stream)
                self._graphs[n] = graph
        return y

    def _synchronize(self) -> None:
        self._stream.synchronize()

    def _infer(self, batch: Any) -> np.ndarray:
        y = self._infer_async(batch)
        self._stream.synchronize()
        return y.cpu().numpy()

    def _close(self) -> None:
        if self._cache is not None:
            self._cache.save()
        self._graphs.clear()
        self._bufs.clear()
        self._ctx = self._engine = None


def open_trt(path: Path, *, device: str = "cuda", target: EngineTarget | None = None, **opts: Any) -> TrtRuntime:
    if device != "cuda":
        raise BadInput("TensorRT engines run on --device cuda only")
    if target is None:
        raise BadInput("the TensorRT runner needs the engine's target (run it from an artifact folder)")
    return TrtRuntime(Path(path), target, **opts)


def devices() -> tuple[str, ...]:
    """Where TensorRT engines run here: a CUDA GPU, with a TensorRT flavour installed (none without either)."""
    try:
        import torch
    except ImportError:
        return ()
    if not torch.cuda.is_available():
        return ()
    for flavor in FLAVORS:
        try:
            import_flavor(flavor)
            return ("cuda",)
        except BackendUnavailable:
            continue
    return ()
