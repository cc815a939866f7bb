"""ONNX -> serialized TensorRT engine with `tensorrt` (enterprise) or `tensorrt_rtx`, strongly typed."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.onnx import INPUT_NAME
from resnetx.errors import BadInput, ExportFailed
from resnetx.files import atomic_write, file_sha256, sha256_bytes
from resnetx.flavors import RTX_PORTABLE_CCS, EngineTarget, Flavor, HardwareCompat, import_flavor

__all__ = ["EngineArtifact", "build_engine", "gpu_target"]

log = logging.getLogger(__name__)


@dataclass
class EngineArtifact:
    path: Path
    sha256: str
    target: EngineTarget  # flavour, version, batch profile and the GPUs it runs on
    seconds: float
    size_bytes: int
    source_sha256: str
    strongly_typed: bool
    opt_level: int
    tf32: bool
    network: dict[str, int] = field(default_factory=dict)  # what its conv/matmul layers compute in


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


def gpu_target() -> tuple[str | None, str | None]:
    """(name, compute capability) of the GPU an enterprise TensorRT engine is built on and for."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except ImportError:
        pass
    return None, None


def _parse(trt: Any, onnx_path: Path, flavor: Flavor, logger: Any, errors: list[str]) -> tuple[Any, Any, Any, bool]:
    """(builder, network, parser, strongly typed), the ONNX file parsed into the network from the file (so that
    external weights resolve). The parser owns the weights the network points at: keep it while building."""
    builder = trt.Builder(logger)
    strongly = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly else 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT <= 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        msgs = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)] or errors
        raise BadInput(f"{flavor.value} cannot parse {onnx_path.name}: {'; '.join(msgs)[:400]}")
    return builder, network, parser, strongly


def _set_targets(trt: Any, config: Any, flavor: Flavor, ccs: tuple[str, ...],
                 timing_cache: Path | None) -> tuple[tuple[str, ...], str | None, str | None]:
    """RTX: the compute capabilities to build for; enterprise: this GPU, with the timing cache."""
    if flavor is Flavor.rtx:
        ccs = tuple(cc.upper() for cc in ccs)
        if bad := [cc for cc in ccs if not hasattr(trt.ComputeCapability, cc)]:
            known = [a for a in dir(trt.ComputeCapability) if a.startswith("SM")]
            raise BadInput(f"unknown compute capability {', '.join(bad)}; TensorRT-RTX knows {', '.join(known)}")
        config.num_compute_capabilities = len(ccs)
        for i, cc in enumerate(ccs):
            config.set_compute_capability(getattr(trt.ComputeCapability, cc), i)
        return ccs, None, None
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), ignore_mismatch=False)
    return (), *gpu_target()


def build_engine(
    onnx_path: Path,
    dst: Path,
    *,
    flavor: Flavor | str,
    precision: str,
    input_chw: tuple[int, int, int],
    profile: tuple[int, int, int] = (1, 8, 64),
    workspace_mb: int | None = None,
    opt_level: int = 3,
    timing_cache: Path | None = None,
    compute_capabilities: tuple[str, ...] = RTX_PORTABLE_CCS,
    hardware_compat: HardwareCompat | str = HardwareCompat.none,
) -> EngineArtifact:
    """Parse the ONNX file and build a strongly typed engine: precision lives in the graph (fp16 tensors, Q/DQ
    pairs). Only a TensorRT without strong typing gets builder precision flags, set from `precision`. An
    enterprise engine gets TensorRT's hardware compatibility level `hardware_compat`."""
    flavor = Flavor(flavor)
    trt = import_flavor(flavor)
    lo, opt, hi = profile
    if not 1 <= lo <= opt <= hi:
        raise BadInput(f"engine profile {lo},{opt},{hi}: needs 1 <= MIN <= OPT <= MAX")
    if not 0 <= opt_level <= 5:
        raise BadInput(f"builder optimization level {opt_level}: needs 0..5")
    errors: list[str] = []
    logger = _logger(trt, errors)
    builder, network, _parser, strongly = _parse(trt, Path(onnx_path), flavor, logger, errors)
    layers = _network_precision(trt, network, precision, Path(onnx_path).name) if strongly else {}
    config = builder.create_builder_config()
    if workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.builder_optimization_level = opt_level
    tf32 = _set_precision_flags(trt, config, precision, strongly)
    prof = builder.create_optimization_profile()
    prof.set_shape(INPUT_NAME, (lo, *input_chw), (opt, *input_chw), (hi, *input_chw))
    config.add_optimization_profile(prof)
    ccs, gpu, cc = _set_targets(trt, config, flavor, tuple(compute_capabilities), timing_cache)
    compat = HardwareCompat(hardware_compat)
    if flavor is Flavor.tensorrt:
        _set_compat(trt, config, compat)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        raise ExportFailed(f"{flavor.value} failed to build an engine from {Path(onnx_path).name}: "
                           f"{'; '.join(errors)[:400]}")
    data = bytes(plan)
    atomic_write(Path(dst), data)
    if flavor is Flavor.tensorrt and timing_cache is not None:
        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    target = EngineTarget(flavor, str(trt.__version__), precision, (lo, opt, hi), ccs, gpu, cc,
                          compat if flavor is Flavor.tensorrt else HardwareCompat.none)
    return EngineArtifact(path=Path(dst), sha256=sha256_bytes(data), target=target, seconds=seconds,
                          size_bytes=len(data), source_sha256=file_sha256(Path(onnx_path)), strongly_typed=strongly,
                          opt_level=opt_level, tf32=tf32, network=layers)


def _set_compat(trt: Any, config: Any, compat: HardwareCompat) -> None:
    """TensorRT's hardware compatibility level; a TensorRT without the level asked for refuses, never ignores it."""
    if compat is HardwareCompat.none:
        return
    level = {HardwareCompat.ampere_plus: "AMPERE_PLUS", HardwareCompat.same_cc: "SAME_COMPUTE_CAPABILITY"}[compat]
    levels = getattr(trt, "HardwareCompatibilityLevel", None)
    if levels is None or not hasattr(levels, level):
        raise BadInput(f"TensorRT {trt.__version__} has no hardware compatibility level {level} "
                       f"(--hardware-compat {compat.value}); upgrade TensorRT, or leave the option out")
    config.hardware_compatibility_level = getattr(levels, level)


def _set_precision_flags(trt: Any, config: Any, precision: str, strongly: bool) -> bool:
    """TF32 (on by default) cleared for fp32 engines: fp32 means fp32. Returns whether TF32 stays allowed."""
    has_tf32 = hasattr(trt.BuilderFlag, "TF32")
    tf32 = has_tf32 and precision != "fp32"
    if has_tf32 and not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if not strongly:  # old TensorRT: precision from builder flags
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    return tf32


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
