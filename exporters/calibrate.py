"""Calibration: the range of every activation tensor of an fp32 graph over real images, by one method.

Ranges are computed once per method and reused by every int8 graph made from them (an export with other
layers kept in float, each trial of the accuracy search). `max` and `mean-max` reduce each tensor in the
graph itself (ReduceMin/ReduceMax per image), so any model size calibrates in little memory; `percentile`
and `entropy` use onnxruntime's histogram calibrators.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporters.equalize import fp32_for_int8
from exporters.onnx import graph_batch, quiet_converters
from resnetx.batching import batch_chunks
from resnetx.contract import INPUT_NAME
from resnetx.errors import BackendUnavailable, BadInput, first_line
from resnetx.files import atomic_write_text
from resnetx.lazy import lazy_import

if TYPE_CHECKING:
    import onnx
else:
    onnx = lazy_import("onnx")

__all__ = ["CalibMethod", "Ranges", "calibrate"]


class CalibMethod(str, Enum):
    mean_max = "mean-max"  # per tensor, the mean over images of each image's min and max (NNCF's default)
    max = "max"  # the min and max over all images
    entropy = "entropy"  # the threshold that keeps the KL divergence of the histogram smallest
    percentile = "percentile"  # the 99.99th percentile of |x|


@dataclass(frozen=True)
class Ranges:
    """(low, high) of each activation tensor, the method and how many images they came from."""

    method: CalibMethod
    images: int
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    seconds: float = 0.0

    def amax(self, tensor: str) -> float:
        lo, hi = self.ranges[tensor]
        return max(abs(lo), abs(hi))

    def save(self, path: Path) -> None:
        """Sorted keys: the same run gives the same bytes."""
        d = {"method": self.method.value, "images": self.images,
             "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in sorted(self.ranges.items())}}
        atomic_write_text(path, json.dumps(d, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Ranges | None:
        """The ranges stored at `path`, or None when there are none or they cannot be read."""
        try:
            d = json.loads(Path(path).read_text())
            return cls(CalibMethod(d["method"]), int(d["images"]), {k: (v[0], v[1]) for k, v in d["ranges"].items()})
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _float_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float activation: the graph input and each node output that is not a constant."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type for vi in [*inferred.graph.value_info, *inferred.graph.output,
                                                      *inferred.graph.input]}
    inits = {i.name for i in model.graph.initializer}
    names = [INPUT_NAME] + [o for n in model.graph.node if n.op_type != "Constant" for o in n.output]
    return [t for t in names if t not in inits and t in types and types[t].elem_type == onnx.TensorProto.FLOAT
            and len(types[t].shape.dim) >= 2]


def _reducing_graph(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """The graph with each tensor's per-image min and max as outputs (shape [N]): small, whatever the model."""
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    inferred = onnx.shape_inference.infer_shapes(model)
    rank = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in [*inferred.graph.value_info, *inferred.graph.output,
                                                                   *inferred.graph.input]}
    for i, t in enumerate(tensors):
        axes = helper.make_tensor(f"rx_axes_{i}", onnx.TensorProto.INT64, [rank[t] - 1], list(range(1, rank[t])))
        m.graph.initializer.append(axes)
        for op in ("ReduceMin", "ReduceMax"):
            out = f"rx_{op}_{i}"
            m.graph.node.append(helper.make_node(op, [t, axes.name], [out], keepdims=0))
            m.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, [None]))
    return m


