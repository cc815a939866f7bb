"""Parity of every artifact against the fp32 reference (the source the folder was exported from); per-precision
verdicts; localisation."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.check.candidates import (
    Candidate,
    check_runtime_options,
    open_candidate,
    opener_options,
    select_candidates,
)
from pipeline.check.localize import Judging, localize
from pipeline.check.records import record_verify
from pipeline.check.reference import DEFAULT_SAMPLES, ArrayInputs, Inputs, Reference, verify_inputs
from pipeline.check.results import Metrics, VerifyReport, VerifyRow
from pipeline.defaults import DEFAULT_CONVENTION_SAMPLES
from pipeline.folder.audit import audit_folder
from pipeline.folder.manifest import EngineEntry, GraphEntry, Manifest, tool_versions
from pipeline.machine import isa_mismatch, system_info
from pipeline.model.conventions import convention_check
from pipeline.model.data import calibration_overlap_note, label_order_note, near_chance_note
from pipeline.precisions import PRECISIONS, Precision, Tolerance, parse_precisions
from resnetx.errors import BackendUnavailable, BadInput, CheckFailed, IncompatibleArtifact, ResnetxError
from resnetx.parity import logit_parity
from runtimes.base import Device, Runtime
from runtimes.registry import RUNTIMES, runtime_spec, runtime_version

__all__ = [
    "VerifyOptions",
    "Metrics",
    "VerifyRow",
    "VerifyReport",
    "compare",
    "verify",
    "judge",
    "judge_candidates",
    "audited",
]

log = logging.getLogger(__name__)
ProgressFn = Callable[[str, int, int], None]
RANK_IMAGES = 128  # real images on which localisation ranks the int8 layers to revert


@dataclass(frozen=True)
class VerifyOptions:
    folder: Path
    device: str = "cpu"  # or a Device; auto resolves here
    samples: int = DEFAULT_SAMPLES
    data: str = "sample"
    data_dir: Path | None = None
    batch_size: int | None = None  # None: 16 at ImageNet sizes, 64 for small images
    precisions: tuple[Precision, ...] | None = None  # None: all in the manifest
    runtimes: tuple[str, ...] | None = None  # None: ort (+ trt on cuda when engines exist)
    rel_l2: float | None = None  # overrides of the per-precision defaults
    top1_agreement: float | None = None
    accuracy_drop: float | None = None
    localize: bool = False
    seed: int = 0
    runtime_options: dict[str, Any] = field(default_factory=dict)  # runtime rows' own options (--ov-device ...)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "device", Device(self.device).resolve())
        if self.precisions is not None:
            object.__setattr__(self, "precisions", parse_precisions(self.precisions, with_source=False))
        for name in self.runtimes or ():
            runtime_spec(name)
        check_runtime_options(self.runtime_options, self.runtimes, "verify", self.device)
        if self.samples < 1:
            raise BadInput("--samples must be >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise BadInput("--batch-size must be >= 1")


# --------------------------------------------------------------------------- metrics
COMPARE_BLOCK = 1024  # rows compared at a time: float64 copies of N x classes logits would grow with --samples


def compare(ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None = None,
            task_rows: int | None = None) -> Metrics:
    """Element-wise and task metrics of `got` against `ref` (both N x classes logits), a block of rows at a time.

    Element-wise metrics and the NaN/Inf count use every row; top-1/top-5 agreement use the
    first `task_rows` (the real images: on noise inputs near-tied logits make argmax flips
    meaningless); accuracy uses the labelled rows at the start.
    """
    n_rows, k = len(ref), min(5, ref.shape[1])
    t = n_rows if task_rows is None else max(1, min(task_rows, n_rows))
    n_lab = len(labels) if labels is not None else 0
    s = {"max": 0.0, "abs": 0.0, "sq": 0.0, "ref_sq": 0.0, "cos": float("inf"), "agree": 0, "overlap": 0.0,
         "bad": 0, "ref1": 0, "got1": 0, "ref5": 0, "got5": 0}
    for i in range(0, n_rows, COMPARE_BLOCK):
        _compare_block(ref[i : i + COMPARE_BLOCK].astype(np.float64), got[i : i + COMPARE_BLOCK].astype(np.float64),
                       i, k, t, labels[i : i + COMPARE_BLOCK] if i < n_lab else None, s)
    bad = int(s["bad"])
    m = Metrics(max_abs=s["max"] if bad == 0 else float("inf"), mean_abs=s["abs"] / max(ref.size, 1),
                rel_l2=float(np.sqrt(s["sq"]) / max(np.sqrt(s["ref_sq"]), 1e-30)) if bad == 0 else float("inf"),
                min_cosine=s["cos"], top1_agreement=s["agree"] / t, top5_overlap=s["overlap"] / t, nonfinite=bad,
                samples=int(n_rows))
    if n_lab:  # labelled inputs come first; the extreme inputs after them have none
        m.ref_top1, m.top1 = 100.0 * s["ref1"] / n_lab, 100.0 * s["got1"] / n_lab
        m.ref_top5, m.top5 = 100.0 * s["ref5"] / n_lab, 100.0 * s["got5"] / n_lab
    return m


def _compare_block(r: np.ndarray, gg: np.ndarray, start: int, k: int, t: int, labels: np.ndarray | None,
                   s: dict[str, float]) -> None:
    """Add one block of rows (starting at row `start`) to the running sums of compare()."""
    finite = np.isfinite(gg)
    s["bad"] += int((~finite).sum())
    g = np.where(finite, gg, 0.0)
    diff = np.abs(g - r)
    s["max"] = max(s["max"], float(diff.max()))
    s["abs"] += float(diff.sum())
    s["sq"] += float((diff * diff).sum())
    s["ref_sq"] += float((r * r).sum())
    cos = (r * g).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1), 1e-30)
    s["cos"] = min(s["cos"], float(cos.min()))
    top_r, top_g = np.argsort(-r, axis=1)[:, :k], np.argsort(-g, axis=1)[:, :k]
    task = max(0, min(len(r), t - start))
    s["agree"] += int((top_r[:task, 0] == top_g[:task, 0]).sum())
    s["overlap"] += sum(len(set(a) & set(b)) / k for a, b in zip(top_r[:task], top_g[:task], strict=True))
    if labels is not None:
        n = len(labels)
        s["ref1"] += int((top_r[:n, 0] == labels).sum())
        s["got1"] += int((top_g[:n, 0] == labels).sum())
        s["ref5"] += int((top_r[:n] == labels[:, None]).any(1).sum())
        s["got5"] += int((top_g[:n] == labels[:, None]).any(1).sum())


def judge(m: Metrics, tol: Tolerance) -> list[str]:
    """Reasons the metrics fail the tolerance; empty when they pass. Any NaN/Inf fails."""
    out = []
    if m.nonfinite:
        out.append(f"{m.nonfinite} NaN/Inf output value(s)")
    if tol.rel_l2 is not None and not m.rel_l2 <= tol.rel_l2:
        out.append(f"rel. L2 {m.rel_l2:.2e} > {tol.rel_l2:.0e}")
    if tol.top1_agreement is not None and not m.top1_agreement >= tol.top1_agreement:
        out.append(f"top-1 agreement {100 * m.top1_agreement:.2f}% < {100 * tol.top1_agreement:.1f}%")
    drop = m.accuracy_drop
    if tol.accuracy_drop is not None and drop is not None and not drop <= tol.accuracy_drop:
        out.append(f"accuracy drop {drop:.2f} points > {tol.accuracy_drop}")
    return out


# --------------------------------------------------------------------------- verify
def _tolerance(opts: VerifyOptions, t: Candidate, output: str = "logits") -> Tolerance:
    tol = PRECISIONS[t.precision].tolerance_on(t.device, output)
    return tol.merged(rel_l2=opts.rel_l2, top1_agreement=opts.top1_agreement, accuracy_drop=opts.accuracy_drop)


def _ticker(on_progress: ProgressFn | None, name: str, total: int) -> Callable[[int], None]:
    """A callback counting inputs done, for a progress bar named `name`."""
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if on_progress:
            on_progress(name, done, total)

    return tick


@dataclass(frozen=True)
class _VerifyRun:
    """What every target of one verify is compared on."""

    opts: VerifyOptions
    folder: Path
    manifest: Manifest
    reference: Reference | None  # None: judged on logits shipped to a fleet node, no model there
    inputs: Inputs | ArrayInputs
    ref_logits: np.ndarray
    batch: int


def verify(opts: VerifyOptions, *, on_progress: ProgressFn | None = None, record: bool = True) -> VerifyReport:
    """Compare each selected artifact with the folder's fp32 reference (its source: PyTorch, onnxruntime on an ONNX
    file, Keras). Every file of the folder is checked against the manifest first (a changed or missing file fails
    before anything runs). With `record`, the report and its verdicts are written under the folder's lock
    (records.record_verify), unless it judged nothing: a run that judged nothing never replaces a real verdict."""
    start = time.perf_counter()
    folder = opts.folder
    manifest = audited(folder)
    targets = select_candidates(manifest, folder, command="verify", runtimes=opts.runtimes, precisions=opts.precisions,
                             device=opts.device)
    torch.manual_seed(opts.seed)
    ref = Reference.of(manifest)
    info = ref.info
    inputs = verify_inputs(opts.data, opts.data_dir, opts.samples, info.preprocess, info.num_classes, seed=opts.seed)
    notes = _input_notes(inputs, opts.samples, info.num_classes)
    cal = manifest.calibration
    if opts.device == "cpu" and cal is not None and any(t.precision is Precision.int8 for t in targets) and (
            isa := isa_mismatch(cal.isa, cal.recipe)):
        notes.append(isa)
    logits, made_by = ref.logits(folder, inputs, samples=opts.samples,
                                 on_batch=_ticker(on_progress, f"{ref.name} reference", len(inputs)))
    if ref.source is None:
        notes.append(f"{ref.why_missing}: the reference is the stored fp32 logits (computed with {made_by})")
    notes += _convention_notes(opts, manifest, inputs)
    report = judge_candidates(opts, manifest, targets, inputs, logits, ref, on_progress)
    report.notes[:0] = notes
    report.reference_stored = made_by is not None
    report.reference = ref.name
    report.seconds = time.perf_counter() - start
    if record:
        try:
            record_verify(report)
        except OSError as e:  # a read-only folder: the verdict is still the caller's to show, then exit 2
            report.unwritten = e.strerror or str(e)
    return report


def judge_candidates(opts: VerifyOptions, manifest: Manifest, targets: list[Candidate], inputs: Inputs | ArrayInputs,
                  ref_logits: np.ndarray, reference: Reference | None = None,
                  on_progress: ProgressFn | None = None, kind: str | None = None,
                  keep_logits: bool = False) -> VerifyReport:
    """Run each target on the inputs and judge it against the reference logits: verify's second half, also what a
    fleet node runs on the inputs and logits its driver shipped (`reference` None: no torch rows, no fp32
    localisation there; `kind` names the fleet's kind of the node; `keep_logits` keeps each row's logits in the
    report, for the fleet's parity between kinds)."""
    start = time.perf_counter()
    info = manifest.model.info
    run = _VerifyRun(opts, opts.folder, manifest, reference, inputs, ref_logits,
               opts.batch_size or (16 if info.image_size >= 96 else 64))
    rows, logits = [], {}
    shared = Counter(t.entry.file for t in targets if t.entry is not None)
    by_file: dict[str, list[tuple[str, np.ndarray]]] = {}  # one graph run by several runtimes: their parity
    for t in targets:
        row, got = _verify_one(run, t, on_progress)
        rows.append(row)
        if got is not None and keep_logits:
            logits[t.key] = got
        if got is not None and t.entry is not None and shared[t.entry.file] > 1:
            by_file.setdefault(t.entry.file, []).append((t.runtime.name, got))
    system = system_info(tool_versions())
    kind = kind or system["kind"]
    notes = _data_notes(run, rows) + _unverified_engines(opts, manifest) + runtime_parity(by_file)
    return VerifyReport(opts.folder, rows, inputs.data, len(inputs), manifest_created=manifest.created,
                        seconds=time.perf_counter() - start, notes=notes, system={**system, "kind": kind},
                        kind=kind, labelled=inputs.labels is not None, drawn=inputs.drawn, logits=logits,
                        output=info.output)


def runtime_parity(by_file: dict[str, list[tuple[str, np.ndarray]]]) -> list[str]:
    """One line per graph that several runtimes ran: how far their logits are from each other's (the same bytes,
    different kernels), against the first runtime."""
    lines = []
    for file, runs in by_file.items():
        (base, ref), others = runs[0], runs[1:]
        parts = []
        for name, got in others:
            agreement, rel = logit_parity(got, ref)
            parts.append(f"{name} vs {base}: top-1 agreement {100 * agreement:.2f}%, rel. L2 {rel:.2e}")
        lines.append(f"runtime parity on {file}: {'; '.join(parts)}")
    return lines


def audited(folder: Path) -> Manifest:
    """The folder's manifest, after checking every file it names, engines too (even where they cannot run): a
    changed or missing file fails here, naming each one, before anything runs."""
    audit = audit_folder(folder)
    if bad := [f"{r.entry.file} ({r.status})" for r in audit.rows if r.status != "ok"]:
        raise CheckFailed(f"{folder} fails its audit before verify runs anything: {', '.join(bad)} differ from "
                          f"manifest.json; their provenance is unknown: re-run the resnetx export that made {folder} "
                          "(resnetx info shows the line) with --force")
    return audit.manifest


def _infer_inputs(rt: Runtime, inputs: Inputs | ArrayInputs, batch: int, tick: Callable[[int], None]) -> np.ndarray:
    """The runtime's logits for every input, decoded a chunk at a time, filled into one array."""
    out: np.ndarray | None = None
    done = 0
    for x in inputs.chunks(max(batch, 64)):
        got = rt.infer_all(x, batch, tick)
        if out is None:
            out = np.empty((len(inputs), got.shape[1]), np.float32)
        out[done : done + len(got)] = got
        done += len(got)
    return out if out is not None else np.empty((0, 0), np.float32)


def _verify_one(run: _VerifyRun, t: Candidate, on_progress: ProgressFn | None) -> tuple[VerifyRow, np.ndarray | None]:
    """The target's row, and its logits when it ran."""
    t0 = time.perf_counter()
    tol = _tolerance(run.opts, t, run.manifest.model.info.output)
    try:
        options = opener_options(t.runtime, run.opts)
        with open_candidate(t, run.folder, run.manifest, run.reference, **options) as rt:
            got = _infer_inputs(rt, run.inputs, run.batch, _ticker(on_progress, rt.name, len(run.inputs)))
            name = rt.name
    except (BackendUnavailable, IncompatibleArtifact) as e:  # not for this machine: the other rows still run
        return VerifyRow(t.key, t.label, t.precision.value, t.device, False, skipped=str(e),
                         backend=t.runtime.name), None
    except CheckFailed as e:  # sha mismatch: provenance broken
        return VerifyRow(t.key, t.label, t.precision.value, t.device, False, tolerance=tol, failures=[str(e)],
                         backend=t.runtime.name), None
    m = compare(run.ref_logits, got, run.inputs.labels, task_rows=run.inputs.n_real)
    fails = judge(m, tol)
    row = VerifyRow(t.key, name, t.precision.value, t.device, not fails, metrics=m, tolerance=tol, failures=fails,
                    seconds=time.perf_counter() - t0, backend=t.runtime.name, version=runtime_version(t.runtime))
    if isinstance(t.entry, GraphEntry) and t.runtime.localizes and (run.opts.localize or fails) \
            and run.reference is not None:
        t_loc = time.perf_counter()
        try:
            head = run.inputs.head(min(RANK_IMAGES, run.inputs.n_real))
            row.localization = localize(run.folder, run.manifest, t.entry, run.reference, head[:8], tol,
                                        rank_inputs=head, passed=not fails, judging=_judging(run, tol))
            row.localization.seconds = round(time.perf_counter() - t_loc, 2)
        except ResnetxError as e:
            row.localization_error = str(e)
    return row, got


def _judging(run: _VerifyRun, tol: Tolerance) -> Judging:
    """What this verify judges an artifact on (its real inputs, the reference on them, their labels, the bar): what a
    suggested fix is measured on before it is printed."""
    inputs = run.inputs
    return Judging(lambda: inputs.chunks(64), run.ref_logits, inputs.n_real, inputs.labels, tol, run.opts.data)


def _convention_notes(opts: VerifyOptions, manifest: Manifest, inputs: Inputs) -> list[str]:
    """The preprocessing check on labelled images of the model's classes (not synthetic noise): a convention that
    scores clearly better than the declared one is named (pipeline/model/conventions.py)."""
    fp32 = manifest.graphs.get(Precision.fp32)
    if inputs.labels is None or fp32 is None or opts.data == "synthetic":
        return []
    return convention_check(opts.folder / fp32.file, manifest.model.info.preprocess, inputs.images.ds,
                            DEFAULT_CONVENTION_SAMPLES, opts.seed)


def _input_notes(inputs: Inputs, asked: int, num_classes: int) -> list[str]:
    """Say when the data gave less than was asked: fewer images, or labels that cannot score this model."""
    notes = []
    if len(inputs) < asked:
        notes.append(f"{inputs.data} has {inputs.n_real} image(s): {len(inputs)} inputs ({inputs.n_real} + "
                     f"{len(inputs) - inputs.n_real} extreme), not the {asked} --samples asked for")
    if inputs.labels is None and inputs.class_names and len(inputs.class_names) != num_classes:
        notes.append(f"accuracy n/a: {inputs.data} has {len(inputs.class_names)} classes, the model "
                     f"{num_classes}; parity and agreement are measured all the same")
    return notes


def _data_notes(run: _VerifyRun, rows: list[VerifyRow]) -> list[str]:
    """Labels matched by position to other class names; int8 measured on its own calibration images."""
    notes = []
    if run.inputs.labels is None:
        return notes
    if order := label_order_note(run.inputs.data, run.inputs.class_names, run.manifest.model.info.class_names):
        notes.append(order)
    ref_top1 = next((r.metrics.ref_top1 for r in rows if r.metrics is not None), None)
    what = f"{run.inputs.n_real} {run.inputs.data} images"
    if chance := near_chance_note(ref_top1, run.manifest.model.info.num_classes, what):
        notes.append(chance)
    if any(r.precision == "int8" and r.metrics is not None for r in rows):
        cal = run.manifest.calibration
        if overlap := calibration_overlap_note(cal.dataset if cal else None, run.opts.data):
            notes.append(overlap)
    return notes


def _unverified_engines(opts: VerifyOptions, manifest: Manifest) -> list[str]:
    engines = [e.file for e in manifest.entries() if isinstance(e, EngineEntry)]
    engine_rows = {n for n, s in RUNTIMES.items() if s.runs == "engine"}
    if engines and opts.device != "cuda" and not (opts.runtimes and engine_rows & set(opts.runtimes)):
        return [f"{len(engines)} TensorRT engine(s) not run: engines run on --device cuda only ({', '.join(engines)})"]
    return []
