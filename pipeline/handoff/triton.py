"""An artifact folder as an NVIDIA Triton Inference Server model repository (`resnetx triton DIR --out REPO`).

Every fact a config needs is in the manifest or the files it names: the graphs' input/output names, types and
dims, the engines' profiles, compute capabilities and TensorRT versions, the class names and the
preprocessing. One `onnxruntime_onnx` model per ONNX graph, one `tensorrt_plan` model per engine precision
(its `cc_model_filenames` maps each compute capability to the engine built for it). Files are copied
byte-identical and their sha256 checked against the manifest; the repository is written beside REPO and
renamed into place (pipeline/handoff/triton_repo.py), so a failure leaves no half-written repository.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.folder.audit import FolderAudit, audit_folder, holdings, serving_gate
from pipeline.folder.manifest import EngineEntry, Entry, GraphEntry, Manifest
from pipeline.folder.verdicts import Standing
from pipeline.precisions import Precision
from resnetx.contract import INPUT_NAME, OUTPUT_NAME
from resnetx.errors import BadInput
from resnetx.flavors import Flavor, HardwareCompat
from resnetx.gpus import AMPERE_PLUS_CCS, RTX_CCS

__all__ = ["TritonOptions", "Tensor", "TritonModel", "TritonResult", "plan_repository", "config_text",
           "shared_cc_notes", "DEFAULT_MAX_BATCH"]

DEFAULT_MAX_BATCH = 64  # ONNX graphs with a dynamic batch and no engine profile to follow
DEVICES = ("gpu", "cpu")
# ONNX TensorProto element types -> Triton data types
_ONNX_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 11: "TYPE_FP64", 2: "TYPE_UINT8", 3: "TYPE_INT8",
               6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL"}


@dataclass(frozen=True)
class TritonOptions:
    folder: Path
    out: Path
    name: str | None = None  # model name prefix; default: the architecture
    precisions: tuple[Precision, ...] | None = None  # None: every precision in the folder
    max_batch: int | None = None  # None: the engine profile's MAX (ONNX graphs: that, else DEFAULT_MAX_BATCH)
    instances: int = 1
    device: str = "gpu"  # where the ONNX models run; engines always run on a GPU
    queue_delay_us: int = 100  # dynamic batching: how long a request waits for others to batch with
    allow_unverified: bool = False
    force: bool = False  # replace an existing REPO

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise BadInput(f"--device {self.device!r}: use gpu or cpu")
        if self.instances < 1:
            raise BadInput(f"--instances {self.instances}: give 1 or more")
        if self.max_batch is not None and self.max_batch < 1:
            raise BadInput(f"--max-batch {self.max_batch}: give 1 or more")
        if self.queue_delay_us < 0:
            raise BadInput(f"--queue-delay-us {self.queue_delay_us}: give 0 or more")
        if self.name is not None and not self.name.replace("_", "").replace("-", "").isalnum():
            raise BadInput(f"--name {self.name!r}: use letters, digits, '_' and '-'")


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # TYPE_FP32 ...
    shape: tuple[int, ...]  # batch first; -1 where dynamic


@dataclass(frozen=True)
class TritonModel:
    """One model of the repository: what its config.pbtxt says and which artifacts its version folder holds."""

    name: str
    platform: str  # onnxruntime_onnx | tensorrt_plan
    precision: Precision
    max_batch_size: int  # 0: a fixed-batch model, whose dims include the batch
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    entries: tuple[Entry, ...]  # the files of version 1/, under their manifest names
    kind: str  # KIND_GPU | KIND_CPU
    instances: int
    queue_delay_us: int
    labels: bool
    cc_model_filenames: dict[str, str] = field(default_factory=dict)
    default_model_filename: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    standings: tuple[Standing | None, ...] = ()  # each entry's standing verdict, None where never verified
    bench_batches: tuple[int, ...] = ()

    @property
    def verified(self) -> str:
        """What resnetx verify said about its artifacts, in words."""
        return "; ".join(f"{e.name} {s.words}" if s else f"{e.name} not verified"
                         for e, s in zip(self.entries, self.standings, strict=True))

    @property
    def verdict(self) -> str:
        """The same in brief, for a table cell."""
        return "; ".join(s.brief if s else "not verified" for s in self.standings)

    def dims(self, t: Tensor) -> tuple[int, ...]:
        """What config.pbtxt declares: without the batch dimension when Triton batches."""
        return t.shape[1:] if self.max_batch_size > 0 else t.shape

    @property
    def fixed_batch(self) -> int | None:
        return self.inputs[0].shape[0] if self.max_batch_size == 0 else None


@dataclass
class TritonResult:
    repo: Path
    models: list[TritonModel]
    notes: list[str]


# --------------------------------------------------------------------------- tensors
def _graph_tensors(path: Path) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The graph's own inputs and outputs: names, types and dims as onnxruntime will see them."""
    import onnx

    try:
        g = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and others for a corrupt file
        raise BadInput(f"{path} is not a readable ONNX graph ({e}); re-run resnetx export with --force") from e
    inits = {i.name for i in g.initializer}

    def tensors(values: Any) -> tuple[Tensor, ...]:
        out = []
        for v in values:
            if v.name in inits:
                continue
            t = v.type.tensor_type
            if t.elem_type not in _ONNX_TYPES:
                raise BadInput(f"{path.name}: {v.name} has ONNX element type {t.elem_type}, which resnetx cannot "
                               "map to a Triton data type")
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            out.append(Tensor(v.name, _ONNX_TYPES[t.elem_type], shape))
        return tuple(out)

    return tensors(g.input), tensors(g.output)


