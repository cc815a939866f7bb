"""`resnetx fleet DIR`: engines built, verified and benchmarked on every GPU kind of a Ray cluster, merged into DIR.

The driver probes each node (a node that vanishes meanwhile is left out, with a note) and plans per kind what builds
where and why (pipeline/fleet/plan.py). It puts the folder's graphs, verify's inputs and their reference logits in the
object store once, then runs one task per kind pinned to the nodes of that kind (by Ray's node-id label, so that a CPU
kind never lands on a GPU node). Each kind's engines and reports land in DIR as soon as its task returns, atomically,
under the folder's lock, so a driver killed mid-run and started again redoes only the kinds not yet recorded. A node
that dies is retried on another node of its kind; a kind with no live node is reported "not run" after its time limit
while the others go on. The merged report is the folder's: every kind it holds results for (pipeline/fleet/report.py).
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

from pipeline.check.records import record_verify_unlocked, write_bench_files
from pipeline.check.reference import Reference, verify_inputs
from pipeline.fleet.node import KindResult, KindWork, NodeInfo, Shipment, probe, run_kind
from pipeline.fleet.plan import NODE_ID_LABEL, FleetOptions, KindPlan, plan_fleet
from pipeline.fleet.report import FleetReport, merge_reports, write_fleet_files
from pipeline.folder.manifest import EngineEntry, Manifest, checked_file, export_lock, read_manifest, write_manifest
from resnetx.errors import BackendUnavailable, BadInput, first_line
from resnetx.files import atomic_write, atomic_write_text, sha256_bytes
from resnetx.gpus import sm

__all__ = ["FleetRun", "run_fleet", "land", "recorded_kinds", "resnetx_version"]

log = logging.getLogger(__name__)


@dataclass
class FleetRun:
    folder: Path
    plans: list[KindPlan]
    results: dict[str, KindResult]  # kinds run now
    recorded: list[str]  # kinds already recorded by an earlier run, not run again
    not_run: dict[str, str]  # kind -> why
    seconds: float = 0.0
    ray_seconds: dict[str, float] = field(default_factory=dict)  # kind -> Ray's share of its wall time
    notes: list[str] = field(default_factory=list)  # what the probe left out, and why
    report: FleetReport | None = None  # the folder's merged report (None with --plan)
    paths: list[Path] = field(default_factory=list)  # the merged report's files

    @property
    def failed(self) -> list[str]:
        """Kinds whose task failed or whose checks failed."""
        bad = [k for k, r in self.results.items() if r.error or (r.verify is not None and not r.verify.passed
                                                                  and not r.verify.nothing_ran)]
        return bad + list(self.not_run)


def resnetx_version() -> str:
    """The installed resnetx's version (the driver's, a node's)."""
    from importlib import metadata

    try:
        return metadata.version("resnetx")
    except metadata.PackageNotFoundError:
        return "not installed"


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


# --------------------------------------------------------------------------- discovery
def _probe_nodes(ray: Any, timeout: float, notes: list[str],
                 nodes: list[dict[str, Any]] | None = None) -> list[tuple[dict[str, str], NodeInfo]]:
    """(labels, probe answer) of every live node that can run a task (or of `nodes`, as ray.nodes() lists them); a
    node that does not answer (it left the cluster meanwhile, or is too busy) is left out of the plan with a note."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if nodes is None:
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    task = ray.remote(num_cpus=0, max_retries=0)(probe)
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(n["NodeID"]) for n in nodes]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    found = []
    for n, ref in zip(nodes, refs, strict=True):
        labels, short = dict(n.get("Labels") or {}), n["NodeID"][:12]
        if ref not in ready:
            notes.append(f"node {short} ({n.get('NodeManagerAddress', '?')}) did not answer the probe within "
                         f"{timeout:g} s: left out of the plan")
            continue
        try:
            found.append((labels, ray.get(ref)))
        except ray.exceptions.RayError as e:  # it left the cluster while probed
            notes.append(f"node {short} left the cluster while it was probed ({type(e).__name__}): left out of the "
                         "plan")
    return found


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
                    ray.put(logits), opts.batches, opts.bench.to_dict())


def _graphs_key(manifest: Manifest) -> dict[str, str]:
    return {g.name: g.sha256 for g in manifest.graphs.values()}


def recorded_kinds(folder: Path, manifest: Manifest) -> list[str]:
    """Kinds an earlier fleet run recorded for these very graphs (reports/<kind>/fleet.json, without an error), their
    engines still listed: a driver started again skips them."""
    out = []
    for f in sorted(Path(folder).glob("reports/*/fleet.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(d, dict) and d.get("error") is None and d.get("graphs") == _graphs_key(manifest) \
                and all(e in manifest.engines for e in d.get("engines", [])):
            out.append(d["kind"])
    return out


def run_fleet(opts: FleetOptions, on_progress: Callable[[str], None] | None = None) -> FleetRun:
    """Plan, then (unless plan_only) run every runnable kind not yet recorded, landing each in the folder as its
    task returns, and write the folder's merged report (reports/fleet.{json,md,png})."""
    say = on_progress or (lambda _m: None)
    start = time.perf_counter()
    manifest = read_manifest(opts.folder)
    ray = _ray()
    _connect(ray, opts.address)
    say("fleet: probing the cluster's nodes")
    notes: list[str] = []
    plans = plan_fleet(opts, _probe_nodes(ray, min(60.0, opts.kind_timeout), notes), resnetx_version())
    run = FleetRun(opts.folder, plans, {}, [], {p.kind: p.why for p in plans if not p.runnable}, notes=notes)
    if opts.plan_only:
        return run
    done = [] if opts.force else recorded_kinds(opts.folder, manifest)
    todo = [p for p in plans if p.runnable and p.kind not in done]
    run.recorded = [p.kind for p in plans if p.runnable and p.kind in done]
    if todo:
        _dispatch(ray, opts, todo, _shipment(ray, opts, manifest), run, say)
    run.seconds = time.perf_counter() - start
    run.report = merge_reports(opts.folder, plans, run.not_run, run.ray_seconds)
    run.paths = write_fleet_files(opts.folder, run.report)
    return run


