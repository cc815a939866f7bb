"""ONNX fp32 -> fp16 (fp32 I/O kept) and -> int8 with explicit Q/DQ from calibration data."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from exporters.onnx import INPUT_NAME, OnnxArtifact, check_onnx, load_onnx, save_onnx
from runtimes.errors import BackendUnavailable, BadInput

__all__ = [
    "FP16_MAX",
    "DEFAULT_FP16_BLOCK_OPS",
    "INT8_RECIPES",
    "CALIB_METHODS",
    "Int8Recipe",
    "to_fp16",
    "quantize_int8",
]

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
# Ops whose fp16 form loses too much or has no fp16 kernel on common runtimes; ResNets have
# none of the first kind, but user graphs may (Softmax over many classes, reductions).
DEFAULT_FP16_BLOCK_OPS = ("Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceL2", "Exp", "Log", "Pow", "Sqrt")
CALIB_METHODS = ("max", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Recipe:
    """How the Q/DQ graph is laid out for one kind of target."""

    name: str
    activation: str  # "int8" (symmetric) or "uint8" (asymmetric)
    op_types: tuple[str, ...]
    quantize_bias: bool
    help: str


INT8_RECIPES = {
    "tensorrt": Int8Recipe(
        "tensorrt", "int8", ("Conv", "Gemm", "Add"), False,
        "symmetric int8 activations, per-channel symmetric weights, float biases, Q/DQ on conv/gemm "
        "inputs and residual adds (what TensorRT fuses)",
    ),
    "cpu": Int8Recipe(
        "cpu", "uint8", ("Conv", "Gemm", "Add", "MaxPool", "GlobalAveragePool", "AveragePool", "Flatten"), True,
        "uint8 activations, per-channel int8 weights, int32 biases (what onnxruntime's x86 kernels accelerate)",
    ),
}


# --------------------------------------------------------------------------- fp16
def to_fp16(
    src: Path,
    dst: Path,
    *,
    keep_fp32_ops: Iterable[str] = DEFAULT_FP16_BLOCK_OPS,
    keep_fp32_nodes: Iterable[str] = (),
) -> OnnxArtifact:
    """fp16 weights and compute; `input`/`logits` stay fp32; named ops/nodes stay fp32.

    Weights outside the fp16 range would become Inf: nodes that own such weights are kept in
    fp32 and listed in the result, never clamped silently.
    """
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise BackendUnavailable("fp16 conversion needs onnxconverter-common: pip install onnxconverter-common") from e
    start = time.perf_counter()
    model = load_onnx(src)
    nodes = set(keep_fp32_nodes)
    unknown = nodes - {n.name for n in model.graph.node}
    if unknown:
        raise BadInput(f"--keep-fp32 names unknown layer(s) {', '.join(sorted(unknown))}; "
                       "layer names are module paths such as layer3.1.conv2 (see resnetx verify --localize)")
    overflow = _nodes_with_large_weights(model, FP16_MAX)
    if overflow:
        log.warning("keeping %d node(s) in fp32 whose weights exceed the fp16 range: %s", len(overflow), ", ".join(overflow))
    nodes |= set(overflow)
    with _quiet_warnings():
        fp16 = float16.convert_float_to_float16(
            model, keep_io_types=True, disable_shape_infer=False,
            op_block_list=list(keep_fp32_ops), node_block_list=sorted(nodes),
        )
    _set_meta(fp16, {"resnetx.precision": "fp16"})
    check_onnx(fp16, where=Path(dst).name)
    sha, size = save_onnx(fp16, dst)
    return OnnxArtifact(
        path=Path(dst), sha256=sha, precision="fp16", opset=_opset(fp16), size_bytes=size,
        seconds=time.perf_counter() - start,
        details={"converter": "onnxconverter-common float16", "keep_fp32_ops": list(keep_fp32_ops),
                 "keep_fp32_nodes": sorted(nodes), "overflow_nodes": overflow},
    )


def _nodes_with_large_weights(model: onnx.ModelProto, limit: float) -> list[str]:
    big = {
        init.name for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT and numpy_helper.to_array(init).size
        and float(np.abs(numpy_helper.to_array(init)).max()) > limit
    }
    return [n.name for n in model.graph.node if big & set(n.input)]


# --------------------------------------------------------------------------- int8
class _Reader:
    """onnxruntime CalibrationDataReader over preprocessed float32 batches."""

    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._it: Iterator[np.ndarray] = iter(batches)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        if batch is None:
            return None
        self.count += len(batch)
        return {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}

    def rewind(self) -> None:  # pragma: no cover - single pass is all quantize_static needs
        raise NotImplementedError


def quantize_int8(
    src: Path,
    dst: Path,
    calib: Iterable[np.ndarray] | None,
    *,
    recipe: str = "tensorrt",
    method: str = "max",
    cache: Path | None = None,
    exclude_nodes: Iterable[str] = (),
    percentile: float = 99.99,
) -> OnnxArtifact:
    """Explicit-quantization int8 graph (QDQ) from calibration batches.

    `cache` (a JSON file of tensor ranges) is reused when it exists; the caller owns its
    invalidation (resnetx keys it by model, data, count, method and recipe). `calib` may be
    None only when the cache exists.
    """
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError as e:
        raise BackendUnavailable("int8 quantization needs onnxruntime: pip install onnxruntime") from e
    if recipe not in INT8_RECIPES:
        raise BadInput(f"unknown --int8-target {recipe!r}; use one of {', '.join(INT8_RECIPES)}")
    if method not in CALIB_METHODS:
        raise BadInput(f"unknown --calib-method {method!r}; use one of {', '.join(CALIB_METHODS)}")
    r = INT8_RECIPES[recipe]
    cached = cache is not None and Path(cache).is_file()
    if calib is None and not cached:
        raise BadInput("int8 needs calibration data (--calib-data) or an existing calibration cache")
    model = load_onnx(src)
    excluded = set(exclude_nodes)
    unknown = excluded - {n.name for n in model.graph.node}
    if unknown:
        raise BadInput(f"--keep-fp16/--keep-fp32 names unknown layer(s) {', '.join(sorted(unknown))}; "
                       "layer names are module paths such as layer3.1.conv2 (see resnetx verify --localize)")
    calib_method = {"max": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile}[method]
    extra: dict[str, Any] = {
        "ActivationSymmetric": r.activation == "int8",
        "WeightSymmetric": True,
        "QuantizeBias": r.quantize_bias,
        "CalibMovingAverage": False,
    }
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    reader = _Reader(calib if calib is not None else [])
    start = time.perf_counter()
    dst = Path(dst)
    with tempfile.TemporaryDirectory(prefix=".tmp-quant-", dir=dst.parent) as tmp, _quiet_warnings():
        out = Path(tmp) / "int8.onnx"
        try:
            quantize_static(
                str(src), str(out), reader if not cached else None,
                quant_format=QuantFormat.QDQ, op_types_to_quantize=list(r.op_types), per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8 if r.activation == "int8" else QuantType.QUInt8,
                weight_type=QuantType.QInt8, nodes_to_exclude=sorted(excluded),
                calibrate_method=calib_method, extra_options=extra,
                calibration_cache_path=str(cache) if cache else None,
                calibration_providers=["CPUExecutionProvider"],
            )
        except (ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise BadInput(f"int8 calibration failed: {first}") from e
        q = onnx.load(str(out))
    if not cached and reader.count == 0:
        raise BadInput("int8 calibration saw no images; check --calib-data and --calib-samples")
    _set_meta(q, {"resnetx.precision": "int8", "resnetx.int8_recipe": recipe, "resnetx.calib_method": method})
    check_onnx(q, where=dst.name)
    sha, size = save_onnx(q, dst)
    ops = [n.op_type for n in q.graph.node]
    return OnnxArtifact(
        path=dst, sha256=sha, precision="int8", opset=_opset(q), size_bytes=size,
        seconds=time.perf_counter() - start,
        details={"quantizer": "onnxruntime.quantization.quantize_static (QDQ)", "recipe": recipe,
                 "activation": r.activation, "weights": "int8 per-channel symmetric",
                 "bias": "int32" if r.quantize_bias else "float", "method": method,
                 "calibration_images": reader.count, "calibration_cache_hit": cached,
                 "qdq_pairs": ops.count("QuantizeLinear"), "excluded_nodes": sorted(excluded)},
    )


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _set_meta(model: onnx.ModelProto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for k, v in values.items():
        if k in existing:
            existing[k].value = v
        else:
            model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    """The converters warn through `warnings` and the root logger; keep that out of the user's terminal."""
    import warnings

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