def _per_image_extremes(model: onnx.ModelProto, batches: Iterator[tuple[np.ndarray, int]], tensors: list[str],
                        on_images: Callable[[int], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """(images x tensors) arrays of each image's min and max of each tensor."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(_reducing_graph(model, tensors).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    lows, highs, seen = [], [], 0
    for x, real in batches:
        out = sess.run(None, {INPUT_NAME: x})
        lows.append(np.stack(out[0::2], 1)[:real])
        highs.append(np.stack(out[1::2], 1)[:real])
        seen += real
        if on_images:
            on_images(seen)
    if not seen:
        raise BadInput("int8 calibration saw no images; check --calib-data and --calib-samples")
    return np.concatenate(lows), np.concatenate(highs)


def _histogram_ranges(src: Path, batches: Iterator[tuple[np.ndarray, int]], method: CalibMethod, op_types: list[str],
                      symmetric: bool, percentile: float, on_images: Callable[[int], None] | None,
                      fixed: bool = False) -> tuple[dict, int]:
    """onnxruntime's percentile or entropy calibrator, fed one image at a time (its histograms need one shape;
    a fixed-batch graph gets its own batches, already of one shape)."""
    try:
        from onnxruntime.quantization import CalibrationMethod, create_calibrator
    except ImportError as e:
        raise BackendUnavailable("int8 calibration needs onnxruntime: pip install onnxruntime") from e
    calibrate_method = CalibrationMethod.Percentile if method is CalibMethod.percentile else CalibrationMethod.Entropy
    extra = {"symmetric": symmetric, "percentile": percentile}
    images = batches if fixed else ((x[i : i + 1], 1) for x, real in batches for i in range(real))
    reader = _Reader(images, on_images)
    with tempfile.TemporaryDirectory(prefix="rx-calib-") as tmp, quiet_converters():
        cal = create_calibrator(Path(src), op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=calibrate_method, providers=["CPUExecutionProvider"],
                                extra_options=extra)
        try:
            cal.collect_data(reader)
            data = cal.compute_data()
        except (ValueError, RuntimeError) as e:
            if not reader.count:
                raise BadInput("int8 calibration saw no images; check --calib-data and --calib-samples") from e
            raise BadInput(f"int8 calibration failed: {first_line(e)}") from e
    if not reader.count:
        raise BadInput("int8 calibration saw no images; check --calib-data and --calib-samples")
    return {k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))) for k, v in data.data.items()}, \
        reader.count


class _Reader:
    """onnxruntime CalibrationDataReader over (batch, real images) pairs."""

    def __init__(self, batches: Iterator[tuple[np.ndarray, int]], on_images: Callable[[int], None] | None) -> None:
        self._it = batches
        self._on_images = on_images
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._it, None)
        if item is None:
            return None
        self.count += item[1]
        if self._on_images and self.count % 16 == 0:
            self._on_images(self.count)
        return {INPUT_NAME: np.ascontiguousarray(item[0], np.float32)}


def _rebatch(batches: Iterable[np.ndarray], fixed: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """(batch, real images): as given, or in chunks of a graph's fixed batch (the last padded with copies)."""
    for b in batches:
        if fixed is None:
            yield np.ascontiguousarray(b, np.float32), len(b)
        else:
            yield from batch_chunks(b, fixed, pad_to=fixed)


def calibrate(src: Path, batches: Iterable[np.ndarray], method: CalibMethod | str = CalibMethod.percentile, *,
              op_types: tuple[str, ...] = ("Conv", "Gemm", "Add"), symmetric: bool = True,
              percentile: float = 99.99, equalize: bool = False,
              on_images: Callable[[int], None] | None = None) -> Ranges:
    """The ranges of the fp32 graph's activations over `batches` of preprocessed images (of its equalized form
    with `equalize`: what quantize_int8(equalize=True) quantizes)."""
    method = CalibMethod(method)
    start = time.perf_counter()
    model = fp32_for_int8(src, equalize)
    fixed = graph_batch(model)
    stream = _rebatch(batches, fixed)
    if method in (CalibMethod.percentile, CalibMethod.entropy):
        with tempfile.TemporaryDirectory(prefix="rx-eq-") as tmp:
            path = Path(tmp) / "fp32.onnx"
            onnx.save(model, str(path))
            ranges, images = _histogram_ranges(path, stream, method, list(op_types), symmetric, percentile,
                                               on_images, fixed is not None)
        return Ranges(method, images, ranges, time.perf_counter() - start)
    tensors = _float_tensors(model)
    lows, highs = _per_image_extremes(model, stream, tensors, on_images)
    if method is CalibMethod.max:
        lo, hi = lows.min(0), highs.max(0)
    else:
        lo, hi = lows.mean(0), highs.mean(0)
    ranges = {t: (float(a), float(b)) for t, a, b in zip(tensors, lo, hi, strict=True)}
    return Ranges(method, len(lows), ranges, time.perf_counter() - start)
