"""ONNX fp32 -> fp16 (fp32 I/O kept) and -> int8 with explicit Q/DQ from calibration data."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters.onnx import INPUT_NAME, OnnxArtifact, check_onnx, graph_batch, load_onnx, save_onnx
from resnetx.batching import batch_chunks
from resnetx.errors import BackendUnavailable, BadInput, first_line
from resnetx.files import atomic_write
from resnetx.lazy import lazy_import

if TYPE_CHECKING:
    import onnx
else:
    onnx = lazy_import("onnx")

__all__ = [
    "FP16_MAX",
    "DEFAULT_FP16_BLOCK_OPS",
    "Int8Target",
    "CalibMethod",
    "Int8Recipe",
    "INT8_RECIPES",
    "INT8_GRAPH_REVISION",
    "to_fp16",
    "quantize_int8",
]

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
INT8_GRAPH_REVISION = 2  # bumped when quantize_int8 makes a different graph from the same inputs (export's cache key)
# Ops whose fp16 form loses too much or has no fp16 kernel on common runtimes; ResNets have
# none of the first kind, but user graphs may (Softmax over many classes, reductions).
DEFAULT_FP16_BLOCK_OPS = ("Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceL2", "Exp", "Log", "Pow", "Sqrt")


class Int8Target(str, Enum):
    tensorrt = "tensorrt"  # symmetric int8 activations, float bias: what TensorRT's parser and fusions take
    cpu = "cpu"  # uint8 activations, int32 bias: what onnxruntime's x86 int8 kernels accelerate


class CalibMethod(str, Enum):
    max = "max"
    entropy = "entropy"
    percentile = "percentile"


@dataclass(frozen=True)
class Int8Recipe:
    """How the Q/DQ graph is laid out for one kind of target."""

    activation: str  # "int8" (symmetric) or "uint8" (asymmetric)
    op_types: tuple[str, ...]  # the ops whose inputs get Q/DQ pairs
    quantize_bias: bool


INT8_RECIPES = {
    # Q/DQ on conv/gemm inputs and residual adds: what TensorRT fuses
    Int8Target.tensorrt: Int8Recipe("int8", ("Conv", "Gemm", "Add"), False),
    Int8Target.cpu: Int8Recipe("uint8", ("Conv", "Gemm", "Add", "Relu", "Clip", "MaxPool", "GlobalAveragePool",
                                         "AveragePool", "Flatten"), True),
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
        log.warning("keeping %d node(s) in fp32 whose weights exceed the fp16 range: %s", len(overflow),
                    ", ".join(overflow))
    nodes |= set(overflow)
    originals = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    originals = {k: onnx.TensorProto.FromString(v.SerializeToString()) for k, v in originals.items()}
    with _quiet_warnings():
        fp16 = float16.convert_float_to_float16(
            model, keep_io_types=True, disable_shape_infer=False,
            op_block_list=list(keep_fp32_ops), node_block_list=sorted(nodes),
            min_positive_val=5.96e-8, max_finite_val=FP16_MAX,  # the real fp16 range, not 1e4
        )
    _restore_fp32_weights(fp16, originals)
    _drop_round_trip_casts(fp16)
    _set_meta(fp16, {"resnetx.precision": "fp16"})
    check_onnx(fp16, where=Path(dst).name)
    sha, size = save_onnx(fp16, dst)
    return OnnxArtifact(
        path=Path(dst), sha256=sha, precision="fp16", opset=_opset(fp16), size_bytes=size,
        seconds=time.perf_counter() - start, static_batch=graph_batch(fp16),
        details={"converter": "onnxconverter-common float16", "keep_fp32_ops": list(keep_fp32_ops),
                 "keep_fp32_nodes": sorted(nodes), "overflow_nodes": overflow},
    )


def _restore_fp32_weights(model: onnx.ModelProto, originals: dict[str, onnx.TensorProto]) -> None:
    """The converter stores even blocked nodes' weights in fp16 and casts them back up, which
    loses precision and turns out-of-range values into Inf. Put the fp32 weights back for them."""
    inits = {i.name: i for i in model.graph.initializer}
    consumers: Counter[str] = Counter(name for n in model.graph.node for name in n.input)
    drop = []
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        src = node.input[0] if node.op_type == "Cast" and node.input else None
        if to != onnx.TensorProto.FLOAT or src not in originals or src not in inits or consumers[src] != 1:
            continue
        inits[src].CopyFrom(originals[src])
        for other in model.graph.node:
            for k, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[k] = src
        drop.append(node)
    for node in drop:
        model.graph.node.remove(node)
    stale = {n for node in drop for n in (*node.output, node.input[0])}  # typed fp16 by the converter
    kept_vi = [vi for vi in model.graph.value_info if vi.name not in stale]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_vi)


def _drop_round_trip_casts(model: onnx.ModelProto) -> None:
    """fp32 -> Cast(fp16) -> Cast(fp32) only loses range (a kept-fp32 last layer feeding fp32
    logits would overflow): let the fp32 value through unchanged."""
    def to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    drop = []
    for a in model.graph.node:
        if to(a) == onnx.TensorProto.FLOAT16 and a.output and a.output[0] in graph_outputs:
            # the converter's keep_io_types misses outputs of blocked last nodes: they stay fp32
            next(at for at in a.attribute if at.name == "to").i = onnx.TensorProto.FLOAT
            out = next(o for o in model.graph.output if o.name == a.output[0])
            out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
            continue
        users = consumers.get(a.output[0], []) if a.output else []
        if to(a) != onnx.TensorProto.FLOAT16 or a.output[0] in graph_outputs or len(users) != 1:
            continue
        b = users[0]
        if to(b) != onnx.TensorProto.FLOAT:
            continue
        b.op_type = "Identity"
        del b.attribute[:]
        b.input[0] = a.input[0]
        drop.append(a)
    for a in drop:
        model.graph.node.remove(a)


def _nodes_with_large_weights(model: onnx.ModelProto, limit: float) -> list[str]:
    big = {
        init.name for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT and onnx.numpy_helper.to_array(init).size
        and float(np.abs(onnx.numpy_helper.to_array(init)).max()) > limit
    }
    return [n.name for n in model.graph.node if big & set(n.input)]


# --------------------------------------------------------------------------- int8
def _rebatch(batches: Iterable[np.ndarray], fixed: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """(batch, real images): as given, or in chunks of a graph's fixed batch (the last padded with copies)."""
    for b in batches:
        if fixed is None:
            yield b, len(b)
        else:
            yield from batch_chunks(b, fixed, pad_to=fixed)


