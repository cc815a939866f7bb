"""What a fleet is asked to do, and its plan: the cluster's kinds (a node's `ray.io/accelerator-type` label, which Ray
sets on NVIDIA GPU nodes, or a `resnetx.io/kind` label), the nodes of each, the compute capability each builds for
and where that came from, what builds its engines and why, and which runtimes its nodes run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.defaults import (
    DEFAULT_BATCHES,
    DEFAULT_ITERS,
    DEFAULT_KIND_TIMEOUT,
    DEFAULT_MIN_SECONDS,
    DEFAULT_REFERENCE_SAMPLES,
    DEFAULT_RETRIES,
    DEFAULT_ROUNDS,
    DEFAULT_WARMUP,
    DEFAULT_WARMUP_SECONDS,
)
from pipeline.fleet.node import NodeInfo
from pipeline.machine import CPU_KIND
from resnetx.errors import BadInput
from resnetx.flavors import EngineChoice, Flavor, HardwareCompat, gpu_kind_of
from resnetx.gpus import KINDS, RTX_FLEET_CCS, RTX_OPT_IN_CCS, sm

__all__ = ["FleetOptions", "FleetBench", "KindPlan", "plan_fleet", "kind_of", "KIND_LABEL", "CC_LABEL",
           "ACCELERATOR_LABEL", "NODE_ID_LABEL"]

ACCELERATOR_LABEL = "ray.io/accelerator-type"  # set by Ray on NVIDIA GPU nodes
NODE_ID_LABEL = "ray.io/node-id"  # set by Ray on every node: what a kind's tasks are pinned to
KIND_LABEL = "resnetx.io/kind"  # set by the user on nodes Ray does not detect (Jetson, CPU-only edge boxes)
CC_LABEL = "resnetx.io/cc"  # a node without a visible GPU declares the compute capability it builds for ("cpu":
# a CPU-only target, whose graphs are verified and benchmarked on the CPU runtimes)


@dataclass(frozen=True)
class FleetBench:
    """How every kind's bench times (bench's options of the same names)."""

    iters: int = DEFAULT_ITERS
    min_seconds: float = DEFAULT_MIN_SECONDS
    rounds: int = DEFAULT_ROUNDS
    warmup: int = DEFAULT_WARMUP
    warmup_seconds: float = DEFAULT_WARMUP_SECONDS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FleetOptions:
    folder: Path
    address: str | None = None  # a running cluster (ray://host:10001, host:6379); None: a local Ray instance
    kinds: tuple[str, ...] | None = None  # None: every kind in the cluster
    plan_only: bool = False
    engine: EngineChoice = EngineChoice.auto  # auto: enterprise TensorRT where a node has it and a GPU, else RTX
    hardware_compat: HardwareCompat = HardwareCompat.none
    rtx_turing: bool = False  # TensorRT-RTX engines for compute 7.5 (T4) too
    data: str = "sample"
    data_dir: Path | None = None
    samples: int = DEFAULT_REFERENCE_SAMPLES
    batches: tuple[int, ...] = DEFAULT_BATCHES
    bench: FleetBench = field(default_factory=FleetBench)
    kind_timeout: float = DEFAULT_KIND_TIMEOUT  # seconds a kind's task may wait and run
    retries: int = DEFAULT_RETRIES  # a task whose node died runs again on another node of its kind
    force: bool = False  # redo kinds already recorded

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "hardware_compat", HardwareCompat(self.hardware_compat))
        try:
            object.__setattr__(self, "engine", EngineChoice(self.engine))
        except ValueError:
            raise BadInput(f"--engine {self.engine!r}: use auto, rtx or tensorrt") from None
        if self.engine is EngineChoice.none:
            raise BadInput("--engine none builds nothing: give auto, rtx or tensorrt")
        if isinstance(self.bench, dict):
            try:
                object.__setattr__(self, "bench", FleetBench(**self.bench))
            except TypeError as e:
                raise BadInput(f"fleet bench options: {e}") from e
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
    flavor: Flavor | None
    why: str
    runnable: bool = True

    @property
    def device(self) -> str:
        """What the kind's nodes run artifacts on: "cuda" for a GPU kind (even on a build-only node without a GPU:
        its engines' rows then say so), "cpu" for a CPU kind."""
        return "cuda" if self.cc else "cpu"


