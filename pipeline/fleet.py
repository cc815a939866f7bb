"""`resnetx fleet DIR`: engines built, verified and benchmarked on every GPU kind of a Ray cluster, merged into DIR.

The driver finds the cluster's kinds (a node's `ray.io/accelerator-type` label, which Ray sets on NVIDIA GPU nodes, or
a `resnetx.io/kind` label), probes each node, and plans per kind what builds where and why. It puts the folder's
graphs, verify's inputs and their reference logits in the object store once, then runs one task per kind pinned to
a node of that kind with a label selector (pipeline/fleet_node.py). Each kind's engines and reports land in DIR as
soon as its task returns, atomically, so a driver killed mid-run and started again redoes only the kinds not yet
recorded. A node that dies is retried on another of its kind; a kind with no live node is reported "not run" after
its time limit while the others go on.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.artifacts import EngineEntry, Manifest, checked_file, export_lock, read_manifest, write_manifest
from pipeline.fleet_node import KindResult, NodeInfo, Shipment, probe, run_kind
from pipeline.machine import CPU_KIND, KNOWN_KIND_CC
from pipeline.reference import Reference, verify_inputs
from pipeline.report import write_bench_files, write_verify_json
from pipeline.verdicts import record_verdicts
from resnetx.errors import BackendUnavailable, BadInput
from resnetx.files import atomic_write, atomic_write_text, sha256_bytes
from resnetx.flavors import RTX_CCS, HardwareCompat

__all__ = ["FleetOptions", "KindPlan", "FleetRun", "plan_fleet", "run_fleet", "land", "recorded_kinds",
           "KIND_LABEL", "CC_LABEL", "ACCELERATOR_LABEL"]

log = logging.getLogger(__name__)
ACCELERATOR_LABEL = "ray.io/accelerator-type"  # set by Ray on NVIDIA GPU nodes
KIND_LABEL = "resnetx.io/kind"  # set by the user on nodes Ray does not detect (Jetson, CPU-only edge boxes)
CC_LABEL = "resnetx.io/cc"  # a node without a visible GPU declares the compute capability it builds for ("cpu":
# a CPU-only target, whose graphs are verified and benchmarked with onnxruntime)
RTX_DEFAULT_CCS = {cc for sm, cc in RTX_CCS.items() if sm != "SM75"}  # 7.5 only when asked (--rtx-turing)


@dataclass(frozen=True)
class FleetOptions:
    folder: Path
    address: str | None = None  # a running cluster (ray://host:10001, host:6379); None: a local Ray instance
    kinds: tuple[str, ...] | None = None  # None: every kind in the cluster
    plan_only: bool = False
    engine: str = "auto"  # auto: enterprise TensorRT where a node has it and a GPU, else TensorRT-RTX
    hardware_compat: HardwareCompat = HardwareCompat.none
    rtx_turing: bool = False  # TensorRT-RTX engines for compute 7.5 (T4) too
    data: str = "sample"
    data_dir: Path | None = None
    samples: int = 512
    batches: tuple[int, ...] = (1, 8, 32)
    bench: dict[str, Any] = field(default_factory=lambda: {"iters": 50, "min_seconds": 1.0, "rounds": 3})
    kind_timeout: float = 300.0  # seconds a kind's task may wait and run
    retries: int = 2  # a task whose node died runs again on another node of its kind
    force: bool = False  # redo kinds already recorded

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "hardware_compat", HardwareCompat(self.hardware_compat))
        if self.engine not in ("auto", "rtx", "tensorrt"):
            raise BadInput(f"--engine {self.engine!r}: use auto, rtx or tensorrt")
        if self.kind_timeout <= 0 or self.retries < 0 or self.samples < 1:
            raise BadInput("--kind-timeout must be > 0, --retries >= 0 and --samples >= 1")


@dataclass(frozen=True)
class KindPlan:
    """What one kind gets: which nodes, which compute capability (and where that came from), what builds its
    engines and why, or why it cannot be served."""

    kind: str
    nodes: tuple[NodeInfo, ...]
    cc: str | None
    cc_from: str  # "GPU", "label", "known kinds", "" (a CPU kind)
    flavor: str | None
    why: str
    runnable: bool = True


@dataclass
class FleetRun:
    folder: Path
    plans: list[KindPlan]
    results: dict[str, KindResult]  # kinds run now
    recorded: list[str]  # kinds already recorded by an earlier run, not run again
    not_run: dict[str, str]  # kind -> why
    seconds: float = 0.0
    ray_seconds: dict[str, float] = field(default_factory=dict)  # kind -> Ray's share of its wall time
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """Kinds whose task failed or whose checks failed."""
        bad = [k for k, r in self.results.items() if r.error or (r.verify is not None and not r.verify.passed
                                                                  and not r.verify.nothing_ran)]
        return bad + list(self.not_run)


def _ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise BackendUnavailable("resnetx fleet runs on Ray: pip install 'resnetx[fleet]'") from e
    return ray


def _connect(ray: Any, address: str | None) -> None:
    if ray.is_initialized():
        return
    if address is None:  # a local instance on the loopback address only
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 _node_ip_address="127.0.0.1")
        return
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise BackendUnavailable(f"no Ray cluster answers at {address} ({e}); start one with 'ray start --head', "
                                 "or leave --address out for a local one") from e


# --------------------------------------------------------------------------- discovery and the plan
def _probe_nodes(ray: Any, timeout: float) -> list[tuple[dict[str, str], NodeInfo]]:
    """(labels, probe answer) of every live node that can run a task."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    task = ray.remote(num_cpus=0)(probe)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(n["NodeID"]) for n in nodes]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    found = []
    for n, ref in zip(nodes, refs, strict=True):
        if ref in ready:
            found.append((dict(n.get("Labels") or {}), ray.get(ref)))
    return found


