"""The artifact folder: manifest.json as typed entries, sha256 provenance, an export lock, the folder audit.

The manifest is the contract between commands. Each part owns its JSON (Polygraphy's result structs do the
same): `GraphEntry` for an ONNX graph, `EngineEntry` for a TensorRT engine, `Calibration` and `GraphCheck`
for int8, `ModelSection` for the model. Version 2 is written; folders written as version 1 are read too.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from pipeline.precisions import Precision
from pipeline.zoo import ModelInfo, ModelSpec
from resnetx.errors import BadInput, CheckFailed
from resnetx.files import TMP_PREFIX, atomic_write_text, file_sha256
from resnetx.flavors import EngineTarget, Flavor

__all__ = [
    "MANIFEST",
    "MANIFEST_VERSION",
    "GraphCheck",
    "LayerCounts",
    "Trial",
    "SearchRecord",
    "Calibration",
    "Entry",
    "GraphEntry",
    "EngineEntry",
    "ModelSection",
    "Manifest",
    "AuditRow",
    "FolderAudit",
    "export_lock",
    "read_manifest",
    "write_manifest",
    "tool_versions",
    "checked_file",
    "intact",
    "audit_folder",
    "system_info",
]

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
READS = (1, 2)


def _plain(d: dict[str, Any], cls: type) -> dict[str, Any]:
    """The keys of `d` that are fields of the dataclass `cls` (newer writers may add others)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class GraphCheck:
    """The int8 graph against fp32, right after quantization, on images of the calibration set."""

    top1_agree: float
    rel_l2: float
    max_abs: float
    samples: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphCheck:
        return cls(**_plain(d, cls))


@dataclass(frozen=True)
class LayerCounts:
    """What an engine's network computes in, counted before its build."""

    compute_layers: int
    fp16_compute_layers: int
    int8_compute_layers: int
    quantize_layers: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerCounts:
        return cls(**_plain(d, cls))

    def note(self, precision: str) -> str:
        """'22/22 conv/matmul in fp16'; an int8 network also says how many of the others are fp16."""
        n = {"fp16": self.fp16_compute_layers, "int8": self.int8_compute_layers}.get(
            precision, self.compute_layers - self.fp16_compute_layers)
        extra = f", {self.fp16_compute_layers} in fp16" if precision == "int8" and self.fp16_compute_layers else ""
        return f"{n}/{self.compute_layers} conv/matmul in {precision}{extra}"


@dataclass(frozen=True)
class Calibration:
    """Where an int8 graph's ranges came from; `key` names the ranges cached in `cache_file`."""

    dataset: str
    data_dir: str | None
    split: str
    samples: int
    method: str
    recipe: str
    seed: int
    preprocess: dict[str, Any]
    key: str
    cache_file: str
    images: int | None = None  # how many the ranges came from (a small dataset gives fewer than `samples`)
    equalized: bool = False  # the ranges are of the cross-layer equalized fp32 graph (see exporters/equalize.py)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(**_plain(d, cls))


@dataclass(frozen=True)
class Trial:
    """One int8 graph the accuracy search measured."""

    method: str
    reverted: tuple[str, ...]  # layers kept out of int8 beside --keep-fp32
    fallback: str  # what the reverted layers compute in: fp32 or fp16
    top1: float
    drop: float  # points of top-1 below the fp32 graph on the same images
    seconds: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trial:
        return cls(**{**_plain(d, cls), "reverted": tuple(d.get("reverted", ()))})


