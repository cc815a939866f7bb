"""The export steps that make ONNX graphs, one per precision (the precision table names them), and the
notices export prints about the int8 graph it ends with."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from exporters.calibrate import CalibMethod, Ranges
from exporters.onnx import compare_graphs
from pipeline.folder.manifest import Calibration, Entry, GraphCheck, GraphEntry, SearchRecord
from pipeline.machine import cpu_isa, needs_reduce_range, usable_cores
from pipeline.make.options import ExportContext, ExportOptions
from pipeline.make.steps import Step
from pipeline.model.data import (
    FASHION_MNIST_CLASSES,
    Dataset,
    calibration_split,
    iter_batches,
    near_chance_note,
    open_dataset,
)
from pipeline.model.zoo import ModelInfo
from pipeline.precisions import PRECISIONS, Precision
from pipeline.sources import Fp32Request, graph_metadata
from resnetx.errors import BadInput
from resnetx.files import content_key

__all__ = ["GRAPH_STEPS", "fp32_step", "fp16_step", "int8_step", "int8_notices", "INT8_CHECK_IMAGES"]

log = logging.getLogger(__name__)

INT8_CHECK_IMAGES = 64
FP32 = Precision.fp32.value


def _file(ctx: ExportContext, precision: Precision) -> Path:
    return ctx.out / PRECISIONS[precision].onnx_file


# --------------------------------------------------------------------------- fp16
def fp16_step(ctx: ExportContext) -> Step:
    from exporters.fp16 import DEFAULT_FP16_BLOCK_OPS

    inputs = {"keep": sorted(ctx.opts.keep_fp32), "ops": DEFAULT_FP16_BLOCK_OPS, "onnx": ctx.versions.get("onnx")}
    return Step(Precision.fp16.value, Precision.fp16.value, inputs, lambda made: _make_fp16(ctx, made[FP32]),
                sources=(FP32,), describe=_fp16_note)


def _make_fp16(ctx: ExportContext, fp32: Entry) -> GraphEntry:
    from exporters.fp16 import to_fp16

    a = to_fp16(ctx.out / fp32.file, _file(ctx, Precision.fp16), keep_fp32_nodes=ctx.opts.keep_fp32)
    overflow = tuple(a.details["overflow_nodes"])
    details = {k: v for k, v in a.details.items() if k not in ("keep_fp32_nodes", "overflow_nodes")}
    return GraphEntry(Precision.fp16, a.path.name, a.sha256, a.size_bytes,
                      source_sha256=fp32.sha256, opset=a.opset, static_batch=a.static_batch,
                      keep_fp32=tuple(sorted(ctx.opts.keep_fp32)), auto_fp32=overflow, details=details)


def _fp16_note(entry: Entry) -> str:
    n = len(entry.auto_fp32) if isinstance(entry, GraphEntry) else 0
    return f"{n} node(s) kept fp32 for range" if n else ""


# --------------------------------------------------------------------------- int8
def int8_step(ctx: ExportContext) -> Step:
    from exporters.quantize import INT8_GRAPH_REVISION

    o = ctx.opts
    search = None if o.max_accuracy_drop is None else {
        "budget": o.max_accuracy_drop, "data": o.accuracy_data, "dir": str(o.accuracy_dir) if o.accuracy_dir else None,
        "samples": o.accuracy_samples, "seconds": o.search_seconds, "margin": o.accuracy_margin, "search": 2}
    inputs = {"calibration": _calibration_inputs(o, ctx.info), "onnxruntime": ctx.versions.get("onnxruntime"),
              "keep": sorted(o.keep_fp32), "ends": o.quantize_ends, "rev": INT8_GRAPH_REVISION,
              "fallback": o.fallback.value, "search": search, "reduce_range": reduce_range(o)}
    return Step(Precision.int8.value, Precision.int8.value, inputs, lambda made: _make_int8(ctx, made[FP32]),
                sources=(FP32,), describe=_int8_note)


def _calibration_inputs(o: ExportOptions, info: ModelInfo, method: CalibMethod | None = None) -> dict[str, object]:
    return {"dataset": o.calib_data, "data_dir": str(o.calib_dir) if o.calib_dir else None,
            "split": calibration_split(o.calib_data), "samples": o.calib_samples,
            "method": (method or o.calib_method).value, "recipe": o.int8_recipe.value, "seed": o.seed,
            "preprocess": info.preprocess.to_dict(), "equalized": o.int8_equalize}


class _Calibrations:
    """The ranges of each calibration method for one int8 build: computed once, cached in the folder in a file
    named by their key (other weights, data, count, method or recipe give another file; a stale one is never
    read), and reused by every graph made from them."""

    def __init__(self, ctx: ExportContext, fp32: Entry, ds: Dataset) -> None:
        from exporters.calibrate import InputSums

        self.ctx, self.fp32, self.ds = ctx, fp32, ds
        self._ranges: dict[CalibMethod, Ranges] = {}
        # the layers' inputs summed over the calibration images, when this build calibrates (ranges read from the
        # folder's cache leave it empty: bias correction then reads the images itself)
        self.sums = InputSums()

    def record(self, method: CalibMethod) -> Calibration:
        from exporters.quantize import INT8_RECIPES

        o = self.ctx.opts
        fields = _calibration_inputs(o, self.ctx.info, method)
        key = content_key(source=self.fp32.sha256, **fields, ort=self.ctx.versions.get("onnxruntime"),
                          op_types=INT8_RECIPES[o.int8_recipe].op_types, calibrator=4)
        images = self._ranges[method].images if method in self._ranges else None
        cache_file = f"calib.{o.int8_recipe.value}.{method.value}.{key[:12]}.json"
        isa = cpu_isa() if o.int8_recipe.value == "cpu" else None  # the CPU a cpu-recipe graph was made on
        return Calibration(**fields, key=key, cache_file=cache_file, images=images, isa=isa)  # type: ignore[arg-type]

    def ranges(self, method: CalibMethod) -> Ranges:
        if method not in self._ranges:
            self.prepare((method,))
        return self._ranges[method]

    def prepare(self, methods: tuple[CalibMethod, ...], threads: int = 0) -> None:
        """The ranges of each method: from the folder's cache, the others calibrated together, in the same passes
        over the images, on `threads` onnxruntime threads (0: one per core)."""
        from exporters.calibrate import calibrate_methods, passes
        from exporters.quantize import INT8_RECIPES, tensorrt_activations

        ctx, o = self.ctx, self.ctx.opts
        missing = []
        for method in dict.fromkeys(m for m in methods if m not in self._ranges):
            cache = ctx.out / self.record(method).cache_file
            stem = f"calib.{o.int8_recipe.value}.{method.value}"
            for other in [*ctx.out.glob(f"{stem}.*.json"), ctx.out / f"{stem}.json"]:  # stale ranges of this method
                if other.name != cache.name or o.force:
                    other.unlink(missing_ok=True)
            if (found := Ranges.load(cache)) is not None:
                self._ranges[method] = found
            else:
                missing.append(method)
        if not missing:
            return
        n = max(passes(m) for m in missing)
        total, names = min(o.calib_samples, len(self.ds)) * n, ", ".join(m.value for m in missing)
        got = calibrate_methods(ctx.out / self.fp32.file, lambda: _calib_batches(o, ctx.info, self.ds), missing,
                                op_types=INT8_RECIPES[o.int8_recipe].op_types,
                                symmetric=o.int8_recipe.value == "tensorrt", equalize=o.int8_equalize,
                                tensors=tensorrt_activations if o.int8_recipe.value == "tensorrt" else None,
                                sums=self.sums if not self.sums.images else None, threads=threads,
                                on_images=lambda k: ctx.progress(f"int8: {names} calibration, {k}/{total} images "
                                                                 f"read ({n} pass(es) over the calibration images)"))
        for method, r in got.items():
            r.save(ctx.out / self.record(method).cache_file)
            self._ranges[method] = r


def reduce_range(o: ExportOptions) -> bool:
    """The cpu recipe on a CPU without int8 dot-product instructions (VNNI, AMX, Arm dot product): 7-bit weights,
    onnxruntime's remedy for u8 x s8 products that saturate in 16-bit sums there. With them, 8-bit weights: measured
    equal in accuracy and speed on an AVX-512 VNNI CPU (docs/precision.md)."""
    return o.int8_recipe.value == "cpu" and needs_reduce_range(cpu_isa())


def _make_int8(ctx: ExportContext, fp32: Entry) -> GraphEntry:
    from exporters.quantize import quantize_int8

    o = ctx.opts
    ds = open_dataset(o.calib_data, split="train", data_dir=o.calib_dir, preprocess=ctx.info.preprocess)
    cals = _Calibrations(ctx, fp32, ds)
    correction = partial(_calib_batches, o, ctx.info, ds)  # bias correction's images: calibration's
    src, dst = ctx.out / fp32.file, _file(ctx, Precision.int8)
    method, reverted, fallback, record, shifts = o.calib_method, (), o.fallback_precision, None, None
    if o.max_accuracy_drop is not None:
        record, searched = _search(ctx, src, cals, correction)
        method, reverted, fallback = CalibMethod(record.result.method), record.result.reverted, record.result.fallback
        shifts = searched.get(method)
    keep = tuple(sorted({*o.keep_fp32, *reverted}))
    ranges = cals.ranges(method)
    a = quantize_int8(src, dst, ranges, recipe=o.int8_recipe, exclude_nodes=keep, quantize_ends=o.quantize_ends,
                      correction_images=correction(), correction_sums=cals.sums, shifts=shifts,
                      fallback=fallback, equalize=o.int8_equalize, reduce_range=reduce_range(o))
    ctx.progress("int8: checking against fp32")
    check = GraphCheck.from_dict(compare_graphs(a.path, src, _check_images(o, ctx.info, ds)))
    ends = tuple(a.details["float_ends"])
    details = {k: v for k, v in a.details.items() if k not in ("excluded_nodes", "float_ends")}
    return GraphEntry(Precision.int8, a.path.name, a.sha256, a.size_bytes,
                      source_sha256=fp32.sha256, opset=a.opset, static_batch=a.static_batch, keep_fp32=keep,
                      auto_fp32=ends, quantize_ends=o.quantize_ends, calibration=cals.record(method), check=check,
                      fallback=fallback, search=record, details=details)


class _TrialGraphs:
    """The search's int8 graphs, each from the cached ranges and bias shifts of its method (a layer's shift does
    not depend on which other layers are reverted): written as export would write them (exact), or made in
    memory from the method's placed plain graph (quick)."""

    def __init__(self, ctx: ExportContext, src: Path, cals: _Calibrations,
                 correction: Callable[[], Iterator[np.ndarray]]) -> None:
        from exporters.equalize import fp32_for_int8

        self.o, self.src, self.cals, self.correction = ctx.opts, src, cals, correction
        self.rr = reduce_range(ctx.opts)  # read once: every trial is laid out for the same CPU
        self.fp32 = fp32_for_int8(src, ctx.opts.int8_equalize)
        self.placed: dict[CalibMethod, Any] = {}
        self.shifts: dict[CalibMethod, dict[str, np.ndarray]] = {}

    def plain(self, method: CalibMethod) -> Any:
        """The method's placed plain graph (every layer int8, before bias correction), made once with its shifts."""
        from exporters.quantize import bias_shifts, int8_graph

        o = self.o
        if method not in self.placed:
            self.placed[method], _, _ = int8_graph(self.src, self.cals.ranges(method), recipe=o.int8_recipe,
                                                   exclude_nodes=o.keep_fp32, quantize_ends=o.quantize_ends,
                                                   equalize=o.int8_equalize, reduce_range=self.rr)
            self.shifts[method] = bias_shifts(self.src, self.placed[method], self.correction(),
                                              equalize=o.int8_equalize, sums=self.cals.sums)
        return self.placed[method]

    def exact(self, method: CalibMethod, reverted: tuple[str, ...], fallback: str, path: Path) -> list[str]:
        from exporters.quantize import quantize_int8

        o = self.o
        self.plain(method)
        a = quantize_int8(self.src, path, self.cals.ranges(method), recipe=o.int8_recipe,
                          exclude_nodes=(*o.keep_fp32, *reverted), quantize_ends=o.quantize_ends,
                          shifts=self.shifts[method], fallback=fallback, equalize=o.int8_equalize, reduce_range=self.rr)
        return list(a.details["revertible"])

    def quick(self, method: CalibMethod, reverted: tuple[str, ...], fallback: str) -> Any:
        import onnx

        from exporters.fp16 import layers_to_fp16
        from exporters.quantize import apply_shifts, revert_layers

        q = onnx.ModelProto()
        q.CopyFrom(self.plain(method))
        revert_layers(q, self.fp32, reverted)
        apply_shifts(q, self.shifts[method])
        if fallback == "fp16":
            layers_to_fp16(q, {*self.o.keep_fp32, *reverted})
        return q


