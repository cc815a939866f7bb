"""Runtimes: the common interface, onnxruntime and torch on CPU, clear errors for missing backends."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.check.reference import Reference
from pipeline.folder.manifest import read_manifest
from resnetx.errors import BackendUnavailable, BadInput, IncompatibleArtifact
from resnetx.flavors import EngineTarget, Flavor, HardwareCompat
from runtimes.registry import open_runtime
from runtimes.trt_rt import check_engine_compatible
from tests.conftest import needs_cuda


def _x(n: int = 4) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 1, 28, 28)).astype(np.float32)


def _model(folder: Path) -> torch.nn.Module:
    return Reference.of(read_manifest(folder)).require_model("the test")


def test_ort_and_torch_agree(default_folder: Path) -> None:
    model = _model(default_folder)
    with open_runtime("ort", default_folder / "model.fp32.onnx", threads=1) as ort_rt, \
            open_runtime("torch", model) as torch_rt:
        a, b = ort_rt.infer(_x()), torch_rt.infer(torch.from_numpy(_x()))
        assert ort_rt.name == "ort-cpu-fp32" and torch_rt.name == "torch-cpu-fp32"
    assert a.shape == (4, 10) and np.abs(a - b).max() < 1e-4


def test_closed_runtime_refuses(default_folder: Path) -> None:
    rt = open_runtime("ort", default_folder / "model.fp16.onnx", precision="fp16")
    rt.close()
    with pytest.raises(RuntimeError, match="closed"):
        rt.infer(_x())


def test_unknown_runtime_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="unknown runtime"):
        open_runtime("tvm", tmp_path)
    with pytest.raises(BadInput, match="does not exist"):
        open_runtime("ort", tmp_path / "x.onnx")


def test_missing_provider_is_backend_unavailable(default_folder: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        open_runtime("ort", default_folder / "model.fp32.onnx", device="cuda")
    with pytest.raises(BackendUnavailable, match="TensorrtExecutionProvider"):
        open_runtime("ort", default_folder / "model.fp16.onnx", device="cuda", provider="trt-ep")


def test_torch_cuda_unavailable() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailable, match="no CUDA device"):
        open_runtime("torch", torch.nn.Linear(2, 2), device="cuda")


TARGET = EngineTarget(Flavor.rtx, "1.7.1.116", "fp16", (1, 8, 64), ("SM80", "SM86", "SM89", "SM120"))


def test_engine_compatibility_checked_before_bytes() -> None:
    """The runner refuses with the facts (and the GPU at hand), before it reads the engine's bytes."""
    check_engine_compatible(TARGET, "1.7.1.116", "8.6")
    with pytest.raises(IncompatibleArtifact, match="built with rtx 1.7.1.116, this machine has 1.8.0"):
        check_engine_compatible(TARGET, "1.8.0", "8.6")
    with pytest.raises(IncompatibleArtifact, match="this GPU is 9.0 .*use --engine tensorrt there") as e:
        check_engine_compatible(TARGET, "1.7.1.116", "9.0")
    assert e.value.gpu_cc == "9.0"
    enterprise = EngineTarget(Flavor.tensorrt, "10.9", "fp16", (1, 8, 64), gpu="NVIDIA L4", compute_capability="8.9",
                              kind="L4")
    with pytest.raises(IncompatibleArtifact, match=r"target trt10.9-sm89-L4\) cannot run here: .*built on a NVIDIA L4"):
        check_engine_compatible(enterprise, "10.9", "9.0")
    check_engine_compatible(enterprise, "10.9", "8.9", gpu_kind="L4")
    with pytest.raises(IncompatibleArtifact, match="built on a L4 for that kind .*this GPU is a GeForce-RTX-4090"):
        check_engine_compatible(enterprise, "10.9", "8.9", gpu_kind="GeForce-RTX-4090")  # one cc, another kind
    same_cc = replace(enterprise, hardware_compat=HardwareCompat.same_cc)
    check_engine_compatible(same_cc, "10.9", "8.9", gpu_kind="GeForce-RTX-4090")
    ampere = replace(enterprise, hardware_compat=HardwareCompat.ampere_plus)
    assert same_cc.tag == "trt10.9-sm89-samecc" and ampere.tag == "trt10.9-sm89-ampere+"
    check_engine_compatible(ampere, "10.9", "8.0", gpu_kind="A100")
    with pytest.raises(IncompatibleArtifact, match="Ampere or newer"):
        check_engine_compatible(ampere, "10.9", "7.5", gpu_kind="T4")