def _dispatch(ray: Any, opts: FleetOptions, todo: list[KindPlan], ship: Shipment, run: FleetRun,
              say: Callable[[str], None]) -> None:
    """One task per kind, pinned to its nodes; each lands as it returns; a kind past its time limit is cancelled."""
    task = ray.remote(num_cpus=1, max_retries=opts.retries, retry_exceptions=False)(run_kind)
    refs: dict[Any, tuple[KindPlan, float]] = {}
    for p in todo:
        options: dict[str, Any] = {"label_selector": {NODE_ID_LABEL: f"in({','.join(n.node_id for n in p.nodes)})"}}
        if any(n.gpu for n in p.nodes):
            options["num_gpus"] = 1
        work = KindWork(p.kind, p.flavor, sm(p.cc) if p.cc else None, opts.hardware_compat.value, p.device)
        refs[task.options(**options).remote(work, ship)] = (p, time.perf_counter())
    while refs:
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
        for ref in ready:
            p, t0 = refs.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as e:  # a task that died past its retries: the kind is not run
                run.not_run[p.kind] = f"its task failed on every node tried: {type(e).__name__}: {first_line(e, 300)}"
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
                run.not_run[p.kind] = (f"no node of kind {p.kind} finished its task within {opts.kind_timeout:g} s "
                                       "(--kind-timeout): its nodes died or are busy")


# --------------------------------------------------------------------------- landing a kind in the folder
def land(folder: Path, result: KindResult) -> None:
    """The kind's engines (checked against their sha256), manifest entries, reports and verdicts, written under the
    folder's lock, the manifest after the files it names: the folder is valid at every moment. A kind whose task
    failed records why and the node's traceback (reports/<kind>/fleet.json), and is run again next time."""
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
            write_manifest(folder, Manifest.of(manifest.model, list(merged.values()), manifest.versions))
            manifest = read_manifest(folder)
        _land_reports(folder, result)
        record = {"kind": result.kind, "cc": result.cc, "node": asdict(result.node),
                  "flavor": result.flavor.value if result.flavor else None, "why": result.why,
                  "engines": [EngineEntry.from_dict(d).name for d, _ in result.engines],
                  "runtimes": list(result.runtimes), "error": result.error, "traceback": result.traceback,
                  "seconds": result.seconds, "graphs": _graphs_key(manifest), "resnetx": result.node.resnetx,
                  "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(kind_dir / "fleet.json", json.dumps(record, indent=1) + "\n")


def _land_reports(folder: Path, result: KindResult) -> None:
    import numpy as np

    kind_dir = Path(folder) / "reports" / result.kind
    if result.verify is not None:
        result.verify.folder = Path(folder)
        record_verify_unlocked(result.verify)
        if result.verify.logits:
            kind_dir.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            np.savez(buf, **result.verify.logits)
            atomic_write(kind_dir / "fleet-logits.npz", buf.getvalue())
    if result.bench is not None and not result.bench.nothing_ran:
        result.bench.folder = Path(folder)
        write_bench_files(result.bench, kind_dir)
