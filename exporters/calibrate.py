"""Calibration: the range of every activation tensor of an fp32 graph over real images, by one method.

Ranges are computed once per method and reused by every int8 graph made from them (an export with other
layers kept in float, each trial of the accuracy search). `max` and `mean-max` reduce each tensor in the
graph itself (ReduceMin/ReduceMax per image); `percentile` and `entropy` build onnxruntime's histograms batch by
batch (the same bins and counts its calibrators make from all images at once) and let its collector pick the
ranges. Either way memory does not grow with the number of images.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters.equalize import fp32_for_int8
from exporters.onnx import activation_bytes, cpu_session, graph_batch, quiet_converters
from resnetx.batching import batch_chunks
from resnetx.contract import INPUT_NAME
from resnetx.errors import BackendUnavailable, BadInput, first_line
from resnetx.files import atomic_write_text
from resnetx.lazy import lazy_import

if TYPE_CHECKING:
    import onnx
else:
    onnx = lazy_import("onnx")

__all__ = ["CalibMethod", "Ranges", "calibrate", "passes"]


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
    sess = cpu_session(_reducing_graph(model, tensors))
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


def passes(method: CalibMethod | str) -> int:
    """How many times calibration by `method` reads each image: the histogram methods find each tensor's range
    first, then count into bins over it."""
    return 2 if CalibMethod(method) in (CalibMethod.percentile, CalibMethod.entropy) else 1


HISTOGRAM_BINS = {CalibMethod.percentile: 2048, CalibMethod.entropy: 128}  # onnxruntime's defaults for each
CHUNK_BYTES = 256 << 20  # activations held at once while histogramming: what bounds calibration's memory


def _calibrator(src: Path, tmp: Path, method: CalibMethod, op_types: list[str], symmetric: bool,
                percentile: float) -> Any:
    """onnxruntime's histogram calibrator for `src`: its choice of tensors, its augmented session (every such
    tensor a graph output), and its collector, which turns histograms into ranges."""
    try:
        from onnxruntime.quantization import CalibrationMethod, create_calibrator
    except ImportError as e:
        raise BackendUnavailable("int8 calibration needs onnxruntime: pip install onnxruntime") from e
    kind = CalibrationMethod.Percentile if method is CalibMethod.percentile else CalibrationMethod.Entropy
    return create_calibrator(src, op_types, augmented_model_path=str(tmp / "augmented.onnx"), calibrate_method=kind,
                             providers=["CPUExecutionProvider"], extra_options={
                                 "symmetric": symmetric, "percentile": percentile,
                                 "num_bins": HISTOGRAM_BINS[method], "num_quantized_bins": 128})


class _Activations:
    """The calibrated tensors of each batch, a bounded number of images at a time (onnxruntime's own collector
    keeps every tensor of every image until the end: ~90 MB an image for a ResNet-50 at 224)."""

    def __init__(self, cal: Any, batches: Callable[[], Iterable[tuple[np.ndarray, int]]], fixed: int | None,
                 on_images: Callable[[int], None] | None) -> None:
        self.sess = cal.infer_session
        self.names = [o.name for o in self.sess.get_outputs()]
        self.tensors = sorted(cal.tensors_to_calibrate & set(self.names))
        self.batches = batches
        self.fixed = fixed  # a fixed-batch graph runs its own (padded) batches whole
        self.chunk = fixed or max(1, CHUNK_BYTES // max(activation_bytes(cal.model), 1))
        self.on_images = on_images
        self.read = 0  # images read, over every pass

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        for x, real in self.batches():
            for i in range(0, real, self.chunk):
                xi = x if self.fixed else x[i : i + self.chunk]
                n = real if self.fixed else len(xi)
                out = dict(zip(self.names, self.sess.run(None, {INPUT_NAME: xi}), strict=True))
                yield {t: out[t][:n] for t in self.tensors}, n
                self.read += n
                if self.on_images:
                    self.on_images(self.read)


def _histograms(acts: _Activations, method: CalibMethod, symmetric: bool) -> tuple[dict[str, tuple], int]:
    """Each tensor's histogram exactly as onnxruntime's collector makes it from all images at once (the same
    bins over the same range, so the same counts), in two streamed passes: the extremes, then the counts."""
    lo: dict[str, np.ndarray] = {}
    hi: dict[str, np.ndarray] = {}
    lo_abs: dict[str, np.ndarray] = {}
    images = 0
    for values, n in acts:
        for t, v in values.items():
            a, b = np.nanmin(v), np.nanmax(v)
            lo[t], hi[t] = (a, b) if t not in lo else (min(lo[t], a), max(hi[t], b))
            if symmetric and method is CalibMethod.percentile:
                c = np.nanmin(np.abs(v))
                lo_abs[t] = c if t not in lo_abs else min(lo_abs[t], c)
        images += n
    if not images:
        raise BadInput("int8 calibration saw no images; check --calib-data and --calib-samples")
    bins, absolute = HISTOGRAM_BINS[method], symmetric and method is CalibMethod.percentile
    edges_of: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for t in lo:
        top = np.array(max(abs(lo[t]), abs(hi[t])), dtype=lo[t].dtype)
        edges_of[t] = (lo_abs[t], top) if absolute else (-top, top)
    counts: dict[str, np.ndarray] = {}
    edges: dict[str, np.ndarray] = {}
    for values, _ in acts:
        for t, v in values.items():
            h, e = np.histogram(np.abs(v) if absolute else v, bins, range=edges_of[t])
            counts[t] = counts[t] + h if t in counts else h
            edges[t] = e.astype(v.dtype)
    if absolute:
        return {t: (counts[t], edges[t], lo[t], hi[t]) for t in counts}, images
    return {t: (counts[t], edges[t], lo[t], hi[t], edges_of[t][1]) for t in counts}, images


def _histogram_ranges(src: Path, batches: Callable[[], Iterable[tuple[np.ndarray, int]]], method: CalibMethod,
                      op_types: list[str], symmetric: bool, percentile: float, fixed: int | None,
                      on_images: Callable[[int], None] | None) -> tuple[dict, int]:
    """onnxruntime's percentile or entropy ranges of the tensors it picks, from histograms built batch by batch."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    with tempfile.TemporaryDirectory(prefix="rx-calib-") as tmp, quiet_converters():
        cal = _calibrator(src, Path(tmp), method, op_types, symmetric, percentile)
        acts = _Activations(cal, batches, fixed, on_images)
        hists, images = _histograms(acts, method, symmetric)
        collector = HistogramCollector(method=method.value, symmetric=symmetric, num_bins=HISTOGRAM_BINS[method],
                                       num_quantized_bins=128, percentile=percentile, scenario="same")
        collector.histogram_dict = hists
        try:
            result = collector.compute_collection_result()
        except (ValueError, RuntimeError) as e:
            raise BadInput(f"int8 calibration failed: {first_line(e)}") from e
    return {k: (float(np.min(v[0])), float(np.max(v[1]))) for k, v in result.items()}, images