class _Reader:
    """onnxruntime CalibrationDataReader over preprocessed float32 batches, each with its count of real images."""

    def __init__(self, batches: Iterable[tuple[np.ndarray, int]],
                 on_images: Callable[[int], None] | None = None) -> None:
        self._it: Iterator[tuple[np.ndarray, int]] = iter(batches)
        self._on_images = on_images
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.count and self._on_images:  # the previous batch has been run through the model
            self._on_images(self.count)
        item = next(self._it, None)
        if item is None:
            return None
        batch, real = item
        self.count += real
        return {INPUT_NAME: np.ascontiguousarray(batch, np.float32)}

    def rewind(self) -> None:  # pragma: no cover - single pass is all quantize_static needs
        raise NotImplementedError


def quantize_int8(
    src: Path,
    dst: Path,
    calib: Iterable[np.ndarray] | None,
    *,
    recipe: Int8Target | str = Int8Target.tensorrt,
    method: CalibMethod | str = CalibMethod.max,
    cache: Path | None = None,
    exclude_nodes: Iterable[str] = (),
    quantize_ends: bool = False,
    percentile: float = 99.99,
    on_images: Callable[[int], None] | None = None,
) -> OnnxArtifact:
    """Explicit-quantization int8 graph (QDQ) from calibration batches.

    `cache` (a JSON file of tensor ranges) is reused when it exists; the caller owns its
    invalidation (resnetx keys it by model, data, count, method and recipe). `calib` may be
    None only when the cache exists. Unless `quantize_ends`, the stem conv (1-3 input channels,
    little compute) and the classifier stay in float: quantizing them costs the most accuracy
    for the least speed (measured on the default model: top-1 agreement 97% -> 99%).
    """
    recipe, method = Int8Target(recipe), CalibMethod(method)
    cached = cache is not None and Path(cache).is_file()
    if calib is None and not cached:
        raise BadInput("int8 needs calibration data (--calib-data) or an existing calibration cache")
    model = load_onnx(src)
    ends = [] if quantize_ends else _end_layers(model)
    excluded = set(exclude_nodes) | set(ends)
    if unknown := excluded - {n.name for n in model.graph.node}:
        raise BadInput(f"--keep-fp32 names unknown layer(s) {', '.join(sorted(unknown))}; "
                       "layer names are module paths such as layer3.1.conv2 (see resnetx verify --localize)")
    fixed = graph_batch(model)
    reader = _Reader(_rebatch(calib, fixed) if calib is not None else [], on_images)
    start = time.perf_counter()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-quant-", dir=dst.parent) as tmp, _quiet_warnings():
        out = Path(tmp) / "int8.onnx"
        _quantize_static(src, out, None if cached else reader, recipe, method, cache, excluded, percentile)
        q = onnx.load(str(out))
    _float_inputs(q, excluded)
    if not cached and reader.count == 0:
        raise BadInput("int8 calibration saw no images; check --calib-data and --calib-samples")
    if cache is not None and not cached:
        _sort_ranges(Path(cache))
    _set_meta(q, {"resnetx.precision": "int8", "resnetx.int8_recipe": recipe.value,
                  "resnetx.calib_method": method.value})
    check_onnx(q, where=dst.name)
    sha, size = save_onnx(q, dst)
    r = INT8_RECIPES[recipe]
    return OnnxArtifact(
        path=dst, sha256=sha, precision="int8", opset=_opset(q), size_bytes=size,
        seconds=time.perf_counter() - start, static_batch=fixed,
        details={"quantizer": "onnxruntime.quantization.quantize_static (QDQ)", "recipe": recipe.value,
                 "activation": r.activation, "weights": "int8 per-channel symmetric",
                 "bias": "int32" if r.quantize_bias else "float", "method": method.value,
                 "calibration_images": reader.count, "calibration_cache_hit": cached,
                 "qdq_pairs": [n.op_type for n in q.graph.node].count("QuantizeLinear"),
                 "excluded_nodes": sorted(excluded), "float_ends": ends},
    )


