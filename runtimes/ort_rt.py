"""onnxruntime runner: CPU (thread count), CUDA with I/O binding, TensorRT execution provider."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import Runtime
from runtimes.errors import BackendUnavailable, BadInput, first_line

__all__ = ["OrtRuntime", "open_ort", "PROVIDERS"]

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt-ep": "TensorrtExecutionProvider",
}
_GPU_HINT = "pip install 'resnetx[gpu]' (onnxruntime-gpu) and make sure a CUDA GPU is visible"


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from e
    return ort


class OrtRuntime(Runtime):
    backend = "ort"

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        threads: int | None = None,
        provider: str | None = None,
        prefer_nhwc: bool = False,
        io_binding: bool = True,
        provider_options: dict[str, Any] | None = None,
    ) -> None:
        ort = _import_ort()
        key = provider or device
        if key not in PROVIDERS:
            raise BadInput(f"unknown onnxruntime device/provider {key!r}; use one of {', '.join(PROVIDERS)}")
        if prefer_nhwc and key != "cuda":
            raise BadInput("prefer_nhwc is an option of onnxruntime's CUDA provider; it needs device cuda")
        mode = "trt-ep" if key == "trt-ep" else ("nhwc" if prefer_nhwc else "")
        super().__init__(device="cuda" if key != "cpu" else "cpu", precision=precision, mode=mode)
        wanted = PROVIDERS[key]
        if wanted not in ort.get_available_providers():
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__} here has no {wanted} (it has {', '.join(ort.get_available_providers())}); {_GPU_HINT}"
            )
        path = Path(path)
        if not path.is_file():
            raise BadInput(f"ONNX file {path} does not exist")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers: list[Any] = [wanted]
        if key != "cpu":  # torch's CUDA build loads the CUDA and cuDNN libraries the provider links against
            import torch  # noqa: F401  (onnxruntime's docs: import torch first, or onnxruntime.preload_dlls())
        if key == "cuda":
            cuda_opts = {"prefer_nhwc": "1" if prefer_nhwc else "0", "cudnn_conv_algo_search": "EXHAUSTIVE",
                         "use_tf32": "0"}  # fp32 means fp32: TF32 would round every conv input to 10 bits
            providers = [(wanted, cuda_opts), "CPUExecutionProvider"]
        elif key == "trt-ep":
            cache = str(path.parent / "ort_trt_cache")
            os.makedirs(cache, exist_ok=True)
            trt_opts = {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                        "trt_fp16_enable": precision == "fp16", **(provider_options or {})}
            providers = [(wanted, trt_opts), "CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            self._sess = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:
            first = first_line(e)
            raise BadInput(f"onnxruntime cannot load {path.name} ({first}); the file is corrupt or not ONNX: "
                           f"re-create it with resnetx export --force") from e
        active = self._sess.get_providers()
        if active[0] != wanted:  # never fall back silently to a slower provider
            raise BackendUnavailable(f"onnxruntime did not start {wanted} for {path.name} (got {active}); {_GPU_HINT}")
        dim = self._sess.get_inputs()[0].shape[0]
        if isinstance(dim, int):  # a graph exported with a fixed batch (--no-dynamic-batch) takes only that
            self.batch_range = (dim, dim)
        self._input = self._sess.get_inputs()[0].name
        self._output = self._sess.get_outputs()[0].name
        self._bind = io_binding and self.device == "cuda"
        self._last: Any = None

    def _run_bound(self, batch: Any) -> Any:
        """CUDA: bind a torch CUDA tensor (or upload numpy once) and keep the output on the device."""
        import torch

        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
        x = x.to("cuda", torch.float32).contiguous()
        out = torch.empty((x.shape[0], self._sess.get_outputs()[0].shape[1]), device="cuda", dtype=torch.float32)
        binding = self._sess.io_binding()
        binding.bind_input(self._input, "cuda", 0, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self._output, "cuda", 0, np.float32, tuple(out.shape), out.data_ptr())
        # onnxruntime computes on a stream of its own and reads the bound address without waiting for torch's:
        # the upload (or whatever kernel made the input) must be finished first (onnxruntime issue 26609)
        torch.cuda.current_stream().synchronize()
        self._sess.run_with_iobinding(binding)  # returns after onnxruntime's stream is synchronised
        self._last = (x, out)  # keep the buffers alive until the next call
        return out

    def infer_async(self, batch: Any) -> Any:
        return self._run_bound(batch) if self._bind else self._infer(batch)

    def _infer(self, batch: Any) -> np.ndarray:
        if self._bind:
            return self._run_bound(batch).cpu().numpy()
        if not isinstance(batch, np.ndarray):
            batch = batch.detach().cpu().numpy()
        return self._sess.run([self._output], {self._input: np.ascontiguousarray(batch, np.float32)})[0]

    def _close(self) -> None:
        self._sess = None
        self._last = None


def open_ort(path: Path, *, device: str = "cpu", **opts: Any) -> OrtRuntime:
    return OrtRuntime(Path(path), device=device, **opts)
