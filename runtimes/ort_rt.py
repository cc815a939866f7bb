"""onnxruntime runner: CPU (thread count), CUDA with I/O binding, TensorRT execution provider.

`ort_session` is the loader (it makes the session); `OrtRuntime` only runs one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from resnetx.contract import INPUT_NAME
from resnetx.errors import BackendUnavailable, BadInput, first_line
from runtimes.base import Runtime

__all__ = ["OrtRuntime", "ort_session", "open_ort", "PROVIDERS", "devices", "session_error", "int8_causes",
           "fused_int8_layers"]

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


_UNREADABLE = ("InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NoModel", "DecodeError", "ValidationError")
_RESOURCES = ("out of memory", "bad_alloc", "failed to allocate", "cudaerror", "cuda error", "cudnn", "cublas",
              "memory")


def session_error(e: Exception, path: Path, provider: str) -> Exception:
    """What an onnxruntime session that failed to start means for the user: a graph it cannot read (BadInput, exit
    2: re-create the file), an op it has no kernel for, or a provider or memory failure (BackendUnavailable, exit 3,
    with the cause): never "corrupt" for what is not."""
    name, text = type(e).__name__, first_line(e, 300)
    if name in _UNREADABLE or (name == "Fail" and "protobuf" in text.lower()):
        return BadInput(f"onnxruntime cannot load {path.name} ({text}); the file is corrupt or not ONNX: re-create it "
                        "with resnetx export --force")
    if name == "NotImplemented" or any(k in text.lower() for k in ("could not find an implementation",
                                                                  "not a registered function/op")):
        return BackendUnavailable(f"onnxruntime {provider} has no kernel for an op of {path.name} ({text}); run it "
                                  "with another runtime (--runtime), or export it without that op")
    if isinstance(e, MemoryError) or name in ("EPFail", "EngineError") or any(k in text.lower() for k in _RESOURCES):
        return BackendUnavailable(f"onnxruntime's {provider} failed to start for {path.name}: {text} (out of memory "
                                  "or the provider's libraries: free memory, use a smaller --batch, or check the "
                                  "provider's install)")
    return BackendUnavailable(f"onnxruntime could not start a {provider} session for {path.name}: {name}: {text}")


def _ort_errors(ort: Any) -> tuple[type[Exception], ...]:
    """onnxruntime's own exception types (none derives from another Python type than Exception)."""
    from google.protobuf.message import DecodeError

    state = ort.capi.onnxruntime_pybind11_state
    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "NotImplemented",
             "RuntimeException", "EPFail", "EngineError", "NoModel", "NotFound")
    return (DecodeError, *(getattr(state, n) for n in names if hasattr(state, n)))


def _providers(key: str, path: Path, precision: str, prefer_nhwc: bool,
               trt_profile: tuple[int, int, int] | None, input_chw: tuple[int, ...] | None) -> list[Any]:
    """The provider list with its options; the wanted provider first, never a silent slower one instead."""
    wanted = PROVIDERS[key]
    if key == "cuda":
        cuda_opts = {"prefer_nhwc": "1" if prefer_nhwc else "0", "cudnn_conv_algo_search": "EXHAUSTIVE",
                     "use_tf32": "0"}  # fp32 means fp32: TF32 would round every conv input to 10 bits
        return [(wanted, cuda_opts), "CPUExecutionProvider"]
    if key == "trt-ep":  # one engine for the whole batch range, built once, cached beside the graph
        cache = str(path.parent / "ort_trt_cache")
        os.makedirs(cache, exist_ok=True)
        trt_opts: dict[str, Any] = {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                                    "trt_fp16_enable": precision == "fp16"}
        if trt_profile and input_chw:
            shape = "x".join(map(str, input_chw))
            for k, b in zip(("min", "opt", "max"), trt_profile, strict=True):
                trt_opts[f"trt_profile_{k}_shapes"] = f"{INPUT_NAME}:{b}x{shape}"
        return [(wanted, trt_opts), "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [wanted]


def ort_session(path: Path, *, device: str = "cpu", provider: str | None = None, precision: str = "fp32",
                threads: int | None = None, prefer_nhwc: bool = False,
                trt_profile: tuple[int, int, int] | None = None, input_chw: tuple[int, ...] | None = None) -> Any:
    """An onnxruntime InferenceSession on the provider for `device` (or `provider`), which must really start."""
    ort = _import_ort()
    key = provider or device
    if key not in PROVIDERS:
        raise BadInput(f"unknown onnxruntime device/provider {key!r}; use one of {', '.join(PROVIDERS)}")
    if prefer_nhwc and key != "cuda":
        raise BadInput("prefer_nhwc is an option of onnxruntime's CUDA provider; it needs device cuda")
    wanted = PROVIDERS[key]
    if wanted not in ort.get_available_providers():
        raise BackendUnavailable(f"onnxruntime {ort.__version__} here has no {wanted} (it has "
                                 f"{', '.join(ort.get_available_providers())}); {_GPU_HINT}")
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"ONNX file {path} does not exist")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if key != "cpu":  # torch's CUDA build loads the CUDA and cuDNN libraries the provider links against
        import torch  # noqa: F401  (onnxruntime's docs: import torch first, or onnxruntime.preload_dlls())
    try:
        sess = ort.InferenceSession(str(path), opts, providers=_providers(key, path, precision, prefer_nhwc,
                                                                          trt_profile, input_chw))
    except Exception as e:  # onnxruntime's errors are all plain Exceptions: told apart by session_error
        raise session_error(e, path, wanted) from e
    if sess.get_providers()[0] != wanted:  # never fall back silently to a slower provider
        raise BackendUnavailable(f"onnxruntime did not start {wanted} for {path.name} (got {sess.get_providers()}); "
                                 f"{_GPU_HINT}")
    return sess