def _kind_of(labels: dict[str, str], node: NodeInfo) -> str:
    from resnetx.flavors import gpu_kind_of

    return labels.get(KIND_LABEL) or labels.get(ACCELERATOR_LABEL) or (gpu_kind_of(node.gpu) if node.gpu
                                                                         else CPU_KIND)


def _cc_of(kind: str, labels: dict[str, str], nodes: list[NodeInfo]) -> tuple[str | None, str]:
    if gpu := next((n for n in nodes if n.compute_capability), None):
        return gpu.compute_capability, "GPU"
    if CC_LABEL in labels:
        return labels[CC_LABEL], "label"
    if kind in KNOWN_KIND_CC:
        return KNOWN_KIND_CC[kind], "known kinds"
    return None, ""


def _flavor(opts: FleetOptions, cc: str, nodes: list[NodeInfo]) -> tuple[str | None, str]:
    """What builds a kind's engines on its nodes, and why; None and the reason when nothing can."""
    gpu = any(n.gpu for n in nodes)
    trt = any("tensorrt" in n.backends for n in nodes if n.gpu)
    rtx_ok = cc in RTX_DEFAULT_CCS or (opts.rtx_turing and cc == "7.5")
    rtx = any("tensorrt_rtx" in n.backends for n in nodes)
    if opts.engine in ("auto", "tensorrt") and trt:
        compat = f", --hardware-compat {opts.hardware_compat.value}"
        return "tensorrt", f"enterprise TensorRT on the node's own GPU (compute {cc}{compat})"
    if opts.engine == "tensorrt":
        return None, ("needs enterprise TensorRT on a node of this kind with its GPU: " +
                      ("no node has tensorrt" if gpu else "no GPU visible on its nodes"))
    if rtx_ok and rtx:
        where = "on its GPU" if gpu else "ahead of time on the node's CPU"
        return "rtx", f"TensorRT-RTX for SM{cc.replace('.', '')}, built {where}"
    if not rtx_ok:
        extra = " (7.5 only with --rtx-turing)" if cc == "7.5" else ""
        return None, (f"TensorRT-RTX does not target compute {cc}{extra}; {cc} needs enterprise TensorRT on the "
                      "device (pip install tensorrt-cu13 there)")
    return None, "no node of this kind has tensorrt_rtx or tensorrt installed (pip install 'resnetx[tensorrt-rtx]')"


