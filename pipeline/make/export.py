"""The export command's work: plan the steps (graphs, engines, reference logits), run them, write the manifest."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.defaults import DEFAULT_CONVENTION_SAMPLES
from pipeline.folder.audit import holdings, stale_files
from pipeline.folder.manifest import (
    MANIFEST,
    Entry,
    GraphEntry,
    Manifest,
    ModelSection,
    checked_file,
    export_lock,
    read_manifest,
    tool_versions,
    write_manifest,
)
from pipeline.folder.references import StoredRows, reference_file, store, stored_or_computed, verify_inputs
from pipeline.make.engines import engine_profile, engine_steps, resolve_flavor
from pipeline.make.graphs import GRAPH_STEPS, int8_notices
from pipeline.make.options import ExportContext, ExportOptions, check_batch_range
from pipeline.make.search import accuracy_set
from pipeline.make.steps import FolderWriter, Step, StepEvent, keep_earlier, kept_event, remove_strays, run_steps
from pipeline.model.conventions import convention_check
from pipeline.model.data import Dataset, open_dataset, select_indices, undecodable
from pipeline.model.zoo import ModelInfo
from pipeline.precisions import PRECISIONS, Precision
from pipeline.sources import open_source
from resnetx.errors import BackendUnavailable, BadInput, ResnetxError
from resnetx.files import atomic_write, file_sha256
from resnetx.flavors import EngineChoice, Flavor

__all__ = ["ExportOptions", "StepEvent", "ExportResult", "export", "export_engines", "check_run_inputs"]

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    folder: Path
    manifest: Manifest
    events: list[StepEvent]
    info: ModelInfo
    notices: list[str] = field(default_factory=list)
    missed: str | None = None  # why the export is a failed check (an int8 search over its budget): exit 1


def _previous(out: Path) -> Manifest | None:
    if not (out / MANIFEST).is_file():
        return None
    try:
        return read_manifest(out)
    except ResnetxError as e:
        log.warning("ignoring the old manifest (%s): rebuilding everything", e)
        return None


def export(
    opts: ExportOptions,
    on_step: Callable[[StepEvent], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Run every export step into opts.out; skip steps whose inputs and options are unchanged.

    on_step hears each finished step; on_progress hears what a long step is doing now.
    """
    if opts.engines_only:
        return export_engines(opts, on_step, on_progress)
    source = open_source(opts.model)
    info = source.info
    notices: list[str] = []
    flavor = resolve_flavor(opts.engine, notices)
    if flavor:  # refused before minutes of work (ExportOptions checked the rest of the engine options)
        opts.check_engines_take_int8()
    preflight(opts, info)
    check_batch_range(source.batch, opts.batch_range)
    events: list[StepEvent] = []
    hear = _listener(events, on_step)
    fresh = not opts.out.exists()
    try:
        with export_lock(opts.out):
            ctx = ExportContext(opts, info, tool_versions(), source, on_progress or _quiet)
            manifest, made = _run_export(ctx, flavor, hear, notices)
    except BaseException:
        if fresh and not (opts.out / MANIFEST).exists():  # a folder this export created holds nothing usable
            shutil.rmtree(opts.out, ignore_errors=True)
        raise
    int8 = made.get(Precision.int8.value)
    int8 = int8 if isinstance(int8, GraphEntry) else None
    notices += int8_notices(int8, opts, info) + _convention_notices(opts, info)
    return ExportResult(opts.out, manifest, events, info, notices, _missed(int8))


def _run_export(ctx: ExportContext, flavor: Flavor | None, hear: Callable[[StepEvent], None],
                notices: list[str]) -> tuple[Manifest, dict[str, Entry]]:
    """Under the lock: the steps, the entries kept from an earlier export, the manifest, the reference logits, and
    the removal of files no entry lists any more."""
    opts = ctx.opts
    remove_strays(opts.out)
    old = _previous(opts.out)
    batch = opts.batch if opts.batch is not None else ctx.source.batch  # a user's ONNX file may fix its own
    plan = [GRAPH_STEPS[p](ctx) for p in opts.wanted] + engine_steps(ctx, opts.wanted, flavor, batch)
    writer = FolderWriter(opts.out, old)
    made = run_steps(plan, writer, force=opts.force, on_step=hear)
    kept = [] if opts.force else keep_earlier(old, made, opts.out)
    for entry in kept:
        hear(kept_event(entry))
    _write_mean_image(opts.out, ctx.info)
    manifest = Manifest.of(ModelSection(ctx.info, opts.model, ctx.source.sha256), [*made.values(), *kept],
                           ctx.versions)
    if old is not None and not writer.written and old.same_content(manifest):
        manifest = old  # nothing changed: keep the folder byte-for-byte as it was
    else:
        write_manifest(opts.out, manifest)
    if stale := stale_files(opts.out, manifest):
        for name in stale:
            (opts.out / name).unlink(missing_ok=True)
        notices.append(f"removed {', '.join(stale)}: made by an earlier export from graphs this one replaced, "
                       "listed by no manifest entry")
    if opts.reference_samples:  # after the manifest: a kill here leaves a complete folder, minus this
        run_steps([_reference_step(ctx)], FolderWriter(opts.out, None, keep_manifest=True),
                  force=opts.force, on_step=hear)
    return manifest, made


