"""ONNX -> serialized TensorRT engine with `tensorrt` (enterprise) or `tensorrt_rtx`, strongly typed."""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.onnx import INPUT_NAME, atomic_write, sha256_bytes
from runtimes.errors import BackendUnavailable, BadInput, ResnetxError

__all__ = [
    "FLAVORS",
    "RTX_PORTABLE_CCS",
    "EngineArtifact",
    "import_flavor",
    "available_flavors",
    "build_engine",
    "gpu_target",
]

log = logging.getLogger(__name__)

# flavor -> (python module, pip package); "rtx" engines are built ahead of time without a GPU.
FLAVORS = {
    "tensorrt": ("tensorrt", "tensorrt-cu13"),
    "rtx": ("tensorrt_rtx", "tensorrt-rtx-cu13"),
}
RTX_PORTABLE_CCS = ("SM80", "SM86", "SM89", "SM120")


@dataclass
class EngineArtifact:
    path: Path
    sha256: str
    flavor: str
    version: str
    precision: str
    profile: tuple[int, int, int]
    seconds: float
    size_bytes: int
    source_sha256: str
    target: dict[str, Any] = field(default_factory=dict)


def import_flavor(flavor: str) -> Any:
    if flavor not in FLAVORS:
        raise BadInput(f"unknown engine flavor {flavor!r}; use one of {', '.join(FLAVORS)}")
    module, pip = FLAVORS[flavor]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailable(f"{module} is not installed: pip install {pip}") from e
    except OSError as e:  # wheel present but its shared libraries do not load
        raise BackendUnavailable(f"{module} is installed but cannot load its libraries ({e})") from e


def available_flavors() -> list[str]:
    out = []
    for flavor in FLAVORS:
        try:
            import_flavor(flavor)
            out.append(flavor)
        except BackendUnavailable:
            pass
    return out


def _logger(trt: Any, sink: list[str]) -> Any:
    class _Log(trt.ILogger):  # keep errors to quote them in our message
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if severity <= trt.ILogger.Severity.ERROR:
                sink.append(msg)
            elif severity <= trt.ILogger.Severity.WARNING:
                log.debug("TensorRT: %s", msg)

    return _Log()


def gpu_target() -> dict[str, Any]:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    return {"gpu": None, "compute_capability": None}


def build_engine(
    onnx_path: Path,
    dst: Path,
    *,
    flavor: str,
    precision: str,
    input_chw: tuple[int, int, int],
    profile: tuple[int, int, int] = (1, 8, 64),
    workspace_mb: int | None = None,
    opt_level: int = 3,
    timing_cache: Path | None = None,
    compute_capabilities: tuple[str, ...] = RTX_PORTABLE_CCS,
) -> EngineArtifact:
    """Parse the ONNX file (so external weights resolve) and build a strongly typed engine.

    Precision lives in the graph (fp16 tensors, Q/DQ pairs); only TensorRT < 9 without the
    strongly typed flag would need builder precision flags, and those are set from `precision`.
    """
    trt = import_flavor(flavor)
    lo, opt, hi = profile
    if not 1 <= lo <= opt <= hi:
        raise BadInput(f"--batch-range must be MIN<=OPT<=MAX with MIN>=1; got {lo},{opt},{hi}")
    if not 0 <= opt_level <= 5:
        raise BadInput(f"--opt-level must be 0..5; got {opt_level}")
    errors: list[str] = []
    logger = _logger(trt, errors)
    builder = trt.Builder(logger)
    strongly = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly else 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT <= 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        msgs = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)] or errors
        raise BadInput(f"{flavor} cannot parse {Path(onnx_path).name}: {'; '.join(msgs)[:400]}")
    layers = _network_precision(trt, network, precision, Path(onnx_path).name) if strongly else {}
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.builder_optimization_level = opt_level
    tf32 = hasattr(trt.BuilderFlag, "TF32") and precision != "fp32"
    if hasattr(trt.BuilderFlag, "TF32") and not tf32:  # on by default; an fp32 engine computes in fp32
        config.clear_flag(trt.BuilderFlag.TF32)
    if not strongly:  # old TensorRT: precision from builder flags
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    prof = builder.create_optimization_profile()
    c, h, w = input_chw
    prof.set_shape(INPUT_NAME, (lo, c, h, w), (opt, c, h, w), (hi, c, h, w))
    config.add_optimization_profile(prof)
    target: dict[str, Any] = {}
    if flavor == "rtx":
        ccs = tuple(cc.upper() for cc in compute_capabilities)
        bad = [cc for cc in ccs if not hasattr(trt.ComputeCapability, cc)]
        if bad:
            known = [a for a in dir(trt.ComputeCapability) if a.startswith("SM")]
            raise BadInput(f"unknown compute capability {', '.join(bad)}; TensorRT-RTX knows {', '.join(known)}")
        config.num_compute_capabilities = len(ccs)
        for i, cc in enumerate(ccs):
            config.set_compute_capability(getattr(trt.ComputeCapability, cc), i)
        target = {"compute_capabilities": list(ccs)}
    else:
        target = gpu_target()
        cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise ResnetxError(f"{flavor} failed to build an engine from {Path(onnx_path).name}: {'; '.join(errors)[:400]}")
    data = bytes(plan)
    atomic_write(Path(dst), data)
    if flavor == "tensorrt" and timing_cache is not None:
        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return EngineArtifact(
        path=Path(dst), sha256=sha256_bytes(data), flavor=flavor, version=str(trt.__version__),
        precision=precision, profile=(lo, opt, hi), seconds=seconds, size_bytes=len(data),
        source_sha256=sha256_bytes(Path(onnx_path).read_bytes()),
        target={**target, "strongly_typed": strongly, "opt_level": opt_level, "tf32": tf32, "network": layers},
    )


def _network_precision(trt: Any, network: Any, precision: str, name: str) -> dict[str, int]:
    """What the strongly typed network will compute in, checked before the build: an fp16 engine whose
    convolutions all run in fp32 (or an int8 one without Q/DQ) is the silent failure users meet when
    precision flags stop working, so it is refused here rather than shipped."""
    compute = (trt.LayerType.CONVOLUTION, trt.LayerType.MATRIX_MULTIPLY)
    producer: dict[str, Any] = {}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    for layer in layers:
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer.type
    matmuls = [la for la in layers if la.type in compute]
    counts = {
        "compute_layers": len(matmuls),
        "fp16_compute_layers": sum(la.get_input(0).dtype == trt.DataType.HALF for la in matmuls),
        "int8_compute_layers": sum(producer.get(la.get_input(0).name) == trt.LayerType.DEQUANTIZE for la in matmuls),
        "quantize_layers": sum(la.type == trt.LayerType.QUANTIZE for la in layers),
    }
    wrong = {
        "fp16": counts["fp16_compute_layers"] == 0,
        "int8": counts["int8_compute_layers"] == 0,
        "fp32": counts["fp16_compute_layers"] > 0 or counts["quantize_layers"] > 0,
    }.get(precision, False)
    if wrong:
        raise BadInput(f"{name} would not build a {precision} engine: of its {counts['compute_layers']} conv/matmul "
                       f"layers {counts['fp16_compute_layers']} compute in fp16 and {counts['int8_compute_layers']} "
                       f"take int8 (Q/DQ) inputs; re-export the {precision} ONNX with resnetx export --force")
    return counts