def plan_fleet(opts: FleetOptions, found: list[tuple[dict[str, str], NodeInfo]], driver_version: str) -> list[KindPlan]:
    """One plan per kind asked for (every kind found with `auto`), in the order found."""
    by_kind: dict[str, list[tuple[dict[str, str], NodeInfo]]] = {}
    for labels, node in found:
        by_kind.setdefault(_kind_of(labels, node), []).append((labels, node))
    wanted = list(opts.kinds) if opts.kinds else list(by_kind)
    plans = []
    for kind in wanted:
        members = by_kind.get(kind, [])
        nodes = [n for _, n in members]
        if not members:
            plans.append(KindPlan(kind, (), KNOWN_KIND_CC.get(kind), "", None,
                                  f"no live node of kind {kind} in the cluster", runnable=False))
            continue
        same = [n for n in nodes if n.resnetx == driver_version]
        if not same:
            plans.append(KindPlan(kind, tuple(nodes), None, "", None, f"its nodes run resnetx {nodes[0].resnetx}, "
                                  f"the driver {driver_version}: install the same version there", runnable=False))
            continue
        cc, cc_from = _cc_of(kind, members[0][0], same)
        if kind == CPU_KIND or cc == CPU_KIND:
            plans.append(KindPlan(kind, tuple(same), None, "", None, "a CPU target: graphs verified and benchmarked "
                                  "with onnxruntime, no engines"))
            continue
        if cc is None:
            plans.append(KindPlan(kind, tuple(same), None, "", None, f"kind {kind!r}: its nodes show no GPU, carry no "
                                  f"{CC_LABEL} label, and resnetx does not know its compute capability; start its "
                                  f"nodes with --labels {CC_LABEL}=X.Y", runnable=False))
            continue
        flavor, why = _flavor(opts, cc, same)
        plans.append(KindPlan(kind, tuple(same), cc, cc_from, flavor, why))
    return plans


# --------------------------------------------------------------------------- the run
def _shipment(ray: Any, opts: FleetOptions, manifest: Manifest) -> Shipment:
    """The graphs (each checked against its sha256 first), verify's inputs and their reference logits, in the
    object store once: every kind's task reads the same objects."""
    if not manifest.graphs:
        raise BadInput(f"{opts.folder} holds no ONNX graphs to build engines from; export them first")
    graphs = {g.file: ray.put(checked_file(opts.folder, g).read_bytes()) for g in manifest.graphs.values()}
    info = manifest.model.info
    inputs = verify_inputs(opts.data, opts.data_dir, opts.samples, info.preprocess, info.num_classes)
    logits, _ = Reference.of(manifest).logits(opts.folder, inputs, samples=opts.samples)
    x = inputs.head(len(inputs))
    bare = Manifest.of(manifest.model, list(manifest.graphs.values()), manifest.versions)
    bare.created = manifest.created
    return Shipment(bare.to_dict(), graphs, ray.put(x), inputs.labels, inputs.n_real, inputs.data, inputs.drawn,
                    ray.put(logits), opts.batches, dict(opts.bench))


def _graphs_key(manifest: Manifest) -> dict[str, str]:
    return {g.name: g.sha256 for g in manifest.graphs.values()}


