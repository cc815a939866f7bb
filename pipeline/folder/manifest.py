"""The artifact folder: manifest.json as typed entries, sha256 provenance, an export lock.

The manifest is the contract between commands. Each part owns its JSON (Polygraphy's result structs do the
same): `GraphEntry` for an ONNX graph, `EngineEntry` for a TensorRT engine (one per precision and target),
`Calibration` and `GraphCheck` for int8, `ModelSection` for the model. Version 3 is written; folders written as
version 1 or 2 are read too (version 2 named engines by precision and flavour only: their entries read as engines
of their target, their files keep their names).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import platform
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from pipeline.defaults import DEFAULT_OPT_LEVEL
from pipeline.model.zoo import ModelInfo
from pipeline.precisions import Precision
from pipeline.sources import SourceSpec, spec_from_dict
from resnetx.errors import BadInput, CheckFailed
from resnetx.files import TMP_PREFIX, atomic_write_text, file_sha256
from resnetx.flavors import EngineTarget, Flavor, HardwareCompat
from runtimes.registry import RUNTIMES

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
    "export_lock",
    "read_manifest",
    "known_fields",
    "write_manifest",
    "tool_versions",
    "checked_file",
    "intact",
]

MANIFEST = "manifest.json"
MANIFEST_VERSION = 4
READS = (1, 2, 3, 4)


def known_fields(d: dict[str, Any], cls: type) -> dict[str, Any]:
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
        return cls(**known_fields(d, cls))


@dataclass(frozen=True)
class LayerCounts:
    """What an engine's network computes in, counted before its build."""

    compute_layers: int
    fp16_compute_layers: int
    int8_compute_layers: int
    quantize_layers: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerCounts:
        return cls(**known_fields(d, cls))

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
    isa: tuple[str, ...] | None = None  # cpu recipe: the int8-relevant instruction sets of the CPU it was made on

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        fields = known_fields(d, cls)
        if fields.get("isa") is not None:
            fields["isa"] = tuple(fields["isa"])
        return cls(**fields)


@dataclass(frozen=True)
class Trial:
    """One int8 graph the accuracy search measured."""

    method: str
    reverted: tuple[str, ...]  # layers kept out of int8 beside --keep-fp32
    fallback: str  # what the reverted layers compute in: fp32 or fp16
    top1: float
    drop: float  # points of top-1 below the fp32 graph on the same images
    seconds: float
    margin: float = 0.0  # points the drop must stay below the budget by (see SearchRecord.margin_rule)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trial:
        return cls(**{**known_fields(d, cls), "reverted": tuple(d.get("reverted", ()))})


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
    margin_rule: str = ""  # how each trial's margin was set, in words
    estimates: int = 0  # graphs estimated on the images where int8 departs from fp32, besides the trials

    @property
    def result(self) -> Trial:
        return self.trials[self.chosen]

    @property
    def took(self) -> str:
        """Its seconds in words: tenths below ten seconds (a search that plain int8 ends takes well under one)."""
        return f"{self.seconds:.1f} s" if self.seconds < 10 else f"{self.seconds:.0f} s"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trials": [asdict(t) for t in self.trials], "ranking": list(self.ranking)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchRecord:
        return cls(**{**known_fields(d, cls), "trials": tuple(Trial.from_dict(t) for t in d["trials"]),
                      "ranking": tuple(d.get("ranking", ()))})


@dataclass(frozen=True)
class Entry:
    """One file of the folder, what it was made from, and the key of everything that shaped it."""

    form: ClassVar[str] = "file"  # what it is: "graph" (an ONNX file) or "engine" (a TensorRT plan)
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
    form: ClassVar[str] = "graph"
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
        d = known_fields(d, cls)
        return cls(**{**d, "precision": Precision(d["precision"]), "keep_fp32": tuple(d.get("keep_fp32", ())),
                      "auto_fp32": tuple(d.get("auto_fp32", ())),
                      "calibration": Calibration.from_dict(d["calibration"]) if d.get("calibration") else None,
                      "check": GraphCheck.from_dict(d["check"]) if d.get("check") else None,
                      "search": SearchRecord.from_dict(d["search"]) if d.get("search") else None})