def _search(ctx: ExportContext, src: Path, cals: _Calibrations, correction: Callable[[], Iterator[np.ndarray]]
            ) -> tuple[SearchRecord, dict[CalibMethod, dict[str, np.ndarray]]]:
    """The accuracy search, its methods calibrated in the same passes; the record, and the bias shifts (the final
    graph reuses them)."""
    from pipeline.make.search import SEARCH_METHODS, Fp32Logits, Makers, accuracy_set, search_int8

    o = ctx.opts
    acc = accuracy_set(o, ctx.info)
    ctx.progress(f"int8 search: judged on {acc.description}")
    reference = Fp32Logits(src, acc)  # fp32's logits on one core, beside calibration on the other
    try:
        cals.prepare((o.calib_method, *SEARCH_METHODS), threads=max(1, usable_cores() - 1))  # the reference: one
        graphs = _TrialGraphs(ctx, src, cals, correction)
        graphs.plain(o.calib_method)
    except BaseException:
        reference.stop()
        raise
    record = search_int8(o, src, acc, Makers(graphs.exact, graphs.quick), ctx.progress, reference.result())
    return record, graphs.shifts


def _int8_note(entry: Entry) -> str:
    if not isinstance(entry, GraphEntry) or entry.check is None:
        return ""
    cal = entry.calibration
    note = f"{cal.method} ranges from {cal.images} images" if cal else "calibrated"
    note += f"; top-1 vs fp32 {100 * entry.check.top1_agree:.1f}% on {entry.check.samples}"
    if (s := entry.search) is not None:
        t = s.result
        kept = (f"{len(t.reverted)} kept out of int8 (fallback {t.fallback}): {', '.join(t.reverted)}" if t.reverted
                else "none reverted")
        note += (f"; search: drop {t.drop:.2f} + margin {t.margin:.2f} of budget {s.budget:g} on {s.data} "
                 f"({'met' if s.met else 'MISSED'}), {kept}, {len(s.trials)} trial(s) and {s.estimates} estimate(s) "
                 f"in {s.took}")
    return note


