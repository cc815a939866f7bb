"""What verify and bench find, as data (Polygraphy's comparator returns result objects the same way): rows of metrics
and timings, and the reports that hold them; the command line renders them, pipeline/check/records.py writes them."""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.folder.manifest import Manifest
from pipeline.folder.verdicts import Verdict
from pipeline.machine import CPU_KIND
from pipeline.precisions import Tolerance

if TYPE_CHECKING:
    from pipeline.check.localize import Localization

__all__ = ["Metrics", "VerifyRow", "VerifyReport", "BenchRow", "BenchReport"]


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
class VerifyRow:
    artifact: str  # manifest name, e.g. "fp16" or "int8.rtx", or "torch-fp16"
    runtime: str  # as the opened runtime names itself: "ort-cpu-fp16"
    precision: str
    device: str
    passed: bool
    metrics: Metrics | None = None
    tolerance: Tolerance | None = None
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0
    localization: Localization | None = None
    localization_error: str | None = None  # why localisation could not run
    backend: str = ""  # the registry's name of the runtime that ran it: "ort"
    version: str | None = None  # ... and its distribution's version: "onnxruntime 1.32.0"


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
    unwritten: str | None = None  # why its report files could not be written (a read-only folder)
    system: dict[str, Any] = field(default_factory=dict)  # where it ran: CPU, GPU, driver, library versions
    kind: str = CPU_KIND  # the machine kind it ran on: its report is reports/<kind>/verify.json
    labelled: bool = False  # accuracy was measured (labels of the model's classes), not only agreement
    drawn: str = ""  # which images were compared, in words
    output: str = "logits"  # what the model outputs, and so what the metrics compare: logits or probabilities
    logits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # each row that ran: its logits

    @property
    def nothing_ran(self) -> bool:
        """Every candidate was skipped (missing backend or device): no verdict either way."""
        return bool(self.rows) and all(r.skipped for r in self.rows)

    @property
    def report_path(self) -> Path | None:
        """reports/<kind>/verify.json, which holds this verdict; None when nothing ran (the last real one is kept)."""
        return None if self.nothing_ran else self.folder / "reports" / self.kind / "verify.json"

    @property
    def passed(self) -> bool:
        ran = [r for r in self.rows if r.skipped is None]
        return bool(ran) and all(r.passed for r in ran)

    def verdicts(self, manifest: Manifest) -> list[Verdict]:
        """The records this verify adds to the folder's verdicts: each artifact it measured (skipped rows judged
        nothing; torch-* rows judge the model itself)."""
        date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        out = []
        for r in self.rows:
            entry = manifest.entry(r.artifact)
            if r.skipped is not None or r.metrics is None:
                continue
            sha = entry.sha256 if entry is not None else manifest.model.state_sha256
            out.append(Verdict(r.artifact, sha, r.passed, r.runtime, r.device, self.kind, self.data, self.samples,
                               self.labelled, date, tuple(r.failures), r.metrics.top1_agreement,
                               r.metrics.accuracy_drop))
        return out

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for r in self.rows:
            d = asdict(r)
            if r.metrics is not None:
                d["metrics"]["accuracy_drop"] = r.metrics.accuracy_drop
            rows.append(d)
        return {"folder": str(self.folder), "reference": self.reference, "reference_stored": self.reference_stored,
                "data": self.data, "samples": self.samples, "drawn": self.drawn, "labelled": self.labelled,
                "output": self.output,
                "kind": self.kind, "passed": self.passed, "seconds": round(self.seconds, 2),
                "manifest_created": self.manifest_created, "system": self.system, "notes": self.notes, "rows": rows}


@dataclass
class BenchRow:
    runtime: str
    backend: str
    mode: str
    precision: str
    device: str
    batch: int
    latency_ms: dict[str, float] | None = None
    throughput_ips: float | None = None
    peak_mem_mb: float | None = None
    accuracy_top1: float | None = None
    size_mb: float | None = None
    load_s: float | None = None
    compile_s: float | None = None  # torch.compile or a CUDA graph: first call at this batch size, not in the latency
    build_s: float | None = None  # TensorRT engine: build time recorded at export
    transfers_included: bool = True
    iters: int = 0
    tflops: float | None = None  # achieved: throughput x the model's FLOPs per image
    peak_pct: float | None = None  # tflops as % of --peak-tflops
    stream_ips: float | None = None  # cuda: images/s with batches enqueued back to back (one sync per window)
    error: str | None = None
    artifact: str = ""  # the manifest's name of what it ran ("int8", "fp16.rtx-sm89"; "torch-fp32": the model)

    @property
    def one_time_s(self) -> float | None:
        """What this row paid once and never inside its latency: compile/capture, or the engine build."""
        return self.compile_s if self.compile_s is not None else self.build_s


@dataclass
class BenchReport:
    folder: Path
    rows: list[BenchRow]
    system: dict[str, Any]
    options: dict[str, Any]
    accuracy_data: str | None = None
    notes: list[str] = field(default_factory=list)
    unwritten: str | None = None  # why its report files could not be written (a read-only folder)
    gflops_per_image: float | None = None
    recommendations: list[str] = field(default_factory=list)  # per device: what to ship (pipeline/check/recommend.py)

    @property
    def nothing_ran(self) -> bool:
        """No row was timed (every runtime missing or failing): no numbers to report, and the last ones stay."""
        return bool(self.rows) and all(r.latency_ms is None for r in self.rows)

    @property
    def reports(self) -> Path:
        """reports/<kind>/: where this machine kind's bench files go (each kind of a fleet keeps its own)."""
        return self.folder / "reports" / str(self.system.get("kind") or CPU_KIND)

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "system": self.system, "options": self.options,
                "accuracy_data": self.accuracy_data, "gflops_per_image": self.gflops_per_image, "notes": self.notes,
                "recommendations": self.recommendations,
                "rows": [asdict(r) for r in self.rows]}