class OrtRuntime(Runtime):
    """Runs one onnxruntime session; on CUDA with I/O binding, so outputs can stay on the device."""

    backend = "ort"

    def __init__(self, session: Any, *, precision: str = "fp32", mode: str = "") -> None:
        device = "cpu" if session.get_providers()[0] == PROVIDERS["cpu"] else "cuda"
        dim = session.get_inputs()[0].shape[0]
        # a graph exported with a fixed batch (--static-batch) takes only that
        super().__init__(device=device, precision=precision, mode=mode,
                         batch_range=(dim, dim) if isinstance(dim, int) else None)
        self._sess = session
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name
        self._classes = session.get_outputs()[0].shape[1]
        self._last: Any = None

    def _run_bound(self, batch: Any) -> Any:
        """CUDA: bind a torch CUDA tensor (or upload numpy once) and keep the output on the device."""
        import torch

        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
        x = x.to("cuda", torch.float32).contiguous()
        out = torch.empty((x.shape[0], self._classes), device="cuda", dtype=torch.float32)
        binding = self._sess.io_binding()
        binding.bind_input(self._input, "cuda", 0, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self._output, "cuda", 0, np.float32, tuple(out.shape), out.data_ptr())
        # onnxruntime computes on a stream of its own and reads the bound address without waiting for torch's:
        # the upload (or whatever kernel made the input) must be finished first (onnxruntime issue 26609)
        torch.cuda.current_stream().synchronize()
        self._sess.run_with_iobinding(binding)  # returns after onnxruntime's stream is synchronised
        self._last = (x, out)  # keep the buffers alive until the next call
        return out

    def _infer_async(self, batch: Any) -> Any:
        return self._run_bound(batch) if self.device == "cuda" else self._infer(batch)

    def _infer(self, batch: Any) -> np.ndarray:
        if self.device == "cuda":
            return self._run_bound(batch).cpu().numpy()
        if not isinstance(batch, np.ndarray):
            batch = batch.detach().cpu().numpy()
        return self._sess.run([self._output], {self._input: np.ascontiguousarray(batch, np.float32)})[0]

    def _close(self) -> None:
        self._sess = None
        self._last = None


def open_ort(path: Path, *, device: str = "cpu", precision: str = "fp32", provider: str | None = None,
             prefer_nhwc: bool = False, **loader: Any) -> OrtRuntime:
    mode = "trt-ep" if provider == "trt-ep" else ("nhwc" if prefer_nhwc else "")
    sess = ort_session(Path(path), device=device, provider=provider, precision=precision, prefer_nhwc=prefer_nhwc,
                       **loader)
    return OrtRuntime(sess, precision=precision, mode=mode)


def prime_graph() -> Any:
    """A one-conv ONNX graph: what priming runtimes run once."""
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(108, np.float32))
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "prime",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def prime(device: str) -> None:
    """Load onnxruntime's CPU kernels once before any memory baseline (the CUDA provider's handles belong to each
    session: nothing to prime there)."""
    if device != "cpu":
        return
    ort = _import_ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(prime_graph().SerializeToString(), so, providers=["CPUExecutionProvider"])
    sess.run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})


def devices() -> tuple[str, ...]:
    """Where onnxruntime runs graphs here: the CPU, and CUDA where its CUDA provider is installed."""
    try:
        ort = _import_ort()
    except BackendUnavailable:
        return ()
    return ("cpu", "cuda") if PROVIDERS["cuda"] in ort.get_available_providers() else ("cpu",)


INTEGER_KERNELS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "QGemm", "MatMulInteger", "FusedConvInteger")


def fused_int8_layers(path: Path, layers: int) -> int | None:
    """How many of an int8 graph's `layers` quantized conv/gemm layers onnxruntime's CPU optimizer turns into integer
    kernels (the rest run as float ops between Q/DQ pairs); None when its optimizer cannot save its graph."""
    import tempfile

    import onnx

    ort = _import_ort()
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        try:
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
        except (OSError, *_ort_errors(ort)) as e:  # a graph it cannot optimize or save: no cause named
            log.debug("onnxruntime's optimized graph of %s could not be read: %s", path, e)
            return None
    return min(sum(ops.count(k) for k in INTEGER_KERNELS), layers)


def int8_causes(path: Path, recipe: str | None, layers: int, device: str) -> list[str]:
    """Why an int8 graph may not be faster than float on onnxruntime here: a recipe its x86 kernels cannot fuse,
    or Q/DQ pairs its optimizer left around float kernels."""
    if device != "cpu":
        return []
    causes = []
    if recipe == "tensorrt":
        causes.append("the int8 graph is the TensorRT recipe (symmetric int8, float bias, no Q/DQ on conv outputs): "
                      "onnxruntime's x86 kernels cannot fuse it and run its pairs as float ops; for onnxruntime on "
                      "a CPU export with --int8-recipe cpu")
    fused = fused_int8_layers(path, layers)
    if fused is not None and fused < layers:
        causes.append(f"onnxruntime fused Q/DQ pairs into integer kernels for {fused} of the {layers} int8 conv/gemm "
                      "layers")
    return causes
