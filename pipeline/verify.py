"""Parity of every artifact against the fp32 PyTorch reference; per-precision verdicts; localisation."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters.onnx import INPUT_NAME, graph_batch
from pipeline.artifacts import Manifest, atomic_write_text, check_sha, read_manifest, system_info
from pipeline.data import calibration_overlap_note, label_order_note
from pipeline.export import export_command, reference_if_here
from pipeline.precisions import PRECISIONS, Precision, Tolerance
from pipeline.reference import DEFAULT_SAMPLES, Inputs, reference_file, stored_reference, verify_inputs
from runtimes.base import Runtime, batch_chunks, open_runtime
from runtimes.errors import BackendUnavailable, BadInput, CheckFailed, IncompatibleArtifact, ResnetxError

__all__ = [
    "VerifyOptions",
    "Metrics",
    "VerifyRow",
    "VerifyReport",
    "Candidate",
    "compare",
    "verify",
    "judge",
    "localize",
    "LayerError",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyOptions:
    folder: Path
    device: str = "cpu"
    samples: int = DEFAULT_SAMPLES
    data: str = "sample"
    data_dir: Path | None = None
    batch_size: int | None = None  # None: 16 at ImageNet sizes, 64 for small images
    precisions: tuple[str, ...] | None = None  # None: all in the manifest
    runtimes: tuple[str, ...] | None = None  # None: ort (+ trt on cuda when engines exist)
    rel_l2: float | None = None  # overrides of the per-precision defaults
    top1_agreement: float | None = None
    accuracy_drop: float | None = None
    localize: bool = False
    seed: int = 0


@dataclass
class Metrics:
    max_abs: float
    mean_abs: float
    rel_l2: float
    min_cosine: float
    top1_agreement: float
    top5_overlap: float
    nonfinite: int
    samples: int
    ref_top1: float | None = None  # accuracy (%) of the reference on the labelled inputs
    top1: float | None = None
    ref_top5: float | None = None
    top5: float | None = None

    @property
    def accuracy_drop(self) -> float | None:
        return None if self.top1 is None or self.ref_top1 is None else self.ref_top1 - self.top1


@dataclass
class LayerError:
    layer: str
    op: str
    rel_l2: float


@dataclass
class VerifyRow:
    artifact: str  # manifest key, e.g. "fp16" or "int8.rtx", or "torch-fp16"
    runtime: str
    precision: str
    device: str
    passed: bool
    metrics: Metrics | None = None
    tolerance: Tolerance | None = None
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0
    localization: dict[str, Any] | None = None


@dataclass
class VerifyReport:
    folder: Path
    rows: list[VerifyRow]
    data: str
    samples: int
    reference: str = "torch-cpu-fp32"
    reference_stored: bool = False  # logits reused from reports/reference.*.npz (written by export or a past verify)
    manifest_created: str = ""  # which export this verdict is about
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    system: dict[str, Any] = field(default_factory=dict)  # where it ran: CPU, GPU, driver, library versions

    @property
    def nothing_ran(self) -> bool:
        """Every candidate was skipped (missing backend or device): no verdict either way."""
        return bool(self.rows) and all(r.skipped for r in self.rows)

    @property
    def report_path(self) -> Path | None:
        """reports/verify.json, which holds this verdict; None when nothing ran (the last real one is kept)."""
        return None if self.nothing_ran else self.folder / "reports" / "verify.json"

    @property
    def passed(self) -> bool:
        ran = [r for r in self.rows if r.skipped is None]
        return bool(ran) and all(r.passed for r in ran)

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            d = asdict(r)
            if r.metrics is not None:
                d["metrics"]["accuracy_drop"] = r.metrics.accuracy_drop
            rows.append(d)
        return {"folder": str(self.folder), "reference": self.reference, "reference_stored": self.reference_stored,
                "data": self.data, "samples": self.samples, "passed": self.passed, "seconds": round(self.seconds, 2),
                "manifest_created": self.manifest_created, "system": self.system, "notes": self.notes, "rows": rows}


# --------------------------------------------------------------------------- metrics
def compare(ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None = None, task_rows: int | None = None) -> Metrics:
    """Element-wise and task metrics of `got` against `ref` (both N x classes logits).

    Element-wise metrics and the NaN/Inf count use every row; top-1/top-5 agreement use the
    first `task_rows` (the real images: on noise inputs near-tied logits make argmax flips
    meaningless); accuracy uses the labelled rows at the start.
    """
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(got64)
    nonfinite = int((~finite).sum())
    g = np.where(finite, got64, 0.0)
    diff = g - ref64
    cos = (ref64 * g).sum(1) / np.maximum(np.linalg.norm(ref64, axis=1) * np.linalg.norm(g, axis=1), 1e-30)
    k = min(5, ref.shape[1])
    top_ref = np.argsort(-ref64, axis=1)[:, :k]
    top_got = np.argsort(-g, axis=1)[:, :k]
    t = len(ref) if task_rows is None else max(1, min(task_rows, len(ref)))
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref[:t], top_got[:t], strict=True)])
    m = Metrics(
        max_abs=float(np.abs(diff).max()) if nonfinite == 0 else float("inf"),
        mean_abs=float(np.abs(diff).mean()),
        rel_l2=float(np.linalg.norm(diff) / max(np.linalg.norm(ref64), 1e-30)) if nonfinite == 0 else float("inf"),
        min_cosine=float(cos.min()),
        top1_agreement=float((top_ref[:t, 0] == top_got[:t, 0]).mean()),
        top5_overlap=float(overlap),
        nonfinite=nonfinite,
        samples=int(len(ref)),
    )
    if labels is not None and len(labels):
        n = len(labels)  # labelled inputs come first; the extreme inputs after them have none
        m.ref_top1 = 100.0 * float((top_ref[:n, 0] == labels).mean())
        m.top1 = 100.0 * float((top_got[:n, 0] == labels).mean())
        m.ref_top5 = 100.0 * float((top_ref[:n] == labels[:, None]).any(1).mean())
        m.top5 = 100.0 * float((top_got[:n] == labels[:, None]).any(1).mean())
    return m


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


# --------------------------------------------------------------------------- candidates
@dataclass
class Candidate:
    key: str
    backend: str
    precision: str
    device: str
    entry: dict[str, Any] | None  # manifest entry; None for the torch runtime


def _candidates(opts: VerifyOptions, manifest: Manifest) -> list[Candidate]:
    precisions = opts.precisions or tuple(p.value for p in Precision)
    unknown = [p for p in precisions if p not in Precision.__members__]
    if unknown:
        raise BadInput(f"unknown precision {', '.join(unknown)}; choose from fp32, fp16, int8")
    runtimes = opts.runtimes or (("ort", "trt") if opts.device == "cuda" else ("ort",))
    bad = [r for r in runtimes if r not in ("ort", "trt", "torch")]
    if bad:
        raise BadInput(f"unknown runtime {', '.join(bad)}; choose from ort, trt, torch")
    out = []
    for key, entry in manifest.artifacts.items():
        if entry["precision"] not in precisions:
            continue
        if entry["kind"] == "onnx" and "ort" in runtimes:
            out.append(Candidate(key, "ort", entry["precision"], opts.device, entry))
        elif entry["kind"] == "engine" and "trt" in runtimes:
            out.append(Candidate(key, "trt", entry["precision"], "cuda", entry))
    if "torch" in runtimes:
        for p in ("fp32", "fp16"):
            if p in precisions:
                out.append(Candidate(f"torch-{p}", "torch", p, opts.device, None))
    if not out:
        raise BadInput(f"nothing to verify in {opts.folder} for precision(s) {', '.join(precisions)} and runtime(s) "
                       f"{', '.join(runtimes)}: it holds {manifest.holdings()}; export more with resnetx export "
                       f"--precision ... --out {opts.folder}, or use --runtime torch")
    return out


def _open(c: Candidate, folder: Path, model: torch.nn.Module | None, missing: str) -> Runtime:
    if c.backend == "torch":
        if model is None:
            raise BackendUnavailable(f"the torch runtime runs the PyTorch model: {missing}")
        return open_runtime("torch", model, device=c.device, precision=c.precision)
    path = check_sha(folder, c.entry or {})
    if c.backend == "trt":
        return open_runtime("trt", path, device="cuda", entry=c.entry)
    return open_runtime("ort", path, device=c.device, precision=c.precision)


def _tolerance(opts: VerifyOptions, c: Candidate) -> Tolerance:
    tol = PRECISIONS[Precision(c.precision)].tolerance
    if c.precision == "fp32" and c.device == "cuda":
        tol = tol.merged(rel_l2=1e-3, top1_agreement=0.99)  # GPU kernels reassociate sums (TF32 off)
    return tol.merged(rel_l2=opts.rel_l2, top1_agreement=opts.top1_agreement, accuracy_drop=opts.accuracy_drop)


def verify(
    opts: VerifyOptions,
    *,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> VerifyReport:
    """Compare each selected artifact with the fp32 PyTorch reference; write reports/verify.json.

    When every candidate was skipped (no GPU, no provider) nothing is written: a run that judged nothing
    must not replace the verdict of one that did.
    """
    start = time.perf_counter()
    folder = Path(opts.folder)
    manifest = read_manifest(folder)
    if opts.samples < 1:
        raise BadInput("--samples must be >= 1")
    torch.manual_seed(opts.seed)
    model, info, missing = reference_if_here(manifest)
    batch = opts.batch_size or (16 if info.image_size >= 96 else 64)
    inputs = verify_inputs(opts.data, opts.data_dir, opts.samples, info.preprocess, info.num_classes, seed=opts.seed)
    x, labels = inputs.x, inputs.labels
    notes = _input_notes(inputs, opts.samples, info.num_classes)
    t_ref = time.perf_counter()
    done_ref = 0

    def ref_tick(n: int) -> None:
        nonlocal done_ref
        done_ref += n
        if on_progress:
            on_progress("torch-cpu-fp32 reference", done_ref, len(x))

    ref, made_by = stored_reference(folder / reference_file(opts.data, opts.samples),
                                    manifest.model["state_sha256"], model, x, on_batch=ref_tick, missing=missing)
    stored = made_by is not None
    if model is None:
        notes.append(f"{missing}: the reference is the stored fp32 PyTorch logits (computed with torch {made_by})")
    log.debug("reference: %d inputs, %s in %.1f s", len(x), "stored" if stored else "computed",
              time.perf_counter() - t_ref)
    rows: list[VerifyRow] = []
    for c in _candidates(opts, manifest):
        t0 = time.perf_counter()
        tol = _tolerance(opts, c)
        try:
            with _open(c, folder, model, missing) as rt:
                done = 0

                def tick(n: int) -> None:
                    nonlocal done
                    done += n
                    if on_progress:
                        on_progress(rt.name, done, len(x))

                got = rt.infer_all(x, batch, tick)
                name = rt.name
        except (BackendUnavailable, IncompatibleArtifact) as e:  # not for this machine: the other rows still run
            rows.append(VerifyRow(c.key, f"{c.backend}-{c.device}-{c.precision}", c.precision, c.device, False,
                                  skipped=str(e)))
            continue
        except CheckFailed as e:  # sha mismatch: provenance broken
            rows.append(VerifyRow(c.key, f"{c.backend}-{c.device}-{c.precision}", c.precision, c.device, False,
                                  tolerance=tol, failures=[str(e)]))
            continue
        m = compare(ref, got, labels, task_rows=inputs.n_real)
        fails = judge(m, tol)
        row = VerifyRow(c.key, name, c.precision, c.device, not fails, m, tol, fails, seconds=time.perf_counter() - t0)
        if c.backend == "ort" and (opts.localize or fails):
            t_loc = time.perf_counter()
            try:
                row.localization = localize(folder, manifest, c.entry or {}, model, info, x[: min(8, len(x))], tol)
            except ResnetxError as e:
                row.localization = {"error": str(e)}
            row.localization["seconds"] = round(time.perf_counter() - t_loc, 2)
        rows.append(row)
    if labels is not None and (order := label_order_note(inputs.data, inputs.class_names, info.class_names)):
        notes.append(order)
    if labels is not None and any(r.precision == "int8" and r.metrics is not None for r in rows):
        if overlap := calibration_overlap_note(manifest.calibration, opts.data):
            notes.append(overlap)
    report = VerifyReport(folder, rows, inputs.data, len(x), reference_stored=stored,
                          manifest_created=manifest.created, seconds=time.perf_counter() - start,
                          notes=notes + _unverified_engines(opts, manifest), system=system_info())
    if report.report_path is not None:
        atomic_write_text(report.report_path, json.dumps(report.to_dict(), indent=2, default=_json) + "\n")
    return report


def _input_notes(inputs: Inputs, asked: int, num_classes: int) -> list[str]:
    """Say when the data gave less than was asked: fewer images, or labels that cannot score this model."""
    notes = []
    if len(inputs.x) < asked:
        notes.append(f"{inputs.data} has {inputs.n_real} image(s): {len(inputs.x)} inputs ({inputs.n_real} + "
                     f"{len(inputs.x) - inputs.n_real} extreme), not the {asked} --samples asked for")
    if inputs.labels is None and inputs.class_names and len(inputs.class_names) != num_classes:
        notes.append(f"accuracy n/a: {inputs.data} has {len(inputs.class_names)} classes, the model "
                     f"{num_classes}; parity and agreement are measured all the same")
    return notes


def _unverified_engines(opts: VerifyOptions, manifest: Manifest) -> list[str]:
    engines = [e["file"] for e in manifest.artifacts.values() if e["kind"] == "engine"]
    if engines and opts.device != "cuda" and not (opts.runtimes and "trt" in opts.runtimes):
        return [f"{len(engines)} TensorRT engine(s) not run: engines run on --device cuda only ({', '.join(engines)})"]
    return []


def _json(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not np.isfinite(o):
        return str(o)
    raise TypeError(type(o))


# --------------------------------------------------------------------------- localisation
def _layer_outputs(model_bytes: bytes, x: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """Run a graph with every node's first output exposed: {node name: (op, value as fp32)}."""
    import onnx
    import onnxruntime as ort

    m = onnx.load_from_string(model_bytes)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    have = {o.name for o in m.graph.output}
    wanted: dict[str, tuple[str, str]] = {}
    for node in m.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast", "Constant") or not node.output:
            continue
        out = node.output[0]
        if out not in types and out not in have:
            continue
        wanted[node.name] = (node.op_type, out)
        if out not in have:
            m.graph.output.append(types[out])
            have.add(out)
    opts = ort.SessionOptions()
    # basic rewrites only (constant folding, no fusions), and every layer's value is a graph output
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    fixed = graph_batch(m) or 0
    runs = [(sess.run(names, {INPUT_NAME: c}), n) for c, n in batch_chunks(x, fixed or len(x), pad_to=fixed)]
    values = {name: np.concatenate([out[k][:n] for out, n in runs]) for k, name in enumerate(names)}
    return {n: (op, values[out].astype(np.float32, copy=False)) for n, (op, out) in wanted.items() if out in values}