def recorded_kinds(folder: Path, manifest: Manifest) -> list[str]:
    """Kinds an earlier fleet run recorded for these very graphs (reports/<kind>/fleet.json), their engines still
    listed: a driver started again skips them."""
    out = []
    for f in sorted(Path(folder).glob("reports/*/fleet.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if d.get("graphs") == _graphs_key(manifest) and all(e in manifest.engines for e in d.get("engines", [])):
            out.append(d["kind"])
    return out


def run_fleet(opts: FleetOptions, on_progress: Callable[[str], None] | None = None) -> FleetRun:
    """Plan, then (unless plan_only) run every runnable kind not yet recorded, landing each in the folder as its
    task returns; the merged report is the caller's (pipeline/fleet_report.py)."""
    from importlib import metadata

    say = on_progress or (lambda _m: None)
    start = time.perf_counter()
    manifest = read_manifest(opts.folder)
    ray = _ray()
    _connect(ray, opts.address)
    say("fleet: probing the cluster's nodes")
    try:
        version = metadata.version("resnetx")
    except metadata.PackageNotFoundError:
        version = "not installed"
    plans = plan_fleet(opts, _probe_nodes(ray, min(60.0, opts.kind_timeout)), version)
    run = FleetRun(opts.folder, plans, {}, [], {p.kind: p.why for p in plans if not p.runnable})
    if opts.plan_only:
        return run
    done = [] if opts.force else recorded_kinds(opts.folder, manifest)
    todo = [p for p in plans if p.runnable and p.kind not in done]
    run.recorded = [p.kind for p in plans if p.runnable and p.kind in done]
    if todo:
        ship = _shipment(ray, opts, manifest)
        _dispatch(ray, opts, todo, ship, run, say)
    run.seconds = time.perf_counter() - start
    return run


def _dispatch(ray: Any, opts: FleetOptions, todo: list[KindPlan], ship: Shipment, run: FleetRun,
              say: Callable[[str], None]) -> None:
    """One task per kind, pinned by label; each lands as it returns; a kind past its time limit is cancelled."""
    task = ray.remote(num_cpus=1, max_retries=opts.retries, retry_exceptions=False)(run_kind)
    refs: dict[Any, tuple[KindPlan, float]] = {}
    for p in todo:
        selector = {KIND_LABEL: p.kind} if any(KIND_LABEL in _labels(ray, n) for n in p.nodes) else \
            {ACCELERATOR_LABEL: p.kind} if p.kind != CPU_KIND else {}
        sm = f"SM{p.cc.replace('.', '')}" if p.cc else None
        options: dict[str, Any] = {"label_selector": selector} if selector else {}
        if any(n.gpu for n in p.nodes):
            options["num_gpus"] = 1
        ref = task.options(**options).remote(p.kind, p.flavor, sm, opts.hardware_compat.value, ship)
        refs[ref] = (p, time.perf_counter())
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
        for ref in ready:
            p, t0 = refs.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a task that died past its retries: the kind is not run
                run.not_run[p.kind] = f"its task failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
                continue
            wall = time.perf_counter() - t0
            run.ray_seconds[p.kind] = round(max(0.0, wall - result.seconds.get("task", wall)), 3)
            land(opts.folder, result)
            run.results[p.kind] = result
            say(f"fleet: {p.kind} done in {wall:.0f} s" + (f" ({result.error})" if result.error else ""))
        for ref, (p, t0) in list(refs.items()):
            if time.perf_counter() - t0 > opts.kind_timeout:
                ray.cancel(ref, force=True)
                refs.pop(ref)
                run.not_run[p.kind] = (f"not run: no node of kind {p.kind} finished its task within "
                                       f"{opts.kind_timeout:g} s (--kind-timeout); its nodes died or are busy")


def _labels(ray: Any, node: NodeInfo) -> dict[str, str]:
    return next((dict(n.get("Labels") or {}) for n in ray.nodes() if n.get("NodeID") == node.node_id), {})


# --------------------------------------------------------------------------- landing a kind in the folder
def land(folder: Path, result: KindResult) -> None:
    """The kind's engines (checked against their sha256), manifest entries, reports and verdicts, written under the
    folder's lock, the manifest after the files it names: the folder is valid at every moment."""
    kind_dir = Path(folder) / "reports" / result.kind
    with export_lock(folder):
        manifest = read_manifest(folder)
        engines = []
        for d, blob in result.engines:
            entry = EngineEntry.from_dict(d)
            if sha256_bytes(blob) != entry.sha256:
                raise BadInput(f"{result.kind}: {entry.file} arrived with another sha256 than its entry; run again")
            atomic_write(Path(folder) / entry.file, blob)
            engines.append(entry)
        if engines:
            merged = {e.name: e for e in manifest.entries()} | {e.name: e for e in engines}
            new = Manifest.of(manifest.model, list(merged.values()), manifest.versions)
            write_manifest(folder, new)
            manifest = read_manifest(folder)
        _land_reports(folder, result, manifest)
        record = {"kind": result.kind, "cc": result.cc, "node": asdict(result.node), "flavor": result.flavor,
                  "why": result.why,
                  "engines": [EngineEntry.from_dict(d).name for d, _ in result.engines], "error": result.error,
                  "seconds": result.seconds, "graphs": _graphs_key(manifest),
                  "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if result.error is None:
            atomic_write_text(kind_dir / "fleet.json", json.dumps(record, indent=1) + "\n")


def _land_reports(folder: Path, result: KindResult, manifest: Manifest) -> None:
    import numpy as np

    kind_dir = Path(folder) / "reports" / result.kind
    if result.verify is not None:
        result.verify.folder = Path(folder)
        if write_verify_json(result.verify) is not None:
            record_verdicts(folder, result.verify.verdicts(manifest))
        if result.verify.logits:
            kind_dir.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, **result.verify.logits)
            atomic_write(kind_dir / "fleet-logits.npz", buf.getvalue())
    if result.bench is not None and not result.bench.nothing_ran:
        result.bench.folder = Path(folder)
        write_bench_files(result.bench, kind_dir)