@dataclass(frozen=True)
class SearchRecord:
    """The int8 accuracy search (export --max-accuracy-drop): every trial, what judged, what was kept."""

    budget: float  # points of top-1 the int8 graph may lose against the fp32 graph
    data: str  # the held-out images that judged, in words
    images: int
    fp32_top1: float
    trials: tuple[Trial, ...]
    chosen: int  # the trial whose graph is the int8 graph
    met: bool
    seconds: float
    ranking: tuple[str, ...] = ()  # quantized layers, the one whose reverting recovers most first

    @property
    def result(self) -> Trial:
        return self.trials[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trials": [asdict(t) for t in self.trials], "ranking": list(self.ranking)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchRecord:
        return cls(**{**_plain(d, cls), "trials": tuple(Trial.from_dict(t) for t in d["trials"]),
                      "ranking": tuple(d.get("ranking", ()))})


@dataclass(frozen=True)
class Entry:
    """One file of the folder, what it was made from, and the key of everything that shaped it."""

    kind: ClassVar[str] = "file"
    precision: Precision
    file: str
    sha256: str
    size_bytes: int
    seconds: float = 0.0  # how long the step that made it took (run_steps times it)
    key: str = ""
    source_sha256: str | None = None  # the file it was made from (None: the PyTorch model)

    @property
    def name(self) -> str:
        return self.precision.value

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["precision"] = self.precision.value
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


@dataclass(frozen=True)
class GraphEntry(Entry):
    kind: ClassVar[str] = "graph"
    opset: int = 18
    static_batch: int | None = None  # the batch baked into the graph; None: dynamic
    exporter: str | None = None  # fp32: the exporter that made it
    keep_fp32: tuple[str, ...] = ()  # layers kept in float because the user asked (--keep-fp32)
    auto_fp32: tuple[str, ...] = ()  # kept in float by resnetx: fp16 weights beyond range, int8's float ends
    quantize_ends: bool = False  # int8: --int8-quantize-ends
    calibration: Calibration | None = None  # int8
    check: GraphCheck | None = None  # int8
    fallback: str = "fp32"  # int8: what the layers kept out of int8 compute in (--fallback)
    search: SearchRecord | None = None  # int8 made by --max-accuracy-drop
    details: dict[str, Any] = field(default_factory=dict)  # what the converter reported

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.search is not None:
            d["search"] = self.search.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphEntry:
        d = _plain(d, cls)
        return cls(**{**d, "precision": Precision(d["precision"]), "keep_fp32": tuple(d.get("keep_fp32", ())),
                      "auto_fp32": tuple(d.get("auto_fp32", ())),
                      "calibration": Calibration.from_dict(d["calibration"]) if d.get("calibration") else None,
                      "check": GraphCheck.from_dict(d["check"]) if d.get("check") else None,
                      "search": SearchRecord.from_dict(d["search"]) if d.get("search") else None})


@dataclass(frozen=True)
class EngineEntry(Entry):
    kind: ClassVar[str] = "engine"
    flavor: Flavor = Flavor.rtx
    trt_version: str = ""
    profile: tuple[int, int, int] = (1, 1, 1)  # MIN, OPT, MAX batch
    source_file: str = ""
    compute_capabilities: tuple[str, ...] = ()  # rtx: its SM targets
    gpu: str | None = None  # enterprise TensorRT: the GPU it was built on
    compute_capability: str | None = None
    strongly_typed: bool = True
    opt_level: int = 3
    tf32: bool = False
    network: LayerCounts | None = None

    @property
    def name(self) -> str:
        return f"{self.precision.value}.{self.flavor.value}"

    @property
    def target(self) -> EngineTarget:
        return EngineTarget(self.flavor, self.trt_version, self.precision.value, self.profile,
                            self.compute_capabilities, self.gpu, self.compute_capability)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "flavor": self.flavor.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineEntry:
        d = _plain(d, cls)
        return cls(**{**d, "precision": Precision(d["precision"]), "flavor": Flavor(d["flavor"]),
                      "profile": tuple(d["profile"]), "compute_capabilities": tuple(d.get("compute_capabilities", ())),
                      "network": LayerCounts.from_dict(d["network"]) if d.get("network") else None})


@dataclass(frozen=True)
class ModelSection:
    """The model the artifacts came from: what it is, how the user named it, the hash of its weights."""

    info: ModelInfo
    spec: ModelSpec
    state_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {**self.info.to_dict(), "spec": self.spec.to_dict(), "state_sha256": self.state_sha256}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSection:
        _require(d, ("arch", "family", "num_classes", "in_chans", "image_size", "preprocess", "state_sha256"), "model")
        try:
            info = ModelInfo.from_dict(d)  # the preprocessing spec and field types
        except KeyError as e:
            raise ValueError(f"missing model.preprocess.{e.args[0]}") from e
        spec = ModelSpec.from_dict(d.get("spec") or {"arch": d["arch"]})
        return cls(info, spec, d["state_sha256"])


def _require(d: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """Every field later steps read is there: a hand-edited manifest fails here in one line, not deep in a step."""
    if missing := [f"{where}.{k}" for k in keys if k not in d]:
        raise ValueError(f"missing {', '.join(missing)}")


@dataclass
class Manifest:
    """manifest.json: what was built, from what, with which tools."""

    model: ModelSection
    graphs: dict[Precision, GraphEntry] = field(default_factory=dict)
    engines: dict[tuple[Precision, Flavor], EngineEntry] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=lambda: tool_versions())
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    version: int = MANIFEST_VERSION

    @classmethod
    def of(cls, model: ModelSection, entries: list[Entry], versions: dict[str, str]) -> Manifest:
        """A manifest holding `entries`, graphs and engines each in precision order."""
        order = list(Precision)
        graphs = sorted((e for e in entries if isinstance(e, GraphEntry)), key=lambda e: order.index(e.precision))
        engines = sorted((e for e in entries if isinstance(e, EngineEntry)),
                         key=lambda e: (order.index(e.precision), e.flavor.value))
        return cls(model, {e.precision: e for e in graphs}, {(e.precision, e.flavor): e for e in engines}, versions)

    def entries(self) -> list[Entry]:
        """Every artifact: graphs, then engines, each by precision."""
        return [*self.graphs.values(), *self.engines.values()]

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.entries() if e.name == name), None)

    @property
    def calibration(self) -> Calibration | None:
        int8 = self.graphs.get(Precision.int8)
        return int8.calibration if int8 else None

    def holdings(self) -> str:
        """'fp32 (ort), int8 (trt)': the precisions and runners of what the folder holds, for messages."""
        return ", ".join(sorted({f"{e.precision.value} ({'ort' if e.kind == 'graph' else 'trt'})"
                                 for e in self.entries()}))

    def same_content(self, other: Manifest) -> bool:
        """Equal but for the time it was written."""
        return replace(self, created="").to_dict() == replace(other, created="").to_dict()

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "created": self.created, "model": self.model.to_dict(),
                "graphs": {e.name: e.to_dict() for e in self.graphs.values()},
                "engines": {e.name: e.to_dict() for e in self.engines.values()}, "versions": self.versions}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if d.get("version") not in READS:
            raise BadInput(f"manifest version {d.get('version')}; this resnetx reads versions "
                           f"{', '.join(map(str, READS))}: upgrade resnetx, or re-run resnetx export")
        if d["version"] == 1:
            d = _from_v1(d)
        for group in ("graphs", "engines"):
            for name, e in d.get(group, {}).items():
                _require(e, ("file", "sha256", "precision", "size_bytes"), f"{group}.{name}")
        entries: list[Entry] = [GraphEntry.from_dict(e) for e in d.get("graphs", {}).values()]
        entries += [EngineEntry.from_dict(e) for e in d.get("engines", {}).values()]
        m = cls.of(ModelSection.from_dict(d["model"]), entries, d.get("versions", {}))
        m.created = d.get("created", "")
        return m


