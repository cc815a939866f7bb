"""What a fleet runs on each node (as Ray tasks): the probe that says what the node has, and one kind's work: engines
built for its GPU from the folder's graphs, every artifact verified on the inputs and reference logits the driver
shipped, and a bench. The node needs resnetx and its backends, not the dataset, the checkpoint or the folder."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnetx.flavors import RTX_CCS

__all__ = ["NodeInfo", "Shipment", "KindResult", "probe", "run_kind"]


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
    bench: dict[str, Any] = field(default_factory=dict)  # iters, min_seconds, rounds, warmup_seconds


@dataclass
class KindResult:
    """One kind's outcome, returned to the driver, which lands it in the folder."""

    kind: str
    node: NodeInfo
    flavor: str | None  # what built its engines, None: none built (see `why`)
    cc: str | None = None  # the compute capability it built for
    why: str = ""
    engines: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)  # manifest entry, file bytes
    verify: Any = None  # its VerifyReport
    bench: Any = None  # its BenchReport
    seconds: dict[str, float] = field(default_factory=dict)  # fetch, build, verify, bench, task
    error: str | None = None  # the task failed: this is why


def probe(node_id: str) -> NodeInfo:
    """What this node has: resnetx, its GPU and compute capability, TensorRT flavours, onnxruntime providers."""
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
    return NodeInfo(node_id, platform.node(), version, gpu, cc, tuple(backends), cpu_isa())


def run_kind(kind: str, flavor: str | None, sm: str | None, compat: str, ship: Shipment) -> KindResult:
    """Build the kind's engines (`flavor` for TensorRT-RTX target `sm`, or enterprise TensorRT on this GPU),
    verify every graph and engine this node can run, and bench them, in a temporary copy of the folder."""
    import ray

    t0 = time.perf_counter()
    node = probe(ray.get_runtime_context().get_node_id())
    result = KindResult(kind, node, flavor, cc=RTX_CCS.get(sm or "", node.compute_capability))
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
            result.engines, result.seconds["build"] = _build(folder, flavor, sm, compat)
            result.verify, result.seconds["verify"] = _verify(folder, kind, node, ship, x, reference)
            result.bench, result.seconds["bench"] = _bench(folder, kind, node, ship, x)
        except Exception as e:  # noqa: BLE001 - the driver reports any failure of the kind, the other kinds go on
            from resnetx.errors import first_line

            result.error = f"{type(e).__name__}: {first_line(e)}"
    result.seconds["task"] = round(time.perf_counter() - t0, 3)
    return result


def _build(folder: Path, flavor: str | None, sm: str | None, compat: str) -> tuple[list, float]:
    from pipeline.artifacts import read_manifest
    from pipeline.export import ExportOptions, export_engines

    if flavor is None:
        return [], 0.0
    t0 = time.perf_counter()
    ccs = (sm,) if flavor == "rtx" and sm else None
    export_engines(ExportOptions(out=folder, engines_only=True, engine=flavor, rtx_compute_capabilities=ccs,
                                 hardware_compat=compat if flavor == "tensorrt" else "none"))
    engines = read_manifest(folder).engines.values()
    return [(e.to_dict(), (folder / e.file).read_bytes()) for e in engines], round(time.perf_counter() - t0, 3)


def _runtimes(node: NodeInfo) -> tuple[str, ...]:
    """onnxruntime for the graphs (on CUDA where the node has it), TensorRT for the engines."""
    return ("ort", "trt")


def _device(node: NodeInfo) -> str:
    return "cuda" if node.gpu and "onnxruntime:CUDA" in node.backends else "cpu"


def _verify(folder: Path, kind: str, node: NodeInfo, ship: Shipment, x: np.ndarray,
            reference: np.ndarray) -> tuple[Any, float]:
    from pipeline.artifacts import read_manifest
    from pipeline.reference import ArrayInputs
    from pipeline.targets import select_targets
    from pipeline.verify import VerifyOptions, judge_targets

    t0 = time.perf_counter()
    manifest = read_manifest(folder)
    device = _device(node)
    opts = VerifyOptions(folder=folder, device=device, samples=len(x))
    targets = select_targets(manifest, folder, command="verify", runtimes=_runtimes(node), precisions=None,
                             device=device)
    inputs = ArrayInputs(x, ship.labels, ship.n_real, ship.data, ship.drawn)
    report = judge_targets(opts, manifest, targets, inputs, reference, kind=kind, keep_logits=True)
    for row in report.rows:
        if row.skipped and row.artifact in manifest.engines and not node.gpu:
            row.skipped = f"not run: no GPU on node {node.host} ({row.skipped})"
    return report, round(time.perf_counter() - t0, 3)


def _bench(folder: Path, kind: str, node: NodeInfo, ship: Shipment, x: np.ndarray) -> tuple[Any, float]:
    from pipeline.bench import BenchOptions, bench

    t0 = time.perf_counter()
    opts = BenchOptions(folder=folder, runtimes=_runtimes(node), device=_device(node), batches=ship.batches,
                        **ship.bench)
    accuracy = None
    if ship.labels is not None:
        accuracy = (f"{ship.data} ({ship.n_real} images)", [(x[: ship.n_real], ship.labels)])
    report = bench(opts, accuracy=accuracy)
    report.system["kind"] = kind
    for row in report.rows:
        if row.error and row.backend == "trt" and not node.gpu:
            row.error = f"not run: no GPU on node {node.host}"
    return report, round(time.perf_counter() - t0, 3)
