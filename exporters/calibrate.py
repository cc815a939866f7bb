"""Calibration: the range of every activation tensor of an fp32 graph over real images, by one or more methods.

Ranges are computed once per method and reused by every int8 graph made from them (an export with other
layers kept in float, each trial of the accuracy search). Every method asked comes from the same passes over
the images, a bounded chunk of activations at a time: the first keeps each image's min and max of each tensor
(`max` and `mean-max` are made of them), the second, for `percentile` and `entropy`, counts onnxruntime's
histograms (the same bins and counts its calibrators make from all images at once) and lets its collector pick
the ranges. Memory does not grow with the number of images: the second pass reads back the chunks of the first
that fit in KEEP_BYTES and runs the graph again for the rest.
"""

from __future__ import annotations

import contextlib
import io
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
from exporters.onnx import cpu_session, graph_batch, quiet_converters
from exporters.sizes import activation_bytes
from resnetx.batching import batch_chunks
from resnetx.contract import INPUT_NAME
from resnetx.errors import BackendUnavailable, BadInput, first_line
from resnetx.files import atomic_write_text
from resnetx.lazy import lazy_import

if TYPE_CHECKING:
    import onnx
else:
    onnx = lazy_import("onnx")

__all__ = ["CalibMethod", "InputSums", "Ranges", "calibrate", "calibrate_methods", "passes"]


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