def localize(
    folder: Path, manifest: Manifest, entry: dict[str, Any], model: torch.nn.Module | None, info: Any,
    x: np.ndarray, tol: Tolerance,
) -> dict[str, Any]:
    """First layer whose output departs from the fp32 baseline, by the module it comes from.

    Baseline: the fp32 ONNX in the folder for fp16/int8 graphs; a fresh export of the PyTorch
    reference for the fp32 graph itself. Layers are matched by name (module paths).
    """
    from exporters.onnx import export_onnx

    candidate = (folder / entry["file"]).read_bytes()
    if entry["precision"] == "fp32":
        import tempfile

        if model is None:
            raise BadInput("localising an fp32 graph compares it with a fresh export of the PyTorch model, "
                           "whose weights are not on this machine")

        with tempfile.TemporaryDirectory() as tmp:
            a = export_onnx(model, info.input_shape, Path(tmp) / "ref.onnx", exporter="legacy",
                            opset=entry.get("opset", 18))
            baseline = a.path.read_bytes()
    else:
        fp32 = manifest.artifacts.get("fp32")
        if fp32 is None:
            raise BadInput("localisation needs model.fp32.onnx in the folder")
        baseline = check_sha(folder, fp32).read_bytes()
    base = _layer_outputs(baseline, x)
    cand = _layer_outputs(candidate, x)
    layers: list[LayerError] = []
    for name, (op, b) in base.items():
        if name in cand and cand[name][1].shape == b.shape:
            c = cand[name][1]
            err = float(np.linalg.norm((c - b).astype(np.float64)) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))
            layers.append(LayerError(name, op, err if np.isfinite(err) else float("inf")))
    if not layers:
        raise BadInput("no layer names are shared by the two graphs; re-export both with resnetx")
    bar = tol.rel_l2 if tol.rel_l2 is not None else 0.05
    first = next((layer for layer in layers if not layer.rel_l2 <= bar), None)
    weighted = [layer for layer in layers if layer.op in ("Conv", "Gemm", "MatMul")]
    jump, prev = None, 1e-12
    best = 0.0
    for layer in weighted:  # the weighted layer whose error grows most over the one before it
        ratio = layer.rel_l2 / max(prev, 1e-12) if np.isfinite(layer.rel_l2) else float("inf")
        if ratio > best and layer.rel_l2 > 1e-6:
            best, jump = ratio, layer
        prev = max(prev, layer.rel_l2) if np.isfinite(layer.rel_l2) else prev
    culprit = first if first is not None else jump
    module = culprit.layer.split("/")[0] if culprit else None
    return {
        "baseline": "pytorch reference (re-exported fp32)" if entry["precision"] == "fp32" else "model.fp32.onnx",
        "layer_tolerance": bar,
        "first_divergent_layer": first.layer if first else None,
        "module": module,
        "largest_jump_layer": jump.layer if jump else None,
        "suggestion": (export_command(manifest, folder, entry["precision"], (jump.layer,))
                       if jump and entry["precision"] != "fp32" else None),
        "by_depth": [asdict(layer) for layer in layers if layer.op in ("Conv", "Gemm", "MatMul", "Add")],
    }