def _contract_tensors(m: Manifest, batch: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """An engine's tensors when its source graph is not in the folder: resnetx's input/output contract (every
    graph it writes has float32 `input` N,C,S,S and `logits` N,classes; engines keep the graph's types)."""
    info = m.model.info
    return ((Tensor(INPUT_NAME, "TYPE_FP32", (batch, info.in_chans, info.image_size, info.image_size)),),
            (Tensor(OUTPUT_NAME, "TYPE_FP32", (batch, info.num_classes)),))


# --------------------------------------------------------------------------- planning
def _bench_batches(folder: Path) -> tuple[int, ...]:
    """The batch sizes any machine kind benchmarked (reports/<kind>/bench.json), for the README's perf lines."""
    found: set[int] = set()
    for path in (folder / "reports").glob("*/bench.json"):
        try:
            rows = json.loads(path.read_text()).get("rows", [])
            found |= {int(r["batch"]) for r in rows if isinstance(r, dict) and r.get("batch")}
        except (OSError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            continue
    return tuple(sorted(found))


def _batch_for(opts: TritonOptions, allowed: int, what: str) -> int:
    """--max-batch if the engine allows it, else the most it allows."""
    if opts.max_batch is None:
        return allowed
    if opts.max_batch > allowed:
        raise BadInput(f"--max-batch {opts.max_batch} is above what {what} allows ({allowed}); give --max-batch "
                       f"{allowed} or less, or re-export with --batch-range 1,OPT,{opts.max_batch}")
    return opts.max_batch


def _onnx_model(folder: Path, e: GraphEntry, opts: TritonOptions, prefix: str, engine_max: int | None,
                common: dict[str, Any]) -> TritonModel:
    inputs, outputs = _graph_tensors(folder / e.file)
    fixed = inputs[0].shape[0] > 0 if inputs and inputs[0].shape else False
    # a fixed-batch graph cannot be batched by Triton: max_batch_size 0, and the dims carry the batch
    max_batch = 0 if fixed else opts.max_batch or engine_max or DEFAULT_MAX_BATCH
    return TritonModel(f"{prefix}_{e.precision.value}_onnx", "onnxruntime_onnx", e.precision, max_batch, inputs,
                       outputs, (e,), "KIND_GPU" if opts.device == "gpu" else "KIND_CPU",
                       default_model_filename=e.file, **common)


def _cc_map(engines: list[EngineEntry]) -> dict[str, str]:
    """compute capability -> engine file, every compute capability the folder's engines serve. The most specific
    engine wins: an enterprise one built on that compute capability over an ampere+ one over TensorRT-RTX's, and an
    RTX engine for fewer compute capabilities over a portable one."""
    def specific(e: EngineEntry) -> tuple[int, int]:
        if e.flavor is Flavor.rtx:
            return (0, -len(e.compute_capabilities))
        return (1, 0 if e.hardware_compat is HardwareCompat.ampere_plus else 1)

    ccs: dict[str, str] = {}
    for e in sorted(engines, key=specific):
        if e.flavor is Flavor.rtx:
            ccs.update({RTX_CCS.get(sm, sm): e.file for sm in e.compute_capabilities})
        elif e.hardware_compat is HardwareCompat.ampere_plus:
            ccs.update({cc: e.file for cc in AMPERE_PLUS_CCS if cc not in ccs})
        elif e.compute_capability:
            ccs[e.compute_capability] = e.file
    return dict(sorted(ccs.items(), key=lambda kv: tuple(int(p) for p in kv[0].split("."))))


def shared_cc_notes(engines: list[EngineEntry]) -> list[str]:
    """Engines tied to their GPU kind (--hardware-compat none) of two kinds with one compute capability: Triton picks
    an engine by compute capability alone, so one of the kinds would load an engine built for the other."""
    by_cc: dict[str, set[str]] = {}
    for e in engines:
        if e.flavor is Flavor.tensorrt and e.hardware_compat is HardwareCompat.none and e.compute_capability:
            by_cc.setdefault(e.compute_capability, set()).add(e.gpu_kind or e.gpu or "unknown")
    return [f"{' and '.join(sorted(kinds))} share compute capability {cc}: Triton selects an engine by compute "
            f"capability only, so one kind would load the other's engine; build one engine for both with "
            f"--hardware-compat same-cc, or write one model repository per kind" for cc, kinds in by_cc.items()
            if len(kinds) > 1]


def _engine_model(folder: Path, m: Manifest, engines: list[EngineEntry], opts: TritonOptions, prefix: str,
                  common: dict[str, Any]) -> TritonModel:
    precision = engines[0].precision
    lo = max(e.profile[0] for e in engines)
    hi = min(e.profile[2] for e in engines)
    if lo > 1 and lo != hi:  # a fixed batch (N..N) is served as such: max_batch_size 0, dims with the batch
        raise BadInput(f"the {precision.value} engine profile starts at batch {lo}: Triton sends batches from 1; "
                       f"re-export with --batch-range 1,OPT,MAX")
    src = next((g for g in m.graphs.values() if g.sha256 == engines[0].source_sha256), None)
    fixed = src.static_batch if src else (hi if all(e.profile[0] == e.profile[2] for e in engines) else None)
    if fixed:
        inputs, outputs = _graph_tensors(folder / src.file) if src else _contract_tensors(m, fixed)
        max_batch = 0
    else:
        inputs, outputs = _graph_tensors(folder / src.file) if src else _contract_tensors(m, -1)
        max_batch = _batch_for(opts, hi, f"the {precision.value} engine profile (MIN,OPT,MAX "
                               f"{','.join(map(str, engines[0].profile))})")
    params = {f"{'tensorrt_rtx' if e.flavor is Flavor.rtx else 'tensorrt'}_version": e.trt_version for e in engines}
    params.update({f"sha256_{e.file}": e.sha256 for e in engines})
    return TritonModel(f"{prefix}_{precision.value}_trt", "tensorrt_plan", precision, max_batch, inputs, outputs,
                       tuple(engines), "KIND_GPU", cc_model_filenames=_cc_map(engines), parameters=params, **common)


def plan_repository(opts: TritonOptions) -> tuple[list[TritonModel], list[str], FolderAudit]:
    """The models a repository of `opts.folder` holds, and notes for the user; refuses what must not be served."""
    audit = audit_folder(opts.folder)
    m, notes = audit.manifest, []
    wanted = set(opts.precisions or Precision)
    served = [e.name for e in m.entries() if e.precision in wanted
              and not (opts.device == "cpu" and isinstance(e, EngineEntry))]
    verdicts = serving_gate(audit, served, opts.allow_unverified, notes, "a Triton repository")
    if opts.precisions and (missing := sorted(p.value for p in wanted - set(m.graphs)
                                              - {e.precision for e in m.engines.values()})):
        raise BadInput(f"--precision {','.join(missing)}: {opts.folder} holds {holdings(m)}; export it first")
    prefix = opts.name or m.model.info.arch
    batches = _bench_batches(opts.folder)
    labels = bool(m.model.info.class_names)
    by_precision: dict[Precision, list[EngineEntry]] = {}
    for e in m.engines.values():
        if e.precision in wanted:
            by_precision.setdefault(e.precision, []).append(e)
    if by_precision and opts.device == "cpu":
        notes.append(f"--device cpu: the {', '.join(p.value for p in by_precision)} TensorRT engine(s) are left out "
                     "(they run on a GPU only)")
        by_precision = {}
    engines = [_engine_model(opts.folder, m, es, opts, prefix, _common(opts, es, verdicts, batches, labels))
               for es in by_precision.values()]
    engine_max = min((x.max_batch_size for x in engines if x.max_batch_size), default=None)
    models = [_onnx_model(opts.folder, g, opts, prefix, engine_max, _common(opts, [g], verdicts, batches, labels))
              for g in m.graphs.values() if g.precision in wanted] + engines
    if not models:
        raise BadInput(f"nothing to serve: {opts.folder} holds {holdings(m) or 'no artifacts'}")
    notes += _model_notes(models, labels) + [n for es in by_precision.values() for n in shared_cc_notes(es)]
    return models, notes, audit


def _common(opts: TritonOptions, entries: list[Any], verdicts: dict[str, Standing], batches: tuple[int, ...],
            labels: bool) -> dict[str, Any]:
    return {"instances": opts.instances, "queue_delay_us": opts.queue_delay_us, "labels": labels,
            "standings": tuple(verdicts.get(e.name) for e in entries), "bench_batches": batches}


def _model_notes(models: list[TritonModel], labels: bool) -> list[str]:
    notes = []
    if not labels:
        notes.append("the model has no class names: configs name no label file (give --class-names at export)")
    if unrun := [x.name for x in models if None in x.standings]:
        notes.append(f"not verified by resnetx verify: {', '.join(unrun)} (engines are verified with "
                     "'resnetx verify DIR --device cuda' on their GPU)")
    if any(e.flavor is Flavor.rtx for x in models for e in x.entries if isinstance(e, EngineEntry)):
        notes.append("TensorRT-RTX engines load only in a Triton whose TensorRT backend runs the TensorRT-RTX "
                     "version in each config's parameters; stock tritonserver containers run enterprise TensorRT")
    return notes


# --------------------------------------------------------------------------- config.pbtxt
def _q(s: str) -> str:
    return json.dumps(s)  # a protobuf text-format string: double quotes, backslash escapes


def _tensor_text(kind: str, t: Tensor, dims: tuple[int, ...], label: bool) -> list[str]:
    lines = [f"{kind} [", "  {", f"    name: {_q(t.name)}", f"    data_type: {t.data_type}",
             f"    dims: [ {', '.join(map(str, dims))} ]"]
    if label:
        lines.append('    label_filename: "labels.txt"')
    return [*lines, "  }", "]"]


def config_text(model: TritonModel) -> str:
    """The model's config.pbtxt (Triton's ModelConfig in protobuf text format)."""
    out = [f"name: {_q(model.name)}", f"platform: {_q(model.platform)}", f"max_batch_size: {model.max_batch_size}",
           "version_policy: { latest: { num_versions: 1 } }"]
    for t in model.inputs:
        out += _tensor_text("input", t, model.dims(t), False)
    for t in model.outputs:
        out += _tensor_text("output", t, model.dims(t), model.labels and t.name == OUTPUT_NAME)
    if model.max_batch_size > 0:
        out += ["dynamic_batching {", f"  max_queue_delay_microseconds: {model.queue_delay_us}", "}"]
    out += ["instance_group [", "  {", f"    kind: {model.kind}", f"    count: {model.instances}", "  }", "]"]
    if model.default_model_filename:
        out.append(f"default_model_filename: {_q(model.default_model_filename)}")
    for cc, f in model.cc_model_filenames.items():
        out += ["cc_model_filenames {", f"  key: {_q(cc)}", f"  value: {_q(f)}", "}"]
    for k, v in model.parameters.items():
        out += ["parameters {", f"  key: {_q(k)}", f"  value: {{ string_value: {_q(v)} }}", "}"]
    return "\n".join(out) + "\n"
