"""What a fleet runs on each node (as Ray tasks): the probe that says what the node has, and one kind's work: engines
built for its GPU from the folder's graphs, every artifact verified on the inputs and reference logits the driver
shipped, and a bench, with the runtimes the registry's rows name for the kind's device. The node needs resnetx and its
backends, not the dataset, the checkpoint or the folder."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnetx.flavors import Flavor
from resnetx.gpus import RTX_CCS

__all__ = ["NodeInfo", "Shipment", "KindResult", "KindWork", "probe", "run_kind", "node_runtimes"]


@dataclass(frozen=True)
class NodeInfo:
    """One node as it answers the probe."""

    node_id: str
    host: str
    resnetx: str  # its resnetx version
    gpu: str | None  # its first CUDA GPU's name, None without one
    compute_capability: str | None
    backends: tuple[str, ...]  # what it can build and run with: tensorrt, tensorrt_rtx, onnxruntime providers
    cpu_isa: tuple[str, ...] = ()
    runtimes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # each runtime row it can run, and on which devices


@dataclass(frozen=True)
class Shipment:
    """What the driver puts in the object store once for every kind: the folder's manifest and graphs, verify's
    inputs and their reference logits, and what to do."""

    manifest: dict[str, Any]
    graphs: dict[str, Any]  # graph file name -> its bytes (an ObjectRef, fetched by the task)
    inputs: Any  # ObjectRef of the float32 inputs, the real images first
    labels: np.ndarray | None
    n_real: int
    data: str
    drawn: str
    reference: Any  # ObjectRef of the reference logits of the inputs
    batches: tuple[int, ...] = (1, 8, 32)
    bench: dict[str, Any] = field(default_factory=dict)  # FleetBench's fields: iters, min_seconds, rounds, warmup...


@dataclass(frozen=True)
class KindWork:
    """One kind's task: what builds its engines (TensorRT-RTX for target `sm`, or enterprise TensorRT on this GPU),
    and the device its artifacts run on ("cuda" for a GPU kind, "cpu" for a CPU kind)."""

    kind: str
    flavor: Flavor | None
    sm: str | None
    compat: str
    device: str


@dataclass
class KindResult:
    """One kind's outcome, returned to the driver, which lands it in the folder."""

    kind: str
    node: NodeInfo
    flavor: Flavor | None  # what built its engines, None: none built (see `why`)
    cc: str | None = None  # the compute capability it built for
    why: str = ""
    engines: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)  # manifest entry, file bytes
    verify: Any = None  # its VerifyReport
    bench: Any = None  # its BenchReport
    runtimes: tuple[str, ...] = ()  # the runtime rows it ran, "name on device"
    seconds: dict[str, float] = field(default_factory=dict)  # fetch, build, verify, bench, task
    error: str | None = None  # the task failed: this is why
    traceback: str | None = None  # ... and where, as the node saw it