@dataclass(frozen=True)
class EngineEntry(Entry):
    """A TensorRT engine, named by its precision and its target (`fp16.rtx-sm86-sm89`, `fp16.trt10.13.0-sm89-L4`):
    engines built for other GPU kinds sit side by side, each with the machine it was built on."""

    form: ClassVar[str] = "engine"
    flavor: Flavor = Flavor.rtx
    trt_version: str = ""
    profile: tuple[int, int, int] = (1, 1, 1)  # MIN, OPT, MAX batch
    source_file: str = ""
    compute_capabilities: tuple[str, ...] = ()  # rtx: its SM targets
    gpu: str | None = None  # the GPU it was built on (None: built ahead of time without one, TensorRT-RTX)
    compute_capability: str | None = None  # ... that GPU's compute capability
    gpu_kind: str | None = None  # ... and its kind ("L4"), which an enterprise engine of compat `none` is tied to
    driver: str | None = None  # ... and its driver
    hardware_compat: HardwareCompat = HardwareCompat.none  # enterprise: --hardware-compat
    strongly_typed: bool = True
    opt_level: int = DEFAULT_OPT_LEVEL
    tf32: bool = False
    network: LayerCounts | None = None

    @property
    def name(self) -> str:
        return f"{self.precision.value}.{self.target.tag}"

    @property
    def target(self) -> EngineTarget:
        return EngineTarget(self.flavor, self.trt_version, self.precision.value, self.profile,
                            self.compute_capabilities, self.gpu, self.compute_capability, self.hardware_compat,
                            self.gpu_kind)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "flavor": self.flavor.value, "hardware_compat": self.hardware_compat.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineEntry:
        d = known_fields(d, cls)
        return cls(**{**d, "precision": Precision(d["precision"]), "flavor": Flavor(d["flavor"]),
                      "profile": tuple(d["profile"]), "compute_capabilities": tuple(d.get("compute_capabilities", ())),
                      "hardware_compat": HardwareCompat(d.get("hardware_compat") or "none"),
                      "network": LayerCounts.from_dict(d["network"]) if d.get("network") else None})


@dataclass(frozen=True)
class ModelSection:
    """The model the artifacts came from: what it is, how the user named it, the hash of its weights."""

    info: ModelInfo
    spec: SourceSpec  # what it came from: a zoo model and its checkpoint, a user's ONNX or Keras file
    state_sha256: str  # the source's hash: the weights' state for a PyTorch model, the file's for --onnx/--keras

    def to_dict(self) -> dict[str, Any]:
        return {**self.info.to_dict(), "spec": self.spec.to_dict(), "state_sha256": self.state_sha256}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSection:
        _require(d, ("arch", "family", "num_classes", "in_chans", "image_size", "preprocess", "state_sha256"), "model")
        try:
            info = ModelInfo.from_dict(d)  # the preprocessing spec and field types
        except KeyError as e:
            raise ValueError(f"missing model.preprocess.{e.args[0]}") from e
        spec = spec_from_dict(d.get("spec") or {"arch": d["arch"]})
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
    engines: dict[str, EngineEntry] = field(default_factory=dict)  # by name: precision and target
    versions: dict[str, str] = field(default_factory=lambda: tool_versions())
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    version: int = MANIFEST_VERSION

    @classmethod
    def of(cls, model: ModelSection, entries: list[Entry], versions: dict[str, str]) -> Manifest:
        """A manifest holding `entries`, graphs and engines each in precision order."""
        order = list(Precision)
        graphs = sorted((e for e in entries if isinstance(e, GraphEntry)), key=lambda e: order.index(e.precision))
        engines = sorted((e for e in entries if isinstance(e, EngineEntry)),
                         key=lambda e: (order.index(e.precision), e.name))
        return cls(model, {e.precision: e for e in graphs}, {e.name: e for e in engines}, versions)

    def entries(self) -> list[Entry]:
        """Every artifact: graphs, then engines, each by precision."""
        return [*self.graphs.values(), *self.engines.values()]

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.entries() if e.name == name), None)

    @property
    def calibration(self) -> Calibration | None:
        int8 = self.graphs.get(Precision.int8)
        return int8.calibration if int8 else None

    def engines_of(self, precision: Precision) -> list[EngineEntry]:
        """The precision's engines, one per target."""
        return [e for e in self.engines.values() if e.precision is precision]

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
def export_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder so two exports never interleave their writes (the second waits)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def tool_versions() -> dict[str, str]:
    """Versions of everything that shapes an artifact's bytes; stored in the manifest."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    runtimes = [d for spec in RUNTIMES.values() for d in spec.dist]  # every runtime row's distributions
    for dist in dict.fromkeys(["resnetx", "torch", "onnx", "onnxscript", "onnxruntime", "numpy", "keras",
                               *runtimes]):
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
        m = Manifest.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise BadInput(f"{path} is not a valid resnetx manifest ({e}); re-run resnetx export") from e
    info = m.model.info
    if info.preprocess.mean_image is not None:  # the input contract's array lives beside the manifest
        m.model = replace(m.model, info=replace(info, preprocess=info.preprocess.loaded(folder)))
    return m


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