def _from_v1(d: dict[str, Any]) -> dict[str, Any]:
    """A version-1 manifest (resnetx up to 6530291: one 'artifacts' dict of untyped entries) as version 2."""
    graphs, engines = {}, {}
    for name, e in d.get("artifacts", {}).items():
        _require(e, ("file", "sha256", "precision", "kind"), f"artifacts.{name}")
        if e["kind"] == "engine":
            engines[name] = {**e, "seconds": e.get("build_seconds", 0.0)}
            continue
        auto = e.get("overflow_nodes") if e["precision"] == "fp16" else e.get("float_ends")
        kept = e.get("keep_fp32_nodes") if e["precision"] == "fp16" else e.get("excluded_nodes")
        known = {f.name for f in fields(GraphEntry)} | {"kind", "keep_fp32_nodes", "overflow_nodes", "excluded_nodes"}
        graphs[name] = {**e, "keep_fp32": sorted(set(kept or ()) - set(auto or ())), "auto_fp32": list(auto or ()),
                        "quantize_ends": e["precision"] == "int8" and e.get("float_ends") == [],
                        "calibration": d.get("calibration") if e["precision"] == "int8" else None,
                        "details": {k: v for k, v in e.items() if k not in known}}
    return {**d, "version": 2, "graphs": graphs, "engines": engines}