def node_runtimes() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each runtime row this machine can run, and on which devices (its row's probe)."""
    from runtimes.registry import RUNTIMES, available_devices

    return tuple((name, devs) for name, spec in RUNTIMES.items() if (devs := available_devices(spec)))


def probe(node_id: str) -> NodeInfo:
    """What this node has: resnetx, its GPU and compute capability, TensorRT flavours, onnxruntime providers, the
    runtimes it can run."""
    import platform
    from importlib import metadata

    from exporters.tensorrt import gpu_target
    from pipeline.machine import cpu_isa

    gpu, cc = gpu_target()
    backends = [m for m in ("tensorrt", "tensorrt_rtx") if importlib.util.find_spec(m) is not None]
    with contextlib.suppress(ImportError):
        import onnxruntime as ort

        backends += [f"onnxruntime:{p.removesuffix('ExecutionProvider')}" for p in ort.get_available_providers()
                     if p != "AzureExecutionProvider"]
    try:
        version = metadata.version("resnetx")
    except metadata.PackageNotFoundError:
        version = "not installed"
    return NodeInfo(node_id, platform.node(), version, gpu, cc, tuple(backends), cpu_isa(), node_runtimes())


def run_kind(work: KindWork, ship: Shipment) -> KindResult:
    """Build the kind's engines, verify every artifact this node can run, and bench them, in a temporary copy of the
    folder. A failure is the kind's (the driver reports it, the other kinds go on), with the node's traceback."""
    import ray

    t0 = time.perf_counter()
    node = probe(ray.get_runtime_context().get_node_id())
    result = KindResult(work.kind, node, work.flavor, cc=RTX_CCS.get(work.sm or "", node.compute_capability))
    with tempfile.TemporaryDirectory(prefix=f"resnetx-fleet-{node.node_id[:12]}-") as tmp:
        folder = Path(tmp) / "folder"
        folder.mkdir()
        blobs = ray.get(list(ship.graphs.values()))
        for name, blob in zip(ship.graphs, blobs, strict=True):
            (folder / name).write_bytes(blob)
        (folder / "manifest.json").write_text(json.dumps(ship.manifest))
        x, reference = ray.get([ship.inputs, ship.reference])
        result.seconds["fetch"] = round(time.perf_counter() - t0, 3)
        try:
            result.engines, result.seconds["build"] = _build(folder, work)
            runtimes, device = _runtimes(node, work.device)
            result.runtimes = tuple(f"{r} on {'cuda' if r in _engine_rows() else device}" for r in runtimes)
            result.verify, result.seconds["verify"] = _verify(folder, work.kind, node, ship, x, reference,
                                                              runtimes, device)
            result.bench, result.seconds["bench"] = _bench(folder, work.kind, node, ship, x, runtimes, device)
        except Exception as e:  # noqa: BLE001 - the driver reports any failure of the kind, the other kinds go on
            from resnetx.errors import first_line

            result.error = f"{type(e).__name__}: {first_line(e)}"
            result.traceback = traceback.format_exc()
    result.seconds["task"] = round(time.perf_counter() - t0, 3)
    return result


def _engine_rows() -> set[str]:
    from runtimes.registry import RUNTIMES

    return {n for n, s in RUNTIMES.items() if s.runs == "engine"}


def _runtimes(node: NodeInfo, device: str) -> tuple[tuple[str, ...], str]:
    """The runtimes the node runs for a kind of `device`, and the device its graphs run on: every row the registry
    names for that device that the node can run (an engine row always: its rows say when the node has no GPU), the
    graphs on the kind's device where the node's runtimes run graphs there, else on its CPU."""
    from runtimes.registry import fleet_runtimes

    here = dict(node.runtimes)
    rows = [s for s in fleet_runtimes(device) if s.runs == "engine" or here.get(s.name)]
    graphs_there = any(device in here.get(s.name, ()) for s in rows if s.runs == "graph")
    return tuple(s.name for s in rows), device if graphs_there else "cpu"


def _build(folder: Path, work: KindWork) -> tuple[list, float]:
    from pipeline.folder.manifest import read_manifest
    from pipeline.make.export import ExportOptions, export_engines

    if work.flavor is None:
        return [], 0.0
    t0 = time.perf_counter()
    rtx = work.flavor is Flavor.rtx
    export_engines(ExportOptions(out=folder, engines_only=True, engine=work.flavor.value,
                                 rtx_compute_capabilities=(work.sm,) if rtx and work.sm else None,
                                 hardware_compat=work.compat if not rtx else "none"))
    engines = read_manifest(folder).engines.values()
    return [(e.to_dict(), (folder / e.file).read_bytes()) for e in engines], round(time.perf_counter() - t0, 3)


def _verify(folder: Path, kind: str, node: NodeInfo, ship: Shipment, x: np.ndarray, reference: np.ndarray,
            runtimes: tuple[str, ...], device: str) -> tuple[Any, float]:
    from pipeline.check.candidates import select_candidates
    from pipeline.check.reference import ArrayInputs
    from pipeline.check.verify import VerifyOptions, judge_candidates
    from pipeline.folder.manifest import read_manifest

    t0 = time.perf_counter()
    manifest = read_manifest(folder)
    opts = VerifyOptions(folder=folder, device=device, samples=len(x))
    candidates = select_candidates(manifest, folder, command="verify", runtimes=runtimes, precisions=None,
                                   device=device)
    inputs = ArrayInputs(x, ship.labels, ship.n_real, ship.data, ship.drawn)
    report = judge_candidates(opts, manifest, candidates, inputs, reference, kind=kind, keep_logits=True)
    for row in report.rows:
        if row.skipped and row.artifact in manifest.engines and not node.gpu:
            row.skipped = f"not run: no GPU on node {node.host} ({row.skipped})"
    return report, round(time.perf_counter() - t0, 3)


def _bench(folder: Path, kind: str, node: NodeInfo, ship: Shipment, x: np.ndarray, runtimes: tuple[str, ...],
           device: str) -> tuple[Any, float]:
    from pipeline.check.bench import BenchOptions, bench

    t0 = time.perf_counter()
    opts = BenchOptions(folder=folder, runtimes=runtimes, device=device, batches=ship.batches, **ship.bench)
    accuracy = None
    if ship.labels is not None:
        accuracy = (f"{ship.data} ({ship.n_real} images)", [(x[: ship.n_real], ship.labels)])
    report = bench(opts, accuracy=accuracy, record=False)
    report.system["kind"] = kind
    for row in report.rows:
        if row.error and row.backend in _engine_rows() and not node.gpu:
            row.error = f"not run: no GPU on node {node.host}"
    return report, round(time.perf_counter() - t0, 3)