def test_trt_runner_without_gpu_says_so(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    (tmp_path / "m.engine").write_bytes(b"\0" * 64)
    with pytest.raises(BackendUnavailable, match="need a CUDA GPU"):
        open_runtime("trt", tmp_path / "m.engine", device="cuda", target=TARGET)


@needs_cuda
@pytest.mark.gpu
def test_trt_engine_runs_on_gpu(default_folder: Path, tmp_path: Path) -> None:
    """Runs only where a GPU that TensorRT(-RTX) supports is present (RTX refuses sm_90)."""
    from pipeline.make.export import ExportOptions, export
    from pipeline.precisions import Precision
    from pipeline.sources import ModelSpec

    r = export(ExportOptions(model=ModelSpec("default"), out=tmp_path / "e",
                             precisions=(Precision.fp32, Precision.fp16), engine="auto"))
    entry = next(iter(r.manifest.engines.values()), None)
    if entry is None:
        pytest.skip("no TensorRT flavour installed: no engine was built")
    try:
        rt = open_runtime("trt", tmp_path / "e" / entry.file, device="cuda", target=entry.target)
    except IncompatibleArtifact as e:  # e.g. TensorRT-RTX engines on an H100 (sm_90)
        pytest.skip(str(e))
    with rt:
        out = rt.infer(_x(8))
        with pytest.raises(BadInput, match="outside the range"):
            rt.infer(_x(entry.profile[2] + 1))
    assert out.shape == (8, 10) and np.isfinite(out).all()


@needs_cuda
@pytest.mark.gpu
def test_ort_cuda_and_torch_cuda_fp16(default_folder: Path) -> None:
    model = _model(default_folder)
    with open_runtime("torch", model) as ref:
        want = ref.infer(_x(16))
    with open_runtime("torch", model, device="cuda", precision="fp16", channels_last=True, cuda_graph=True) as rt:
        got = rt.infer(_x(16))
        assert not torch.backends.cudnn.allow_tf32  # TF32 off while a CUDA torch runtime is open
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-2
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed: the torch half of this test ran")
    for prefer_nhwc in (False, True):
        with open_runtime("ort", default_folder / "model.fp16.onnx", device="cuda", precision="fp16",
                          prefer_nhwc=prefer_nhwc) as rt:
            got = rt.infer(_x(16))
            on_device = rt.infer_async(torch.from_numpy(_x(16)).cuda())
            assert on_device.is_cuda  # I/O binding: the output stays on the GPU
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-2


def test_infer_all_respects_batch_range_and_pads_tail() -> None:
    from runtimes.base import Runtime

    class Probe(Runtime):
        backend = "probe"

        def __init__(self) -> None:
            super().__init__(device="cpu", precision="fp32", batch_range=(4, 8))
            self.sizes: list[int] = []

        def _infer(self, batch: np.ndarray) -> np.ndarray:
            self.sizes.append(len(batch))
            return batch.reshape(len(batch), -1)[:, :2]

    rt = Probe()
    x = np.arange(10 * 4, dtype=np.float32).reshape(10, 1, 2, 2)
    seen: list[int] = []
    out = rt.infer_all(x, 64, seen.append)
    assert rt.sizes == [8, 4] and seen == [8, 2]
    np.testing.assert_array_equal(out, x.reshape(10, -1)[:, :2])
    rt.static_shapes, rt.sizes = True, []  # compiled / captured: the tail is padded to the full chunk
    np.testing.assert_array_equal(rt.infer_all(x, 64), out)
    assert rt.sizes == [8, 8]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_torch_times_each_batch_size_once() -> None:
    from pipeline.model.zoo import build_model

    model = build_model("resnet8", num_classes=10, in_chans=1).eval()
    with open_runtime("torch", model, compile=True, compile_mode="default") as rt:
        assert rt.static_shapes and rt.mode == "compile"
        with open_runtime("torch", model) as eager:
            want = eager.infer_all(_x(5), 4)
        got = rt.infer_all(_x(5), 4)  # chunks of 4: one compiled shape, the tail padded
        assert list(rt.one_time_seconds) == [4] and rt.one_time_seconds[4] > 0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        rt.infer(_x(4))
        assert list(rt.one_time_seconds) == [4]  # no recompile for a shape seen before


def test_compile_cache_dir_respects_the_user_but_not_torchs_default(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from runtimes.torch_rt import use_compile_cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    use_compile_cache_dir(tmp_path / "a")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "a")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # filled in by torch, e.g. a FLOP count
    use_compile_cache_dir(tmp_path / "b")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "b")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice stands
    use_compile_cache_dir(tmp_path / "c")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


