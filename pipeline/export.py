"""The export step: model -> fp32 ONNX -> fp16 / int8 ONNX -> engines, cached by content hash."""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters.onnx import DEFAULT_OPSET, OnnxArtifact, compare_graphs, export_onnx
from exporters.tensorrt import RTX_PORTABLE_CCS
from pipeline.artifacts import (MANIFEST, Manifest, check_sha, export_lock, layer_note, read_manifest, tool_versions,
                                write_manifest)
from pipeline.data import FASHION_MNIST_CLASSES, Dataset, calibration_split, iter_batches, open_dataset
from pipeline.models import ModelInfo, ModelSpec, load_model
from pipeline.precisions import PRECISIONS, Precision
from pipeline.reference import DEFAULT_SAMPLES, reference_file, stored_reference, verify_inputs
from runtimes.errors import BadInput, ResnetxError

__all__ = [
    "ExportOptions",
    "StepEvent",
    "ExportResult",
    "export",
    "export_engines",
    "state_sha256",
    "engine_file",
    "default_batch_range",
    "rebuild_reference",
    "reference_if_here",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOptions:
    model: ModelSpec = field(default_factory=ModelSpec)
    out: Path = Path("artifacts/default")
    precisions: tuple[Precision, ...] = (Precision.fp32,)
    exporter: str = "dynamo"
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = True
    static_batch: int = 1  # the batch baked into the graph (and engines) when not dynamic_batch
    calib_data: str = "sample"
    calib_dir: Path | None = None
    calib_samples: int = 512
    calib_method: str = "max"
    int8_target: str = "tensorrt"
    keep_fp32: tuple[str, ...] = ()  # layers kept in fp32 in the fp16 graph and left unquantized in int8
    int8_quantize_ends: bool = False  # also quantize the stem conv and the classifier
    engine: str = "none"  # auto | tensorrt | rtx | none
    batch_range: tuple[int, int, int] | None = None
    workspace_mb: int | None = None
    opt_level: int = 3
    rtx_compute_capabilities: tuple[str, ...] | None = None
    seed: int = 0
    force: bool = False
    reference_samples: int = DEFAULT_SAMPLES  # PyTorch logits stored for verify's default inputs; 0: none
    reference_data: str = "sample"  # the data those inputs come from (`run --data` stores them for its verify)
    reference_data_dir: Path | None = None


@dataclass(frozen=True)
class StepEvent:
    step: str  # "fp32", "fp16", "int8", "engine fp16 rtx", ...
    status: str  # "built" | "cached" | "kept" (from an earlier export, not asked for) | "skipped"
    file: str | None = None
    size_bytes: int = 0
    seconds: float = 0.0
    note: str = ""


@dataclass
class ExportResult:
    folder: Path
    manifest: Manifest
    events: list[StepEvent]
    info: ModelInfo
    notices: list[str] = field(default_factory=list)


def state_sha256(model: torch.nn.Module) -> str:
    """A content hash of the weights, independent of the checkpoint's file format."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode() + str(v.dtype).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def engine_file(precision: str, flavor: str) -> str:
    return f"model.{precision}.{flavor}.engine"


def default_batch_range(info: ModelInfo) -> tuple[int, int, int]:
    return (1, 8, 64) if info.image_size >= 96 else (1, 32, 256)


def _spec_dict(spec: ModelSpec) -> dict[str, Any]:
    return {"arch": spec.arch, "num_classes": spec.num_classes, "in_chans": spec.in_chans,
            "image_size": spec.image_size, "weights": str(spec.weights.resolve()) if spec.weights else None}


def reference_if_here(manifest: Manifest) -> tuple[torch.nn.Module | None, ModelInfo, str]:
    """The fp32 PyTorch model the artifacts came from, checked against the recorded weights hash; a
    weights file absent from this machine (a folder copied elsewhere) is not an error: then (None, the
    manifest's model info, why). Changed weights always are."""
    spec = manifest.model["spec"]
    weights = spec.get("weights")
    if weights and not Path(weights).is_file():
        return None, ModelInfo.from_dict(manifest.model), f"the reference weights {weights} are not on this machine"
    model, info = load_model(ModelSpec(arch=spec["arch"], num_classes=spec.get("num_classes"),
                                       in_chans=spec.get("in_chans"), image_size=spec.get("image_size"),
                                       weights=Path(weights) if weights else None))
    if state_sha256(model) != manifest.model["state_sha256"]:
        raise BadInput("the reference model's weights differ from the ones exported (state sha256 mismatch); "
                       "re-run resnetx export --force")
    return model, info, ""


def rebuild_reference(manifest: Manifest) -> tuple[torch.nn.Module, ModelInfo]:
    """reference_if_here, for callers that need the model itself."""
    model, info, missing = reference_if_here(manifest)
    if model is None:
        raise BadInput(f"{missing}; restore them or re-run resnetx export")
    return model, info


class _Folder:
    """Writes into the artifact folder; the first write removes the old manifest, so a crash
    between here and the new manifest leaves a folder that every command reports as incomplete."""

    def __init__(self, path: Path, old: Manifest | None, *, keep_manifest: bool = False) -> None:
        self.path = path
        self.old = old
        self._dirty = False
        self._keep_manifest = keep_manifest  # the caller rewrites it after each step instead

    def cached(self, name: str, key: str, force: bool) -> dict[str, Any] | None:
        if force or self.old is None:
            return None
        entry = self.old.artifacts.get(name)
        if not entry or entry.get("key") != key:
            return None
        return entry if _intact(self.path, entry) else None

    @property
    def written(self) -> bool:
        return self._dirty

    def before_write(self) -> None:
        if not self._dirty and not self._keep_manifest:
            (self.path / MANIFEST).unlink(missing_ok=True)
        self._dirty = True


def _intact(out: Path, entry: dict[str, Any]) -> bool:
    """The entry's file is there with the sha256 the manifest recorded."""
    from pipeline.models import file_sha256

    f = out / entry["file"]
    return f.is_file() and file_sha256(f) == entry["sha256"]


def _kept_from_before(old: Manifest | None, made: dict[str, dict[str, Any]], out: Path) -> dict[str, dict[str, Any]]:
    """What an earlier export made, this one was not asked for, and is still made from the same graphs, its
    file intact: it stays in the manifest (exporting int8 again, say with --keep-fp32, must not drop the
    folder's fp16 graph and engines). An fp32 graph made anew (other weights, exporter, batch) drops it all."""
    if old is None or "fp32" not in made:
        return {}
    kept: dict[str, dict[str, Any]] = {}
    graphs = {e["precision"]: e["sha256"] for e in made.values() if e["kind"] == "onnx"}
    for kind in ("onnx", "engine"):  # graphs first: an engine stays only if the graph it came from does
        for name, e in old.artifacts.items():
            if name in made or e["kind"] != kind:
                continue
            source = made["fp32"]["sha256"] if kind == "onnx" else graphs.get(e["precision"])
            if e.get("source_sha256") == source and _intact(out, e):
                kept[name] = e
                if kind == "onnx":
                    graphs[e["precision"]] = e["sha256"]
    return kept


def _onnx_entry(a: OnnxArtifact, key: str, source: str | None) -> dict[str, Any]:
    return {"kind": "onnx", "file": a.path.name, "sha256": a.sha256, "precision": a.precision,
            "opset": a.opset, "size_bytes": a.size_bytes, "seconds": round(a.seconds, 3),
            "source_sha256": source, "key": key, **a.details}


def _calib_dataset(opts: ExportOptions, info: ModelInfo) -> Dataset:
    """Opened once per int8 build: calibration and the check after it draw from it (listing an image folder
    the size of ImageNet's train split takes seconds)."""
    return open_dataset(opts.calib_data, split="train", data_dir=opts.calib_dir, preprocess=info.preprocess)


def _calib_batches(opts: ExportOptions, info: ModelInfo, ds: Dataset) -> Iterator[np.ndarray]:
    if opts.calib_samples < 1:
        raise BadInput("--calib-samples must be >= 1")
    if len(ds) < opts.calib_samples:
        log.warning("calibration data %s has %d images, fewer than --calib-samples %d", ds.name, len(ds), opts.calib_samples)
    for b in iter_batches(ds, info.preprocess, 64, limit=opts.calib_samples, seed=opts.seed, shuffle=True):
        yield b.x


INT8_CHECK_IMAGES = 64


def _check_images(opts: ExportOptions, info: ModelInfo, ds: Dataset) -> np.ndarray:
    """Images for the check right after quantization: the calibration data, drawn with another seed."""
    return np.concatenate([b.x for b in iter_batches(ds, info.preprocess, INT8_CHECK_IMAGES, limit=INT8_CHECK_IMAGES,
                                                     seed=opts.seed + 1, shuffle=True)])


def _int8_collapse(check: dict[str, Any] | None, out: Path) -> list[str]:
    """A loud notice when int8 departs from fp32 at once (bad ranges, wrong preprocessing): verify judges later."""
    bar = PRECISIONS[Precision.int8].tolerance.top1_agreement or 0.0
    if check is None or check["top1_agree"] >= bar:
        return []
    return [f"int8 agrees with fp32 on only {100 * check['top1_agree']:.1f}% of {check['samples']} calibration-set "
            f"images (verify's bar: {100 * bar:.0f}%); run resnetx verify {out} --localize to find the layer to keep "
            "with --keep-fp32, or calibrate on more representative data"]


def _engine_profile(opts: ExportOptions, info: ModelInfo) -> tuple[int, int, int]:
    """MIN,OPT,MAX batch of the engines: --batch-range, the default for the input size, or the one batch a
    --no-dynamic-batch graph takes."""
    if opts.dynamic_batch:
        return opts.batch_range or default_batch_range(info)
    fixed = (opts.static_batch,) * 3
    if opts.batch_range and tuple(opts.batch_range) != fixed:
        raise BadInput(f"--batch-range {','.join(map(str, opts.batch_range))} does not fit a graph exported with the "
                       f"fixed batch {opts.static_batch}; drop --batch-range, or export with --dynamic-batch")
    return fixed


def _resolve_engine(engine: str, notices: list[str]) -> str | None:
    from exporters.tensorrt import FLAVORS, available_flavors, import_flavor

    if engine == "none":
        return None
    if engine in FLAVORS:
        import_flavor(engine)  # raises BackendUnavailable with the pip line
        return engine
    if engine != "auto":
        raise BadInput(f"unknown --engine {engine!r}; use auto, tensorrt, rtx or none")
    found = available_flavors()
    if not found:
        notices.append("no TensorRT found (pip install 'resnetx[tensorrt-rtx]'): no engines built")
        return None
    return found[0]  # FLAVORS order: enterprise tensorrt first, then rtx


def export(
    opts: ExportOptions,
    on_step: Callable[[StepEvent], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Run every export step into opts.out; skip steps whose inputs and options are unchanged.

    on_step hears each finished step; on_progress hears what a long step is doing now.
    """
    def progress(msg: str) -> None:
        if on_progress:
            on_progress(msg)

    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file; give a folder")
    if Precision.int8 in opts.precisions and opts.int8_target not in ("tensorrt", "cpu"):
        raise BadInput(f"unknown --int8-target {opts.int8_target!r}; use tensorrt or cpu")
    events: list[StepEvent] = []
    notices: list[str] = []

    def emit(ev: StepEvent) -> None:
        events.append(ev)
        if on_step:
            on_step(ev)

    model, info = load_model(opts.model)
    flavor = _resolve_engine(opts.engine, notices)
    if flavor:
        _engine_profile(opts, info)  # a --batch-range that cannot fit is refused before minutes of work
    if flavor and Precision.int8 in opts.precisions and opts.int8_target == "cpu":
        raise BadInput("the cpu int8 recipe quantizes biases to int32, which TensorRT's parser rejects; "
                       "use --int8-target tensorrt for engines, or --engine none")
    versions = tool_versions()
    with export_lock(out):
        for stray in out.glob(".tmp-*"):  # left by a killed export; nothing ever reads them
            if stray.is_file():
                stray.unlink()
            else:
                shutil.rmtree(stray, ignore_errors=True)
        old: Manifest | None = None
        if (out / MANIFEST).is_file():
            try:
                old = read_manifest(out)
            except ResnetxError as e:
                log.warning("ignoring the old manifest (%s): rebuilding everything", e)
        folder = _Folder(out, old)
        weights_sha = state_sha256(model)
        artifacts: dict[str, dict[str, Any]] = {}
        calibration: dict[str, Any] | None = None

        # fp32 ONNX: the source of every other artifact
        key = _key(step="fp32", weights=weights_sha, info=info.to_dict(), exporter=opts.exporter, opset=opts.opset,
                   dynamic=opts.dynamic_batch if opts.dynamic_batch else f"static {opts.static_batch}",
                   torch=versions.get("torch"), onnx=versions.get("onnx"),
                   onnxscript=versions.get("onnxscript"))
        fp32_path = out / PRECISIONS[Precision.fp32].onnx_file
        if entry := folder.cached("fp32", key, opts.force):
            artifacts["fp32"] = entry
            emit(StepEvent("fp32", "cached", entry["file"], entry["size_bytes"]))
        else:
            folder.before_write()
            progress(f"fp32: exporting with the {opts.exporter} exporter")
            meta = {"resnetx.arch": info.arch, "resnetx.num_classes": info.num_classes,
                    "resnetx.input_shape": json.dumps(list(info.input_shape)),
                    "resnetx.preprocess": json.dumps(info.preprocess.to_dict()),
                    "resnetx.weights_sha256": weights_sha, "resnetx.exporter": opts.exporter,
                    "resnetx.class_names": json.dumps(list(info.class_names or []))}
            a = export_onnx(model, info.input_shape, fp32_path, opset=opts.opset, dynamic_batch=opts.dynamic_batch,
                            static_batch=opts.static_batch,
                            exporter=opts.exporter, metadata=meta)
            artifacts["fp32"] = _onnx_entry(a, key, None)
            emit(StepEvent("fp32", "built", fp32_path.name, a.size_bytes, a.seconds))
        fp32_sha = artifacts["fp32"]["sha256"]

        if Precision.fp16 in opts.precisions:
            from exporters.precision import DEFAULT_FP16_BLOCK_OPS, to_fp16

            key = _key(step="fp16", source=fp32_sha, keep=sorted(opts.keep_fp32), ops=DEFAULT_FP16_BLOCK_OPS,
                       onnx=versions.get("onnx"))
            if entry := folder.cached("fp16", key, opts.force):
                artifacts["fp16"] = entry
                emit(StepEvent("fp16", "cached", entry["file"], entry["size_bytes"]))
            else:
                folder.before_write()
                a = to_fp16(fp32_path, out / PRECISIONS[Precision.fp16].onnx_file, keep_fp32_nodes=opts.keep_fp32)
                artifacts["fp16"] = _onnx_entry(a, key, fp32_sha)
                note = f"{len(a.details['overflow_nodes'])} node(s) kept fp32 for range" if a.details["overflow_nodes"] else ""
                emit(StepEvent("fp16", "built", a.path.name, a.size_bytes, a.seconds, note))

        if Precision.int8 in opts.precisions:
            from exporters.precision import INT8_GRAPH_REVISION, INT8_RECIPES, quantize_int8

            calib = {"dataset": opts.calib_data, "data_dir": str(opts.calib_dir) if opts.calib_dir else None,
                     "split": calibration_split(opts.calib_data), "samples": opts.calib_samples, "method": opts.calib_method,
                     "recipe": opts.int8_target, "seed": opts.seed, "preprocess": info.preprocess.to_dict()}
            calib_key = _key(source=fp32_sha, **calib, ort=versions.get("onnxruntime"),
                             op_types=INT8_RECIPES[opts.int8_target].op_types)
            cache = out / f"calib.{opts.int8_target}.{opts.calib_method}.json"
            old_calib = (old.calibration or {}) if old else {}
            if cache.exists() and (opts.force or old_calib.get("key") != calib_key):
                cache.unlink()  # stale: other weights, data, count, method or recipe
            key = _key(step="int8", calib=calib_key, keep=sorted(opts.keep_fp32), ends=opts.int8_quantize_ends,
                       rev=INT8_GRAPH_REVISION)
            # "images": how many the ranges came from (a small dataset gives fewer than --calib-samples)
            calibration = {**calib, "key": calib_key, "cache_file": cache.name, "images": old_calib.get("images")}
            if entry := folder.cached("int8", key, opts.force):
                artifacts["int8"] = entry
                emit(StepEvent("int8", "cached", entry["file"], entry["size_bytes"]))
            else:
                folder.before_write()
                hit = cache.is_file()
                ds = _calib_dataset(opts, info)
                a = quantize_int8(fp32_path, out / PRECISIONS[Precision.int8].onnx_file,
                                  None if hit else _calib_batches(opts, info, ds), recipe=opts.int8_target,
                                  method=opts.calib_method, cache=cache, exclude_nodes=opts.keep_fp32,
                                  quantize_ends=opts.int8_quantize_ends,
                                  on_images=lambda n: progress(f"int8: calibrated {n}/{opts.calib_samples} images"))
                progress("int8: checking against fp32")
                check = compare_graphs(a.path, fp32_path, _check_images(opts, info, ds))
                artifacts["int8"] = {**_onnx_entry(a, key, fp32_sha), "check": check}
                if not hit:
                    calibration["images"] = a.details["calibration_images"]
                note = "calibration cache reused" if hit else f"calibrated on {a.details['calibration_images']} images"
                note += f"; top-1 vs fp32 {100 * check['top1_agree']:.1f}% on {check['samples']}"
                emit(StepEvent("int8", "built", a.path.name, a.size_bytes, a.seconds, note))
            notices += _int8_collapse(artifacts["int8"].get("check"), out)
            if opts.calib_data == "synthetic":
                notices.append("int8 was calibrated on synthetic noise, not images: its ranges may not fit real "
                               "inputs; use --calib-data with images like the ones you deploy on")
            elif opts.calib_data == "sample" and tuple(info.class_names or ()) != FASHION_MNIST_CLASSES:
                notices.append(f"int8 was calibrated on the bundled sample (Fashion-MNIST: grey clothing photos), "
                               f"not on images like {info.arch}'s: its ranges can cost accuracy on real inputs; "
                               "calibrate with --calib-data imagefolder:DIR on a few hundred of your training images")

        if flavor:
            _build_engines(opts, info, out, folder, artifacts, opts.precisions, flavor, versions, emit, progress)

        model_section = {**info.to_dict(), "spec": _spec_dict(opts.model), "state_sha256": weights_sha}
        if opts.model.arch == "default":
            model_section["spec"] = {"arch": "default", "weights": None}
        for name, entry in ({} if opts.force else _kept_from_before(old, artifacts, out)).items():
            artifacts[name] = entry
            step = entry["precision"] if entry["kind"] == "onnx" else f"engine {entry['precision']}"
            emit(StepEvent(step, "kept", entry["file"], entry["size_bytes"], note="from an earlier export"))
            if name == "int8" and calibration is None and old is not None:
                calibration = old.calibration
        artifacts = _in_artifact_order(artifacts)
        manifest = Manifest(model=model_section, artifacts=artifacts, calibration=calibration, versions=versions)
        if old and not folder.written and old.to_dict() | {"created": ""} == manifest.to_dict() | {"created": ""}:
            manifest = old  # nothing changed: keep the folder byte-for-byte as it was
        else:
            write_manifest(out, manifest)
        if opts.reference_samples:  # after the manifest: a kill here leaves a complete folder, minus this
            progress(f"reference: fp32 PyTorch logits on verify's {opts.reference_samples} inputs from {opts.reference_data}")
            start = time.perf_counter()
            inputs = verify_inputs(opts.reference_data, opts.reference_data_dir, opts.reference_samples,
                                   info.preprocess, info.num_classes)
            path = reference_file(opts.reference_data, opts.reference_samples)
            if opts.force:
                (out / path).unlink(missing_ok=True)
            done = 0

            def ref_tick(n: int) -> None:
                nonlocal done
                done += n
                progress(f"reference: fp32 PyTorch logits, {done}/{len(inputs.x)} inputs")

            _, made_by = stored_reference(out / path, weights_sha, model, inputs.x, on_batch=ref_tick)
            hit = made_by is not None
            emit(StepEvent("reference", "cached" if hit else "built", str(path), (out / path).stat().st_size,
                           0.0 if hit else time.perf_counter() - start,
                           f"fp32 PyTorch logits, {len(inputs.x)} inputs, for verify"))
    return ExportResult(out, manifest, events, info, notices)


def _build_engines(opts: ExportOptions, info: ModelInfo, out: Path, folder: _Folder, artifacts: dict[str, dict[str, Any]],
                   precisions: tuple[Precision, ...], flavor: str, versions: dict[str, str],
                   emit: Callable[[StepEvent], None], progress: Callable[[str], None]) -> None:
    """One engine per precision from its ONNX graph in `artifacts`, cached by graph, options, TensorRT version and,
    for enterprise TensorRT (whose engines are tied to the GPU they were built on), this GPU."""
    from exporters.tensorrt import build_engine, gpu_target

    profile = _engine_profile(opts, info)
    ccs = tuple(opts.rtx_compute_capabilities or RTX_PORTABLE_CCS)
    gpu = gpu_target() if flavor == "tensorrt" else None
    timing = out / "timing.cache"
    for p in precisions:
        src = artifacts[p.value]
        name = f"{p.value}.{flavor}"
        key = _key(step="engine", source=src["sha256"], flavor=flavor, profile=profile, ws=opts.workspace_mb,
                   opt=opts.opt_level, ccs=ccs if flavor == "rtx" else None, tf32=p != Precision.fp32, gpu=gpu,
                   trt=versions.get("tensorrt") or versions.get("tensorrt-rtx-cu13") or versions.get("tensorrt-cu13"))
        if entry := folder.cached(name, key, opts.force):
            artifacts[name] = entry
            emit(StepEvent(f"engine {p.value}", "cached", entry["file"], entry["size_bytes"]))
            continue
        folder.before_write()
        progress(f"engine {p.value}: building with {flavor}")
        e = build_engine(out / src["file"], out / engine_file(p.value, flavor), flavor=flavor,
                         precision=p.value, input_chw=info.input_shape, profile=profile,
                         workspace_mb=opts.workspace_mb, opt_level=opts.opt_level,
                         timing_cache=timing if flavor == "tensorrt" else None, compute_capabilities=ccs)
        artifacts[name] = {"kind": "engine", "file": e.path.name, "sha256": e.sha256, "precision": p.value,
                           "flavor": flavor, "trt_version": e.version, "profile": list(e.profile),
                           "build_seconds": round(e.seconds, 3), "size_bytes": e.size_bytes,
                           "source_sha256": e.source_sha256, "source_file": src["file"], "key": key,
                           **e.target}
        emit(StepEvent(f"engine {p.value}", "built", e.path.name, e.size_bytes, e.seconds,
                       f"{flavor} {e.version}; " + layer_note(e.target.get("network"), p.value)))


def _in_artifact_order(artifacts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Graphs, then engines, each by precision (the Precision enum's order), as the manifest lists them."""
    order = [p.value for p in Precision]
    return dict(sorted(artifacts.items(), key=lambda kv: (kv[1]["kind"] != "onnx", order.index(kv[1]["precision"]),
                                                          kv[0])))


def export_engines(
    opts: ExportOptions,
    precisions: tuple[Precision, ...] | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Engines from the ONNX graphs already in opts.out, without the model or its weights (`export --engines-only`).

    TensorRT engines are tied to the GPU and TensorRT version they are built with: a folder exported on a
    workstation and copied to where it runs (a Jetson, another server) gets its engines built there, from
    the very graphs the manifest pins (each checked against its sha256 first). `precisions` None: every graph."""
    out = Path(opts.out)
    read_manifest(out)  # a folder that is not an export says so before the lock would create it
    notices: list[str] = []
    flavor = _resolve_engine("auto" if opts.engine == "none" else opts.engine, notices)
    if flavor is None:
        from runtimes.errors import BackendUnavailable

        raise BackendUnavailable("--engines-only found no TensorRT to build with: pip install tensorrt-cu13 (or "
                                 "tensorrt-rtx-cu13 for RTX GPUs), then give --engine tensorrt or rtx")
    events: list[StepEvent] = []

    def emit(ev: StepEvent) -> None:
        events.append(ev)
        if on_step:
            on_step(ev)

    with export_lock(out):
        old = read_manifest(out)  # under the lock: what an export that just finished wrote
        graphs = {e["precision"]: e for e in old.artifacts.values() if e["kind"] == "onnx"}
        wanted = precisions or tuple(p for p in Precision if p.value in graphs)
        if missing := [p.value for p in wanted if p.value not in graphs]:
            raise BadInput(f"{out} holds no {', '.join(missing)} ONNX graph ({old.holdings()}); export it first, or "
                           "leave it out of --precision")
        for p in wanted:
            check_sha(out, graphs[p.value])  # an engine from a graph changed after export: a false provenance
        if Precision.int8 in wanted and (old.calibration or {}).get("recipe") == "cpu":
            raise BadInput("the int8 graph uses the cpu recipe (int32 biases), which TensorRT's parser rejects; "
                           "re-export int8 with --int8-target tensorrt, or leave int8 out of --precision")
        info = ModelInfo.from_dict(old.model)
        fixed = graphs[wanted[0].value].get("static_batch")
        opts = replace(opts, dynamic_batch=not fixed, static_batch=fixed or 1)
        _engine_profile(opts, info)  # a --batch-range that does not fit a fixed-batch graph: refused before building
        versions = {**old.versions, **{k: v for k, v in tool_versions().items() if k.startswith("tensorrt")}}
        # The manifest is not removed first, as export does: without the model this folder cannot be exported
        # again here. Engine files are replaced atomically, and the manifest is rewritten after every engine
        # (a failed build keeps the ones before it), so each entry always describes the file beside it.
        folder = _Folder(out, old, keep_manifest=True)
        artifacts = dict(old.artifacts)
        manifest = old  # every engine cached: the folder stays byte-for-byte as it was

        def record(ev: StepEvent) -> None:
            nonlocal manifest
            if ev.status == "built":
                manifest = Manifest(model=old.model, artifacts=_in_artifact_order(artifacts),
                                    calibration=old.calibration, versions=versions)
                write_manifest(out, manifest)
            emit(ev)

        _build_engines(opts, info, out, folder, artifacts, wanted, flavor, versions, record,
                       on_progress or (lambda _msg: None))
    return ExportResult(out, manifest, events, info, notices)


def export_command(manifest: Manifest, folder: Path, precisions: str | tuple[str, ...],
                   keep_fp32: tuple[str, ...] = ()) -> str:
    """The `resnetx export` line that makes this folder's `precisions` graphs (and their engines) again as they
    were made, with `keep_fp32` layers added to those already kept: what verify suggests and `info DIR` shows,
    runnable as printed (without the model, exporter, calibration and folder options it would export the
    default model elsewhere, or make a new fp32 graph that drops the rest)."""
    wanted = (precisions,) if isinstance(precisions, str) else tuple(precisions)
    spec = manifest.model.get("spec") or {}
    fp32 = manifest.artifacts.get("fp32", {})
    args = ["resnetx", "export", "--model", str(spec.get("arch") or manifest.model["arch"])]
    for opt, key in (("--weights", "weights"), ("--num-classes", "num_classes"), ("--in-chans", "in_chans"),
                     ("--image-size", "image_size")):
        if spec.get(key) is not None:
            args += [opt, str(spec[key])]
    args += ["--out", str(folder), "--precision", ",".join(wanted)]
    if fp32.get("exporter", "dynamo") != "dynamo":
        args += ["--exporter", fp32["exporter"]]
    if fp32.get("static_batch"):
        args += ["--static-batch", str(fp32["static_batch"])]
    if fp32.get("opset", DEFAULT_OPSET) != DEFAULT_OPSET:
        args += ["--opset", str(fp32["opset"])]
    kept: set[str] = set(keep_fp32)
    for p in wanted:  # --keep-fp32 serves both: fp32 nodes in fp16, unquantized ones in int8
        entry = manifest.artifacts.get(p, {})
        kept |= set(entry.get("keep_fp32_nodes", ())) - set(entry.get("overflow_nodes", ()))  # minus automatic ones
        kept |= set(entry.get("excluded_nodes", ())) - set(entry.get("float_ends", ()))  # minus the float ends
    cal = manifest.calibration
    if "int8" in wanted and cal:
        args += ["--calib-data", cal["dataset"]] + (["--calib-dir", str(cal["data_dir"])] if cal.get("data_dir") else [])
        args += ["--calib-samples", str(cal["samples"]), "--calib-method", cal["method"], "--int8-target", cal["recipe"]]
        if manifest.artifacts.get("int8", {}).get("float_ends") == []:
            args.append("--int8-quantize-ends")
    engine = next((e for e in manifest.artifacts.values() if e["kind"] == "engine" and e["precision"] in wanted), None)
    if engine:
        args += ["--engine", engine["flavor"], "--batch-range", ",".join(map(str, engine["profile"]))]
        ccs = engine.get("compute_capabilities")
        if engine["flavor"] == "rtx" and ccs and tuple(ccs) != RTX_PORTABLE_CCS:
            args += ["--rtx-compute-capability", ",".join(ccs)]
        if engine.get("opt_level", 3) != 3:
            args += ["--opt-level", str(engine["opt_level"])]
    if kept:
        args += ["--keep-fp32", ",".join(sorted(kept))]
    return " ".join(shlex.quote(a) for a in args)