def _calib_batches(o: ExportOptions, info: ModelInfo, ds: Dataset) -> Iterator[np.ndarray]:
    if len(ds) < o.calib_samples:
        log.warning("calibration data %s has %d images, fewer than --calib-samples %d", ds.name, len(ds),
                    o.calib_samples)
    for b in iter_batches(ds, info.preprocess, 64, limit=o.calib_samples, seed=o.seed, shuffle=True):
        yield b.x


def _check_images(o: ExportOptions, info: ModelInfo, ds: Dataset) -> np.ndarray:
    """Images for the check right after quantization: the calibration data, drawn with another seed."""
    return np.concatenate([b.x for b in iter_batches(ds, info.preprocess, INT8_CHECK_IMAGES, limit=INT8_CHECK_IMAGES,
                                                     seed=o.seed + 1, shuffle=True)])


def fp32_step(ctx: ExportContext) -> Step:
    """The fp32 graph: the source of every other artifact, made by the export's source (pipeline/sources/)."""
    source = ctx.source
    if source is None:
        raise BadInput("the fp32 graph is made from the model file the folder was exported from, which is not loaded "
                       "here")
    o = ctx.opts
    req = Fp32Request(_file(ctx, Precision.fp32), o.exporter, o.opset, o.batch,
                      graph_metadata(ctx.info, source.sha256, source.spec.format), ctx.versions, ctx.progress)
    inputs = {**source.fp32_key(req), "info": ctx.info.to_dict()}

    def make(made: dict[str, Entry]) -> GraphEntry:
        a, exporter = source.make_fp32(req)
        return GraphEntry(Precision.fp32, a.path.name, a.sha256, a.size_bytes, opset=a.opset,
                          static_batch=a.static_batch, exporter=exporter, details=a.details)

    return Step(FP32, FP32, inputs, make)