class _FakeRtxCache:
    """Stands in for tensorrt_rtx.IRuntimeCache: only the runner's cache bookkeeping is under test."""

    def __init__(self, accept: bool) -> None:
        self.accept, self.blob = accept, b""

    def deserialize(self, blob: bytes) -> bool:
        if self.accept:
            self.blob = bytes(blob)
        return self.accept

    def serialize(self) -> bytes:
        return self.blob


class _FakeRtxEngine:
    def __init__(self, accept: bool) -> None:
        self.cache = _FakeRtxCache(accept)
        self.context_config = None

    def create_runtime_config(self) -> object:
        engine = self

        class Config:
            def create_runtime_cache(self) -> _FakeRtxCache:
                return engine.cache

            def set_runtime_cache(self, cache: _FakeRtxCache) -> bool:
                self.cache = cache
                return True

        return Config()

    def create_execution_context(self, config: object) -> str:
        self.context_config = config
        return "context"


@pytest.mark.parametrize("accept", [True, False])
def test_rtx_runtime_cache_is_loaded_and_saved_beside_the_engine(tmp_path: Path, accept: bool) -> None:
    from runtimes.trt_rt import RuntimeCacheFile

    cache_file = tmp_path / "model.fp16.rtx.runtime_cache"
    cache_file.write_bytes(b"kernels from last run")
    engine = _FakeRtxEngine(accept)
    cache = RuntimeCacheFile(cache_file)
    assert cache.context(engine) == "context"
    assert engine.context_config.cache is engine.cache  # the context was made with the cache set
    assert engine.cache.blob == (b"kernels from last run" if accept else b"")
    cache.save()  # unchanged (accepted) or empty (rejected): the file is left alone
    assert cache_file.read_bytes() == b"kernels from last run"
    engine.cache.blob = b"kernels compiled now"
    cache.save()
    assert cache_file.read_bytes() == b"kernels compiled now"


def test_session_failures_are_told_apart(tmp_path: Path) -> None:
    """A graph onnxruntime cannot read is the file's fault (exit 2); an op it has no kernel for, or a provider or
    memory failure, is the backend's (exit 3, with the cause): never "corrupt" for what is not."""
    import onnx
    from onnx import TensorProto, helper

    from resnetx.errors import BackendUnavailable, BadInput
    from runtimes.ort_rt import open_ort, session_error

    def graph(name: str, node: object, dtype: int, domains: list) -> Path:
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", dtype, [1, 3])],
                              [helper.make_tensor_value_info("y", dtype, [1, 3])])
        path = tmp_path / name
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), *domains]), path)
        return path

    custom = graph("custom.onnx", helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example"),
                   TensorProto.FLOAT, [helper.make_opsetid("com.example", 1)])
    with pytest.raises(BackendUnavailable, match="has no kernel for an op of custom.onnx"):
        open_ort(custom)
    bf16 = graph("bf16.onnx", helper.make_node("Max", ["x", "x"], ["y"]), TensorProto.BFLOAT16, [])
    with pytest.raises(BackendUnavailable, match="has no kernel"):
        open_ort(bf16)
    (tmp_path / "garbage.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(BadInput, match="corrupt or not ONNX"):
        open_ort(tmp_path / "garbage.onnx")
    oom = RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer")
    told = session_error(oom, custom, "CUDAExecutionProvider")  # as onnxruntime words it: the cause, exit 3
    assert isinstance(told, BackendUnavailable) and "Failed to allocate memory" in str(told)
    assert isinstance(session_error(MemoryError(), custom, "CPUExecutionProvider"), BackendUnavailable)