@dataclass
class InputSums:
    """Each tensor summed over the images (float64): what bias correction needs of the fp32 graph (its layers are
    linear), taken by calibration's first pass instead of one more pass of its own."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    images: int = 0

    def add(self, values: dict[str, np.ndarray], n: int) -> None:
        """A chunk's tensors, its first n images real (a fixed-batch graph's padding after them)."""
        for t, v in values.items():
            s = v[:n].sum(0, dtype=np.float64)  # float64 throughout: the same sums however the images are chunked
            self.sums[t] = self.sums[t] + s if t in self.sums else s
        self.images += n


def passes(method: CalibMethod | str) -> int:
    """How many times calibration by `method` reads each image: the histogram methods find each tensor's range
    first, then count into bins over it."""
    return 2 if CalibMethod(method) in (CalibMethod.percentile, CalibMethod.entropy) else 1


HISTOGRAM_BINS = {CalibMethod.percentile: 2048, CalibMethod.entropy: 128}  # onnxruntime's defaults for each
CHUNK_BYTES = 256 << 20  # activations held at once while histogramming: what bounds calibration's memory
KEEP_BYTES = 320 << 20  # the first pass's activations kept for the second (the default model's 300 images fit)


def _calibrator(src: Path, tmp: Path, op_types: list[str], threads: int) -> Any:
    """onnxruntime's histogram calibrator for `src`: its choice of tensors and its augmented session (every such
    tensor a graph output), that session with `threads` intra-op threads (0: one per core)."""
    try:
        from onnxruntime.quantization import CalibrationMethod, create_calibrator
    except ImportError as e:
        raise BackendUnavailable("int8 calibration needs onnxruntime: pip install onnxruntime") from e
    cal = create_calibrator(src, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
                            calibrate_method=CalibrationMethod.Percentile, providers=["CPUExecutionProvider"])
    if threads:  # unoptimized, as its own session: the same values
        cal.infer_session = cpu_session(Path(cal.augmented_model_path), threads=threads, optimize=False)
    return cal


class _Activations:
    """The calibrated tensors of each batch, a bounded number of images at a time (onnxruntime's own collector
    keeps every tensor of every image until the end: ~90 MB an image for a ResNet-50 at 224). The first pass
    keeps its chunks while they fit in `keep` bytes: a later pass reads those from memory and runs the graph
    only for the rest."""

    def __init__(self, cal: Any, batches: Callable[[], Iterable[tuple[np.ndarray, int]]], fixed: int | None,
                 on_images: Callable[[int], None] | None, only: set[str] | None = None, keep: int = 0) -> None:
        self.sess = cal.infer_session
        picked = cal.tensors_to_calibrate & {o.name for o in self.sess.get_outputs()}
        self.tensors = sorted(picked if only is None else picked & only)
        self.batches = batches
        self.fixed = fixed  # a fixed-batch graph runs its own (padded) batches whole
        self.chunk = fixed or max(1, CHUNK_BYTES // max(activation_bytes(cal.model, set(self.tensors)), 1))
        self.on_images = on_images
        self.read = 0  # images read, over every pass
        self.keep, self.kept, self.passes = keep, [], 0

    def _seen(self, n: int) -> None:
        self.read += n
        if self.on_images:
            self.on_images(self.read)

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        first, self.passes = not self.passes, self.passes + 1
        if not first:
            for values, n in self.kept:
                yield values, n
                self._seen(n)
        skip = 0 if first else len(self.kept)
        for x, real in self.batches():
            for i in range(0, real, self.chunk):
                if skip:
                    skip -= 1
                    continue
                xi = x if self.fixed else x[i : i + self.chunk]
                n = real if self.fixed else len(xi)
                out = self.sess.run(self.tensors, {INPUT_NAME: xi})
                values = {t: v[:n] for t, v in zip(self.tensors, out, strict=True)}
                if first and self._fits(values):
                    self.kept.append((values, n))
                yield values, n
                self._seen(n)

    def _fits(self, values: dict[str, np.ndarray]) -> bool:
        size = sum(v.nbytes for v in values.values())
        if size > self.keep:
            self.keep = 0  # kept chunks are a prefix: once one does not fit, none after it is kept
            return False
        self.keep -= size
        return True


@dataclass
class _Extremes:
    """Pass 1 over the images: each image's min and max of each tensor (what max and mean-max are made of), and
    what the histograms' ranges need (the overall extremes, the smallest |x|)."""

    lows: dict[str, list[np.ndarray]] = field(default_factory=dict)
    highs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    lo_abs: dict[str, np.ndarray] = field(default_factory=dict)
    images: int = 0

    def add(self, values: dict[str, np.ndarray], n: int, smallest_abs: bool) -> None:
        for t, v in values.items():
            flat = v.reshape(n, -1)
            lo, hi = flat.min(1), flat.max(1)  # NaN only where an image has one: then what onnxruntime ignores
            self.lows.setdefault(t, []).append(np.nanmin(flat, 1) if np.isnan(lo).any() else lo)
            self.highs.setdefault(t, []).append(np.nanmax(flat, 1) if np.isnan(hi).any() else hi)
            if smallest_abs:
                c = np.nanmin(np.abs(v))
                self.lo_abs[t] = c if t not in self.lo_abs else min(self.lo_abs[t], c)
        self.images += n

    def per_image(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        return ({t: np.concatenate(v) for t, v in self.lows.items()},
                {t: np.concatenate(v) for t, v in self.highs.items()})


def _scan(acts: _Activations, methods: list[CalibMethod], symmetric: bool, sums: InputSums | None) -> _Extremes:
    ext = _Extremes()
    for values, n in acts:
        ext.add(values, n, symmetric and CalibMethod.percentile in methods)
        if sums is not None:
            sums.add(values, n)
    if not ext.images:
        raise BadInput("int8 calibration saw no images; check --calib-data and --calib-samples")
    return ext


def _histograms(acts: _Activations, lows: dict[str, np.ndarray], highs: dict[str, np.ndarray],
                lo_abs: dict[str, np.ndarray], methods: list[CalibMethod],
                symmetric: bool) -> dict[CalibMethod, dict[str, tuple]]:
    """Each tensor's histogram for each histogram method exactly as onnxruntime's collector makes it from all
    images at once (the same bins over the same range, so the same counts), counted in one more streamed pass over
    the images whose per-image extremes pass 1 found."""
    lo = {t: v.min() for t, v in lows.items()}
    hi = {t: v.max() for t, v in highs.items()}
    shape: dict[CalibMethod, tuple[bool, dict[str, tuple]]] = {}
    for m in methods:
        absolute = symmetric and m is CalibMethod.percentile
        edges_of = {}
        for t in lo:
            top = np.array(max(abs(lo[t]), abs(hi[t])), dtype=lo[t].dtype)
            edges_of[t] = (lo_abs[t], top) if absolute else (-top, top)
        shape[m] = (absolute, edges_of)
    counts: dict[CalibMethod, dict[str, np.ndarray]] = {m: {} for m in methods}
    edges: dict[tuple[CalibMethod, str], np.ndarray] = {}
    for values, _ in acts:
        for m, (absolute, edges_of) in shape.items():
            for t, v in values.items():
                h, e = np.histogram(np.abs(v) if absolute else v, HISTOGRAM_BINS[m], range=edges_of[t])
                counts[m][t] = counts[m][t] + h if t in counts[m] else h
                edges[(m, t)] = e.astype(v.dtype)
    out = {}
    for m, (absolute, edges_of) in shape.items():
        c = counts[m]
        out[m] = ({t: (c[t], edges[(m, t)], lo[t], hi[t]) for t in c} if absolute else
                  {t: (c[t], edges[(m, t)], lo[t], hi[t], edges_of[t][1]) for t in c})
    return out


def _collect(method: CalibMethod, hists: dict[str, tuple], symmetric: bool, percentile: float) -> dict:
    """onnxruntime's collector turns the histograms into ranges."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector(method=method.value, symmetric=symmetric, num_bins=HISTOGRAM_BINS[method],
                                   num_quantized_bins=128, percentile=percentile, scenario="same")
    collector.histogram_dict = hists
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its progress prints would land in the user's table
            result = collector.compute_collection_result()
    except (ValueError, RuntimeError) as e:
        raise BadInput(f"int8 calibration failed: {first_line(e)}") from e
    return {k: (float(np.min(v[0])), float(np.max(v[1]))) for k, v in result.items()}


def _all_ranges(src: Path, batches: Callable[[], Iterable[tuple[np.ndarray, int]]], methods: list[CalibMethod],
                op_types: list[str], symmetric: bool, percentile: float, fixed: int | None,
                on_images: Callable[[int], None] | None, only: set[str] | None, sums: InputSums | None,
                threads: int) -> tuple[dict[CalibMethod, dict], int]:
    """The ranges of every method asked, from at most two passes over the images: the per-image extremes give
    max and mean-max (and the histograms' ranges), the counts give percentile and entropy. The tensors are the
    ones onnxruntime's calibrator picks for op_types (those in `only`, where given)."""
    hist_methods = [m for m in methods if passes(m) == 2]
    with tempfile.TemporaryDirectory(prefix="rx-calib-") as tmp, quiet_converters():
        cal = _calibrator(src, Path(tmp), op_types, threads)
        acts = _Activations(cal, batches, fixed, on_images, only, KEEP_BYTES if hist_methods else 0)
        ext = _scan(acts, methods, symmetric, sums)
        lows, highs = ext.per_image()
        hists = _histograms(acts, lows, highs, ext.lo_abs, hist_methods, symmetric) if hist_methods else {}
    out = {}
    for m in methods:
        if m in hists:
            out[m] = _collect(m, hists[m], symmetric, percentile)
        else:
            pick = (np.min, np.max) if m is CalibMethod.max else (np.mean, np.mean)
            out[m] = {t: (float(pick[0](lows[t])), float(pick[1](highs[t]))) for t in lows}
    return out, ext.images


def _rebatch(batches: Iterable[np.ndarray], fixed: int | None) -> Iterator[tuple[np.ndarray, int]]:
    """(batch, real images): as given, or in chunks of a graph's fixed batch (the last padded with copies)."""
    for b in batches:
        if fixed is None:
            yield np.ascontiguousarray(b, np.float32), len(b)
        else:
            yield from batch_chunks(b, fixed, pad_to=fixed)


def calibrate_methods(src: Path, batches: Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]],
                      methods: Iterable[CalibMethod | str], *, op_types: tuple[str, ...] = ("Conv", "Gemm", "Add"),
                      symmetric: bool = True, percentile: float = 99.99, equalize: bool = False,
                      tensors: Callable[[onnx.ModelProto], set[str]] | None = None, sums: InputSums | None = None,
                      threads: int = 0, on_images: Callable[[int], None] | None = None) -> dict[CalibMethod, Ranges]:
    """The ranges of the fp32 graph's activations over `batches` of preprocessed images by each of `methods`,
    all from the same passes (of its equalized form with `equalize`: what quantize_int8(equalize=True)
    quantizes). `tensors` picks, from the graph, the tensors worth calibrating (those a layout puts Q/DQ pairs
    on); without it, every tensor onnxruntime's calibrator picks for op_types.

    `batches` is best a callable returning a fresh iterable of batches: the histogram methods read the images
    twice (extremes, then counts; `passes`) and hold only a bounded chunk of activations at a time. A one-shot
    iterator is read into memory first. on_images hears the images read so far, over every pass."""
    wanted = list(dict.fromkeys(CalibMethod(m) for m in methods))
    start = time.perf_counter()
    model = fp32_for_int8(src, equalize)
    fixed = graph_batch(model)
    if callable(batches):
        source = batches
    else:
        kept = batches if isinstance(batches, list | tuple) else list(batches)
        source = lambda: kept  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="rx-eq-") as tmp:
        path = Path(tmp) / "fp32.onnx"
        onnx.save(model, str(path))
        ranges, images = _all_ranges(path, lambda: _rebatch(source(), fixed), wanted, list(op_types), symmetric,
                                     percentile, fixed, on_images, None if tensors is None else tensors(model), sums,
                                     threads)
    seconds = time.perf_counter() - start
    return {m: Ranges(m, images, ranges[m], seconds) for m in wanted}


def calibrate(src: Path, batches: Iterable[np.ndarray] | Callable[[], Iterable[np.ndarray]],
              method: CalibMethod | str = CalibMethod.percentile, **options: Any) -> Ranges:
    """The ranges by one method (see calibrate_methods)."""
    return calibrate_methods(src, batches, [method], **options)[CalibMethod(method)]