def _convention_notices(opts: ExportOptions, info: ModelInfo) -> list[str]:
    """The preprocessing check (pipeline/model/conventions.py) on --accuracy-data, labelled images of the model's
    classes: a convention that scores clearly better than the declared one is named."""
    if opts.accuracy_data is None:
        return []
    ds = open_dataset(opts.accuracy_data, split="test", data_dir=opts.accuracy_dir, preprocess=info.preprocess)
    if ds.labels is None or len(ds.class_names or ()) != info.num_classes:
        return []
    return convention_check(opts.out / PRECISIONS[Precision.fp32].onnx_file, info.preprocess, ds,
                            DEFAULT_CONVENTION_SAMPLES, opts.seed)


def _write_mean_image(out: Path, info: ModelInfo) -> None:
    """The per-pixel mean the model's preprocessing subtracts, beside the manifest that records its hash (before the
    manifest: a folder is valid at every moment)."""
    mean = info.preprocess.mean_image
    if mean is None or mean.array is None:
        return
    path = out / mean.FILE
    if path.is_file():
        with contextlib.suppress(ResnetxError):
            mean.loaded(out)  # already there, unchanged: the folder stays byte for byte
            return
    buf = io.BytesIO()
    np.save(buf, mean.array, allow_pickle=False)
    atomic_write(path, buf.getvalue())


def check_run_inputs(data: str, data_dir: Path | None, device: str) -> None:
    """What `resnetx run` checks before minutes of export: its data opens, and a CUDA device is there if asked."""
    open_dataset(data, data_dir=data_dir)
    if device == "cuda":
        from runtimes.base import require_cuda

        require_cuda("; nothing was exported")


def preflight(opts: ExportOptions, info: ModelInfo) -> None:
    """Open every dataset the export will read and check the images it will use, before any work: an image folder
    without images, or with files that do not decode, fails in seconds (all bad files named at once), not after
    minutes of export, and leaves nothing behind."""
    if Precision.int8 in opts.wanted:
        ds = open_dataset(opts.calib_data, split="train", data_dir=opts.calib_dir, preprocess=info.preprocess)
        _decodable(ds, select_indices(len(ds), opts.calib_samples, opts.seed, shuffle=True), "--calib-data")
        if opts.max_accuracy_drop is not None:
            acc = accuracy_set(opts, info)
            _decodable(acc.images.ds, acc.images.index, "--accuracy-data")
    if opts.reference_samples:
        inputs = verify_inputs(opts.reference_data, opts.reference_data_dir, opts.reference_samples,
                               info.preprocess, info.num_classes)
        _decodable(inputs.images.ds, inputs.images.index, "--data")


def _decodable(ds: Dataset, idx: np.ndarray, flag: str) -> None:
    if bad := undecodable(ds, idx):
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise BadInput(f"{flag} {ds.name}: {len(bad)} image(s) do not open as images: {', '.join(bad[:8])}{more}; "
                       "remove or replace them")


def _missed(int8: GraphEntry | None) -> str | None:
    s = int8.search if int8 is not None else None
    if s is None or s.met:
        return None
    return (f"the int8 search missed its budget: the best graph found loses {s.result.drop:.2f} points of top-1 "
            f"(+ margin {s.result.margin:.2f}; budget {s.budget:g}) on {s.data}; it is in the folder, recorded as "
            "missed. Raise --max-accuracy-drop, --accuracy-samples (a smaller margin) or --search-seconds, or "
            "calibrate on more representative data")


def _quiet(_msg: str) -> None:
    pass


def _listener(events: list[StepEvent], on_step: Callable[[StepEvent], None] | None) -> Callable[[StepEvent], None]:
    def hear(ev: StepEvent) -> None:
        events.append(ev)
        if on_step:
            on_step(ev)

    return hear