def _sort_ranges(cache: Path) -> None:
    """onnxruntime writes the ranges in set order (hash-seed dependent): sorted, the same run gives the same bytes."""
    ranges = json.loads(cache.read_text())
    atomic_write(cache, (json.dumps(ranges, sort_keys=True, indent=1) + "\n").encode())


def _quantize_static(src: Path, out: Path, reader: _Reader | None, recipe: Int8Target, method: CalibMethod,
                     cache: Path | None, excluded: set[str], percentile: float) -> None:
    """onnxruntime's quantize_static with the recipe's layout; its errors become one-line messages."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    except ImportError as e:
        raise BackendUnavailable("int8 quantization needs onnxruntime: pip install onnxruntime") from e
    r = INT8_RECIPES[recipe]
    extra: dict[str, Any] = {"ActivationSymmetric": r.activation == "int8", "WeightSymmetric": True,
                             "QuantizeBias": r.quantize_bias, "CalibMovingAverage": False}
    if method is CalibMethod.percentile:
        extra["CalibPercentile"] = percentile
    calibrate = {CalibMethod.max: CalibrationMethod.MinMax, CalibMethod.entropy: CalibrationMethod.Entropy,
                 CalibMethod.percentile: CalibrationMethod.Percentile}[method]
    try:
        quantize_static(
            str(src), str(out), reader,
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(r.op_types), per_channel=True,
            reduce_range=False, activation_type=QuantType.QInt8 if r.activation == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=sorted(excluded), calibrate_method=calibrate,
            extra_options=extra, calibration_cache_path=str(cache) if cache else None,
            calibration_providers=["CPUExecutionProvider"],
        )
    except (ValueError, RuntimeError) as e:
        if reader is not None and reader.count == 0:
            raise BadInput("int8 calibration saw no images; check --calib-data and --calib-samples") from e
        raise BadInput(f"int8 calibration failed: {first_line(e)}") from e


def _float_inputs(model: onnx.ModelProto, excluded: set[str]) -> None:
    """An excluded layer reads the float tensor, not its fake-quantized copy. onnxruntime leaves the layer's
    own weights float but, when another consumer of its input is quantized (a residual add, a downsample
    conv), feeds it through that consumer's Q/DQ pair: the layer kept in fp32 still saw int8 rounding, and
    TensorRT counted it as an int8 layer. Q/DQ pairs left without consumers are removed."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    for node in g.node:
        if node.name not in excluded:
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":  # an activation's pair (weights have no Q node)
                node.input[i] = q.input[0]
    outputs = {o.name for o in g.output}
    while True:  # drop DQ nodes nobody reads, then the Q nodes that fed only them
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)


def _end_layers(model: onnx.ModelProto) -> list[str]:
    """The first conv fed by the input and the last weighted layer producing the logits."""
    g = model.graph
    first = next((n.name for n in g.node if n.op_type == "Conv" and INPUT_NAME in n.input), None)
    last = next((n.name for n in reversed(g.node) if n.op_type in ("Gemm", "MatMul", "Conv")), None)
    return [n for n in (first, last) if n]


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
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # calibrators print
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
