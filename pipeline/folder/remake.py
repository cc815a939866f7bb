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
from pipeline.defaults import DEFAULT_OPT_LEVEL
from pipeline.folder.manifest import EngineEntry, Manifest
from pipeline.precisions import Precision
from resnetx.flavors import RTX_CCS, RTX_PORTABLE_CCS, Flavor

__all__ = ["remake_command"]


def remake_command(manifest: Manifest, folder: Path, precisions: tuple[Precision, ...], *,
                   add_keep: tuple[str, ...] = (), engines_only: bool = False, gpu_cc: str | None = None,
                   search: tuple[float, str | None] | None = None) -> str:
    """The export line for `precisions` of the folder (their graphs and engines), with `add_keep` layers kept in
    float beside those already kept. Graphs that keep different layers in float (an int8 graph made by a search or
    a `try:` line beside the fp16 graph before it) each get their own line, joined by &&: the later line keeps the
    graphs the earlier one made. engines_only: the line that builds those engines again from the folder's graphs
    (it needs neither the model nor its weights), for the GPU `gpu_cc` when given. search: (budget, the labelled data
    that judges it, None for the calibration data's held-out images): the int8 graph made by the accuracy search."""
    if engines_only:
        return _line(_engines_args(manifest, folder, precisions[0], gpu_cc))
    lines = []
    for group in _keep_groups(manifest, precisions, add_keep):
        args = _model_args(manifest, folder, group) + _graph_args(manifest, group) + _kept_args(manifest, group,
                                                                                                  add_keep)
        if search is not None and Precision.int8 in group:
            args += ["--max-accuracy-drop", f"{search[0]:g}"] + (["--accuracy-data", search[1]] if search[1] else [])
        lines.append(_line(args))
    lines += [_line(args) for args in _rtx_lines(manifest, folder, precisions)]
    return " && ".join(lines)


def _line(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in ["resnetx", "export", *args])


def _keep_groups(manifest: Manifest, precisions: tuple[Precision, ...],
                 add_keep: tuple[str, ...]) -> list[tuple[Precision, ...]]:
    """The precisions in groups whose graphs keep the same layers in float, in precision order; fp32 (which keeps
    none: it is the source) goes with the first group."""
    groups: dict[tuple[str, ...], list[Precision]] = {}
    for p in precisions:
        g = manifest.graphs.get(p)
        if p is Precision.fp32 or g is None:
            continue
        groups.setdefault(tuple(sorted({*g.keep_fp32, *add_keep})), []).append(p)
    ordered = [tuple(ps) for ps in groups.values()] or [()]
    if Precision.fp32 in precisions:
        ordered[0] = (Precision.fp32, *ordered[0])
    return [g for g in ordered if g]


def _model_args(manifest: Manifest, folder: Path, precisions: tuple[Precision, ...]) -> list[str]:
    args = manifest.model.spec.cli_args()
    return args + ["--out", str(folder), "--precision", ",".join(p.value for p in precisions)]


def _graph_args(manifest: Manifest, precisions: tuple[Precision, ...]) -> list[str]:
    args: list[str] = []
    fp32 = manifest.graphs.get(Precision.fp32)
    if fp32 is not None and fp32.exporter in {e.value for e in Exporter} | {None}:  # made by a torch exporter
        if fp32.exporter not in (None, Exporter.dynamo.value):
            args += ["--exporter", fp32.exporter]
        if fp32.static_batch:
            args += ["--static-batch", str(fp32.static_batch)]
        if fp32.opset != DEFAULT_OPSET:
            args += ["--opset", str(fp32.opset)]
    cal = manifest.calibration
    if Precision.int8 in precisions and cal is not None:
        args += ["--calib-data", cal.dataset] + (["--calib-dir", str(cal.data_dir)] if cal.data_dir else [])
        args += ["--calib-samples", str(cal.samples), "--calib-method", cal.method, "--int8-recipe", cal.recipe]
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


def _rtx_engines(manifest: Manifest, precisions: tuple[Precision, ...]) -> list[EngineEntry]:
    """The folder's TensorRT-RTX engines of these precisions: the engines any machine can build again (an
    enterprise engine is built on its own GPU kind; `resnetx info` says where)."""
    return [e for e in manifest.engines.values() if e.precision in precisions and e.flavor is Flavor.rtx]


def _rtx_lines(manifest: Manifest, folder: Path, precisions: tuple[Precision, ...]) -> list[list[str]]:
    """One --engines-only line per TensorRT-RTX target (a set of compute capabilities) with exactly the precisions
    that have an engine for it: what a folder's graphs need to get their engines back, on any machine."""
    targets: dict[tuple[str, ...], list[EngineEntry]] = {}
    for e in _rtx_engines(manifest, precisions):
        targets.setdefault(e.compute_capabilities, []).append(e)
    lines = []
    for ccs, es in targets.items():
        args = ["--out", str(folder), "--engines-only", "--engine", "rtx", "--precision",
                ",".join(p.value for p in Precision if p in {e.precision for e in es}),
                "--batch-range", ",".join(map(str, es[0].profile))]
        if ccs and ccs != RTX_PORTABLE_CCS:
            args += ["--rtx-compute-capability", ",".join(ccs)]
        if es[0].opt_level != DEFAULT_OPT_LEVEL:
            args += ["--opt-level", str(es[0].opt_level)]
        lines.append(args)
    return lines


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