def kind_of(labels: dict[str, str], node: NodeInfo) -> str:
    return labels.get(KIND_LABEL) or labels.get(ACCELERATOR_LABEL) or (gpu_kind_of(node.gpu) if node.gpu
                                                                         else CPU_KIND)


def _cc_of(kind: str, labels: dict[str, str], nodes: list[NodeInfo]) -> tuple[str | None, str]:
    if gpu := next((n for n in nodes if n.compute_capability), None):
        return gpu.compute_capability, "GPU"
    if CC_LABEL in labels:
        return labels[CC_LABEL], "label"
    if kind in KINDS:
        return KINDS[kind], "known kinds"
    return None, ""


def _flavor(opts: FleetOptions, cc: str, nodes: list[NodeInfo]) -> tuple[Flavor | None, str]:
    """What builds a kind's engines on its nodes, and why; None and the reason when nothing can."""
    gpu = any(n.gpu for n in nodes)
    trt = any(Flavor.tensorrt.value in n.backends for n in nodes if n.gpu)
    rtx_ok = cc in RTX_FLEET_CCS or (opts.rtx_turing and cc in RTX_OPT_IN_CCS)
    rtx = any("tensorrt_rtx" in n.backends for n in nodes)
    if opts.engine in (EngineChoice.auto, EngineChoice.tensorrt) and trt:
        compat = f", --hardware-compat {opts.hardware_compat.value}"
        return Flavor.tensorrt, f"enterprise TensorRT on the node's own GPU (compute {cc}{compat})"
    if opts.engine is EngineChoice.tensorrt:
        return None, ("needs enterprise TensorRT on a node of this kind with its GPU: " +
                      ("no node has tensorrt" if gpu else "no GPU visible on its nodes"))
    if rtx_ok and rtx:
        where = "on its GPU" if gpu else "ahead of time on the node's CPU"
        return Flavor.rtx, f"TensorRT-RTX for {sm(cc)}, built {where}"
    if not rtx_ok:
        extra = f" ({cc} only with --rtx-turing)" if cc in RTX_OPT_IN_CCS else ""
        return None, (f"TensorRT-RTX does not target compute {cc}{extra}; {cc} needs enterprise TensorRT on the "
                      "device (pip install tensorrt-cu13 there)")
    return None, "no node of this kind has tensorrt_rtx or tensorrt installed (pip install 'resnetx[tensorrt-rtx]')"


def plan_fleet(opts: FleetOptions, found: list[tuple[dict[str, str], NodeInfo]], driver_version: str) -> list[KindPlan]:
    """One plan per kind asked for (every kind found with `auto`), in the order found."""
    by_kind: dict[str, list[tuple[dict[str, str], NodeInfo]]] = {}
    for labels, node in found:
        by_kind.setdefault(kind_of(labels, node), []).append((labels, node))
    wanted = list(opts.kinds) if opts.kinds else list(by_kind)
    return [_plan_kind(opts, kind, by_kind.get(kind, []), driver_version) for kind in wanted]


def _plan_kind(opts: FleetOptions, kind: str, members: list[tuple[dict[str, str], NodeInfo]],
               driver_version: str) -> KindPlan:
    nodes = [n for _, n in members]
    if not members:
        return KindPlan(kind, (), KINDS.get(kind), "", None, f"no live node of kind {kind} in the cluster",
                        runnable=False)
    same = [n for n in nodes if n.resnetx == driver_version]
    if not same:
        return KindPlan(kind, tuple(nodes), None, "", None, f"its nodes run resnetx {nodes[0].resnetx}, the driver "
                        f"{driver_version}: install the same version there", runnable=False)
    cc, cc_from = _cc_of(kind, members[0][0], same)
    if kind == CPU_KIND or cc == CPU_KIND:
        return KindPlan(kind, tuple(same), None, "", None, "a CPU target: graphs verified and benchmarked on the "
                        "CPU runtimes its nodes have, no engines")
    if cc is None:
        return KindPlan(kind, tuple(same), None, "", None, f"kind {kind!r}: its nodes show no GPU, carry no "
                        f"{CC_LABEL} label, and resnetx does not know its compute capability; start its nodes with "
                        f"--labels {CC_LABEL}=X.Y", runnable=False)
    flavor, why = _flavor(opts, cc, same)
    return KindPlan(kind, tuple(same), cc, cc_from, flavor, why)