GRAPH_STEPS: dict[Precision, Callable[[ExportContext], Step]] = {
    Precision.fp32: fp32_step, Precision.fp16: fp16_step, Precision.int8: int8_step}


def int8_notices(entry: GraphEntry | None, o: ExportOptions, info: ModelInfo) -> list[str]:
    """A loud notice when int8 departs from fp32 at once (bad ranges, wrong preprocessing: verify judges later),
    and when it was calibrated on data unlike the model's."""
    notices = []
    if info.preprocess_source == "defaults" and info.trained:
        p = info.preprocess
        notices.append(f"{info.weights} records no preprocessing: resnetx assumed the {info.family} defaults (resize "
                       f"{p.resize}, crop {p.image_size}, mean {', '.join(f'{v:g}' for v in p.mean)}, std "
                       f"{', '.join(f'{v:g}' for v in p.std)}); if the model was trained otherwise, give --mean, "
                       "--std and --resize, or calibration and every accuracy number are off")
    if entry is None:
        return notices
    if entry.search is not None and (chance := near_chance_note(entry.search.fp32_top1, info.num_classes,
                                                                entry.search.data)):
        notices.append(chance)
    if (s := entry.search) is not None and s.result.reverted and s.result.margin > 0.75 * s.budget:
        notices.append(f"the int8 search's margin was {s.result.margin:.2f} points ({s.margin_rule}), most of "
                       f"the {s.budget:g}-point budget: layers may stay out of int8 that the budget would allow; "
                       "judge on more --accuracy-samples, or set --accuracy-margin")
    bar = PRECISIONS[Precision.int8].tolerance.top1_agreement or 0.0
    # a search that met its budget judged the graph on far more images than the check's few: no alarm then
    if entry.check is not None and entry.check.top1_agree < bar and not (s is not None and s.met):
        # mean-max kept a trained ResNet-50 at 224 at 95% agreement where percentile gave 78% (docs/precision.md)
        other = "mean-max" if o.calib_method is CalibMethod.percentile else "percentile"
        search = ("" if s is not None else "--max-accuracy-drop (it tries percentile and mean-max ranges, then keeps "
                  "layers in float), ")
        notices.append(f"int8 agrees with fp32 on only {100 * entry.check.top1_agree:.1f}% of {entry.check.samples} "
                       f"calibration-set images (verify's bar: {100 * bar:.0f}%); try {search}--calib-method {other}, "
                       f"run resnetx verify {o.out} --localize to find the layer to keep with --keep-fp32, or "
                       "calibrate on more representative data")
    if o.calib_data == "synthetic":
        notices.append("int8 was calibrated on synthetic noise, not images: its ranges may not fit real "
                       "inputs; use --calib-data with images like the ones you deploy on")
    elif o.calib_data == "sample" and tuple(info.class_names or ()) != FASHION_MNIST_CLASSES:
        notices.append(f"int8 was calibrated on the bundled sample (Fashion-MNIST: grey clothing photos), "
                       f"not on images like {info.arch}'s: its ranges can cost accuracy on real inputs; "
                       "calibrate with --calib-data imagefolder:DIR on a few hundred of your training images")
    return notices