def _rebatch(batches: Iterable[np.ndarray], fixed: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """(batch, real images): as given, or in chunks of a graph's fixed batch (the last padded with copies)."""
    for b in batches:
        if fixed is None:
            yield np.ascontiguousarray(b, np.float32), len(b)
        else:
            yield from batch_chunks(b, fixed, pad_to=fixed)


def calibrate(src: Path, batches: Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]],
              method: CalibMethod | str = CalibMethod.percentile, *,
              op_types: tuple[str, ...] = ("Conv", "Gemm", "Add"), symmetric: bool = True,
              percentile: float = 99.99, equalize: bool = False,
              on_images: Callable[[int], None] | None = None) -> Ranges:
    """The ranges of the fp32 graph's activations over `batches` of preprocessed images (of its equalized form
    with `equalize`: what quantize_int8(equalize=True) quantizes).

    `batches` is best a callable returning a fresh iterable of batches: the histogram methods read the images
    twice (extremes, then counts; `passes`) and hold only a bounded chunk of activations at a time. A one-shot
    iterator is read into memory first. on_images hears the images read so far, over every pass."""
    method = CalibMethod(method)
    start = time.perf_counter()
    model = fp32_for_int8(src, equalize)
    fixed = graph_batch(model)
    if callable(batches):
        source = batches
    else:
        kept = batches if isinstance(batches, list | tuple) else list(batches)
        source = lambda: kept  # noqa: E731
    if method in (CalibMethod.percentile, CalibMethod.entropy):
        with tempfile.TemporaryDirectory(prefix="rx-eq-") as tmp:
            path = Path(tmp) / "fp32.onnx"
            onnx.save(model, str(path))
            ranges, images = _histogram_ranges(path, lambda: _rebatch(source(), fixed), method, list(op_types),
                                               symmetric, percentile, fixed, on_images)
        return Ranges(method, images, ranges, time.perf_counter() - start)
    tensors = _float_tensors(model)
    lows, highs = _per_image_extremes(model, _rebatch(source(), fixed), tensors, on_images)
    if method is CalibMethod.max:
        lo, hi = lows.min(0), highs.max(0)
    else:
        lo, hi = lows.mean(0), highs.mean(0)
    ranges = {t: (float(a), float(b)) for t, a, b in zip(tensors, lo, hi, strict=True)}
    return Ranges(method, len(lows), ranges, time.perf_counter() - start)