@contextlib.contextmanager
def export_lock(folder: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the folder so two exports never interleave their writes."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(f, flags)
        except BlockingIOError as e:
            raise BadInput(f"another resnetx export is writing {folder}; wait for it to finish") from e
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def tool_versions() -> dict[str, str]:
    """Versions of everything that shapes an artifact's bytes; stored in the manifest."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("resnetx", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu",
                 "numpy", "tensorrt", "tensorrt-rtx-cu13", "tensorrt-cu13"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Written last and atomically: its presence means every file it names is complete."""
    path = folder / MANIFEST
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(folder: Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BadInput(f"artifact folder {folder} does not exist; create it with 'resnetx export --out {folder}'")
    if not path.is_file():
        stray = [p.name for p in folder.glob("*.onnx")] + [p.name for p in folder.glob(TMP_PREFIX + "*")]
        hint = (f" but holds {', '.join(sorted(stray)[:4])}: an export into it failed or was interrupted, or it is "
                "not an artifact folder") if stray else ""
        raise BadInput(f"{folder} has no {MANIFEST}{hint}; run 'resnetx export --out {folder}'")
    try:
        return Manifest.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise BadInput(f"{path} is not a valid resnetx manifest ({e}); re-run resnetx export") from e


def intact(folder: Path, entry: Entry) -> bool:
    """The entry's file is there with the sha256 the manifest recorded."""
    f = Path(folder) / entry.file
    return f.is_file() and file_sha256(f) == entry.sha256


def checked_file(folder: Path, entry: Entry) -> Path:
    """The artifact's file, after checking it still has the sha256 the manifest recorded."""
    path = Path(folder) / entry.file
    if not path.is_file():
        raise BadInput(f"{path} named in the manifest is missing; restore it, or re-run the resnetx export that made "
                       f"{folder} (--out {folder}, with its model options)")
    if not intact(folder, entry):
        raise CheckFailed(
            f"{path.name} changed after export (sha256 differs from manifest.json); "
            f"its provenance is unknown: re-run the resnetx export that made {folder} (--out {folder}, with its "
            "model options) with --force"
        )
    return path


@dataclass(frozen=True)
class AuditRow:
    entry: Entry
    status: str  # "ok" | "changed" | "missing"
    source: str  # the file it was made from, or "PyTorch model"


@dataclass(frozen=True)
class FolderAudit:
    """What a folder holds and whether it is still what export made (`resnetx info DIR`)."""

    folder: Path
    manifest: Manifest
    rows: list[AuditRow]
    version_drift: dict[str, tuple[str, str | None]]  # tool -> (at export, now)
    references: list[str]  # stored reference logits
    verify: dict[str, Any] | None  # the last verify's verdict (and each artifact's), whether it is about this export

    @property
    def intact(self) -> bool:
        return all(r.status == "ok" for r in self.rows)

    @property
    def static_batch(self) -> int | None:
        fp32 = self.manifest.graphs.get(Precision.fp32)
        return fp32.static_batch if fp32 else None


def audit_folder(folder: Path) -> FolderAudit:
    """Every artifact's file checked against its recorded sha256, the tool versions then and now, the stored
    reference logits, and the last verify verdict with whether it is about this export."""
    folder = Path(folder)
    m = read_manifest(folder)
    by_sha = {e.sha256: e.file for e in m.entries()}
    rows = []
    for e in m.entries():
        status = "missing" if not (folder / e.file).is_file() else "ok" if intact(folder, e) else "changed"
        source = by_sha.get(e.source_sha256 or "") or getattr(e, "source_file", "") or "PyTorch model"
        rows.append(AuditRow(e, status, source))
    now = tool_versions()
    drift = {k: (v, now.get(k)) for k, v in m.versions.items() if k != "resnetx" and now.get(k) != v}
    return FolderAudit(folder, m, rows, drift, sorted(p.name for p in (folder / "reports").glob("reference.*.npz")),
                       _last_verify(folder, m))


def _last_verify(folder: Path, m: Manifest) -> dict[str, Any] | None:
    vpath = folder / "reports" / "verify.json"
    if not vpath.is_file():
        return None
    try:
        v = json.loads(vpath.read_text())
        rows = [r for r in v.get("rows") or [] if isinstance(r, dict) and r.get("artifact")]
        artifacts = {r["artifact"]: "not run" if r.get("skipped") else "pass" if r.get("passed") else "fail"
                     for r in rows}  # artifact name -> 'pass' | 'fail' | 'not run'
        return {"passed": v.get("passed"), "data": v.get("data"), "samples": v.get("samples"),
                "current": v.get("manifest_created") == m.created, "artifacts": artifacts}
    except (json.JSONDecodeError, AttributeError, TypeError):
        return {"passed": None, "error": "reports/verify.json is unreadable"}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_info() -> dict[str, Any]:
    """Where a run happened: CPU, cores, platform, GPU and driver, library versions (bench and verify reports)."""
    info: dict[str, Any] = {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                            "versions": tool_versions(), "gpu": None}
    import torch

    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                       "compute_capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
                       "driver": _driver_version()}
    return info


def _driver_version() -> str | None:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None

