"""The `resnetx export` line that makes a folder's artifacts again, as they were made.

One function words it for everyone: `resnetx info DIR` (the folder), verify's suggestion (one graph with a
layer more kept in float) and the TensorRT runner's advice (an engine rebuilt for the GPU at hand, from the
folder's own graphs). Run as printed, it must make the same bytes: without the model, exporter, calibration
and folder options it would export the default model elsewhere, or make a new fp32 graph that drops the rest.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from exporters.onnx import DEFAULT_OPSET, Exporter
from pipeline.artifacts import EngineEntry, Manifest
from pipeline.precisions import Precision
from resnetx.flavors import RTX_CCS, RTX_PORTABLE_CCS, Flavor

__all__ = ["remake_command"]


def remake_command(manifest: Manifest, folder: Path, precisions: tuple[Precision, ...], *,
                   add_keep: tuple[str, ...] = (), engines_only: bool = False, gpu_cc: str | None = None) -> str:
    """The export line for `precisions` of the folder (their graphs and engines), with `add_keep` layers kept in
    float beside those already kept. engines_only: the line that builds those engines again from the folder's
    graphs (it needs neither the model nor its weights), for the GPU `gpu_cc` when given."""
    if engines_only:
        args = _engines_args(manifest, folder, precisions[0], gpu_cc)
    else:
        args = _model_args(manifest, folder, precisions) + _graph_args(manifest, precisions)
        args += _engine_args(manifest, precisions) + _kept_args(manifest, precisions, add_keep)
    return " ".join(shlex.quote(a) for a in ["resnetx", "export", *args])


def _model_args(manifest: Manifest, folder: Path, precisions: tuple[Precision, ...]) -> list[str]:
    spec = manifest.model.spec
    args = ["--model", spec.arch]
    for opt, value in (("--weights", spec.weights), ("--num-classes", spec.num_classes),
                       ("--in-chans", spec.in_chans), ("--image-size", spec.image_size),
                       ("--mean", ",".join(map(str, spec.mean)) if spec.mean else None),
                       ("--std", ",".join(map(str, spec.std)) if spec.std else None), ("--resize", spec.resize),
                       ("--class-names", spec.class_names)):
        if value is not None:
            args += [opt, str(value)]
    return args + ["--out", str(folder), "--precision", ",".join(p.value for p in precisions)]


def _graph_args(manifest: Manifest, precisions: tuple[Precision, ...]) -> list[str]:
    args: list[str] = []
    fp32 = manifest.graphs.get(Precision.fp32)
    if fp32 is not None:
        if fp32.exporter not in (None, Exporter.dynamo.value):
            args += ["--exporter", fp32.exporter]
        if fp32.static_batch:
            args += ["--static-batch", str(fp32.static_batch)]
        if fp32.opset != DEFAULT_OPSET:
            args += ["--opset", str(fp32.opset)]
    cal = manifest.calibration
    if Precision.int8 in precisions and cal is not None:
        args += ["--calib-data", cal.dataset] + (["--calib-dir", str(cal.data_dir)] if cal.data_dir else [])
        args += ["--calib-samples", str(cal.samples), "--calib-method", cal.method, "--int8-target", cal.recipe]
        int8 = manifest.graphs[Precision.int8]
        if int8.quantize_ends:
            args.append("--int8-quantize-ends")
        if int8.fallback == "fp16":
            args += ["--fallback", "fp16"]
        if not cal.equalized:
            args.append("--no-int8-equalize")
    return args


def _kept_args(manifest: Manifest, precisions: tuple[Precision, ...], add_keep: tuple[str, ...]) -> list[str]:
    kept = set(add_keep)  # --keep-fp32 serves both: fp32 nodes in fp16, unquantized ones in int8
    for p in precisions:
        if (g := manifest.graphs.get(p)) is not None:
            kept |= set(g.keep_fp32)
    return ["--keep-fp32", ",".join(sorted(kept))] if kept else []


def _engine_args(manifest: Manifest, precisions: tuple[Precision, ...]) -> list[str]:
    engine = next((e for e in manifest.engines.values() if e.precision in precisions), None)
    if engine is None:
        return []
    args = ["--engine", engine.flavor.value, "--batch-range", ",".join(map(str, engine.profile))]
    if engine.flavor is Flavor.rtx and engine.compute_capabilities and engine.compute_capabilities != RTX_PORTABLE_CCS:
        args += ["--rtx-compute-capability", ",".join(engine.compute_capabilities)]
    if engine.opt_level != 3:
        args += ["--opt-level", str(engine.opt_level)]
    return args


def _engines_args(manifest: Manifest, folder: Path, precision: Precision, gpu_cc: str | None) -> list[str]:
    engine: EngineEntry | None = next((e for e in manifest.engines.values() if e.precision is precision), None)
    flavor = engine.flavor if engine else Flavor.tensorrt
    if flavor is Flavor.rtx and gpu_cc and gpu_cc not in RTX_CCS.values():  # a GPU TensorRT-RTX does not target
        flavor = Flavor.tensorrt
    args = ["--out", str(folder), "--engines-only", "--engine", flavor.value, "--precision", precision.value]
    if engine is not None:
        args += ["--batch-range", ",".join(map(str, engine.profile))]
    if flavor is Flavor.rtx and gpu_cc:
        args += ["--rtx-compute-capability", "SM" + gpu_cc.replace(".", "")]
    return [*args, "--force"]