def _reference_step(ctx: ExportContext) -> Step:
    """fp32 reference logits on verify's default inputs, stored for verify (Polygraphy's --save-outputs)."""
    o, source = ctx.opts, ctx.source
    inputs = verify_inputs(o.reference_data, o.reference_data_dir, o.reference_samples, ctx.info.preprocess,
                           ctx.info.num_classes)
    rel = reference_file(o.reference_data, o.reference_samples)
    path = ctx.out / rel
    note = f"fp32 reference logits ({source.spec.reference_name}), {len(inputs)} inputs, for verify"

    def entry() -> Entry:
        return Entry(Precision.fp32, str(rel), file_sha256(path), path.stat().st_size)

    def lookup() -> Entry | None:
        if not path.is_file():
            return None
        held = StoredRows(None, files=[path], made_by=source.made_by)  # this file must hold every input's logits
        return entry() if stored_or_computed(inputs, source.sha256, held, None).logits is not None else None

    def make(made: dict[str, Entry]) -> Entry:
        ctx.progress(f"reference: fp32 logits on verify's {o.reference_samples} inputs from {o.reference_data}")
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            ctx.progress(f"reference: fp32 logits ({source.spec.reference_name}), {done}/{len(inputs)} inputs")

        store(path, stored_or_computed(inputs, source.sha256, StoredRows(None), source.logits, on_batch=tick),
              source.made_by)
        return entry()

    return Step("reference", "reference", {}, make, describe=lambda e: note, lookup=lookup)


def export_engines(
    opts: ExportOptions,
    on_step: Callable[[StepEvent], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Engines from the ONNX graphs already in opts.out, without the model or its weights (`export --engines-only`).

    TensorRT engines are tied to the GPU and TensorRT version they are built with: a folder exported on a
    workstation and copied to where it runs (a Jetson, another server) gets its engines built there, from
    the very graphs the manifest pins (each checked against its sha256 first). opts.precisions None: every graph."""
    out = opts.out
    read_manifest(out)  # a folder that is not an export says so before the lock would create it
    notices: list[str] = []
    flavor = resolve_flavor(EngineChoice.auto if opts.engine is EngineChoice.none else opts.engine, notices)
    if flavor is None:
        raise BackendUnavailable("--engines-only found no TensorRT to build with: pip install tensorrt-cu13 (or "
                                 "tensorrt-rtx-cu13 for RTX GPUs), then give --engine tensorrt or rtx")
    events: list[StepEvent] = []
    with export_lock(out):
        old = read_manifest(out)  # under the lock: what an export that just finished wrote
        wanted = _engine_graphs(old, opts, out)
        batch = old.graphs[wanted[0]].static_batch
        engine_profile(batch, opts.batch_range, old.model.info)  # refused before building
        versions = {**old.versions, **{k: v for k, v in tool_versions().items() if k.startswith("tensorrt")}}
        ctx = ExportContext(opts, old.model.info, versions, None, on_progress or _quiet)
        state = {"manifest": old}  # every engine cached: the folder stays byte-for-byte as it was

        def rewrite(made: dict[str, Entry]) -> None:
            # The manifest is not removed first, as export does: without the model this folder cannot be exported
            # again here. Engine files are replaced atomically and the manifest rewritten after every engine (a
            # failed build keeps the ones before it), so each entry always describes the file beside it.
            entries = {e.name: e for e in old.entries()} | made
            state["manifest"] = Manifest.of(old.model, list(entries.values()), versions)
            write_manifest(out, state["manifest"])

        run_steps(engine_steps(ctx, wanted, flavor, batch), FolderWriter(out, old, keep_manifest=True),
                  force=opts.force, made={g.name: g for g in old.graphs.values()},
                  on_step=_listener(events, on_step), on_built=rewrite)
    return ExportResult(out, state["manifest"], events, old.model.info, notices)


def _engine_graphs(old: Manifest, opts: ExportOptions, out: Path) -> tuple[Precision, ...]:
    """The graphs --engines-only builds from: each present, unchanged since export, and one TensorRT parses."""
    wanted = opts.precisions or tuple(p for p in Precision if p in old.graphs)
    if missing := [p.value for p in wanted if p not in old.graphs]:
        raise BadInput(f"{out} holds no {', '.join(missing)} ONNX graph ({holdings(old)}); export it first, or "
                       "leave it out of --precision")
    for p in wanted:
        checked_file(out, old.graphs[p])  # an engine from a graph changed after export: a false provenance
    cal = old.calibration
    if Precision.int8 in wanted and cal is not None and cal.recipe == "cpu":
        raise BadInput("the int8 graph uses the cpu recipe (int32 biases), which TensorRT's parser rejects; "
                       "re-export int8 with --int8-recipe tensorrt, or leave int8 out of --precision")
    return wanted
