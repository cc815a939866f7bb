"""The runtime registry: one row per runtime, above the runners, that everything else reads.

A row says what `--runtime NAME` runs (the PyTorch module, an ONNX graph or a TensorRT engine), where, by default
for which commands, which bench/verify options it takes and which options of its own it declares (the command line
makes a flag of each), how to prime its library before memory is measured, which distributions reports record the
version of, whether verify localises its failures, whether it is the recommendation's baseline, which fleet kinds'
nodes run it, and its help line. Nothing outside runtimes/ branches on a runtime's name: adding a runtime is its
runner module plus one `register(RuntimeSpec(...))`. Runner modules are imported on first use, so a missing backend
costs nothing until it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from resnetx.errors import BadInput

__all__ = ["RuntimeSpec", "RuntimeOption", "RUNTIMES", "register", "runtime_spec", "open_runtime", "prime",
           "runtimes_help", "runners_of", "default_label", "baseline_runtime", "fleet_runtimes", "row_options",
           "runtime_version", "available_devices", "hook"]

CPU, CUDA = "cpu", "cuda"


@dataclass(frozen=True)
class RuntimeOption:
    """An option of one runtime, declared in its row: verify, bench and predict get `flag`, its opener `attr`."""

    attr: str  # the opener's keyword, e.g. "ov_device"
    flag: str  # the command line's, e.g. "--ov-device"
    help: str
    type: type = str
    default_label: str = ""  # what the help says the default is


@dataclass(frozen=True)
class RuntimeSpec:
    """One runtime: what `--runtime NAME` runs, with what, where, and when by default."""

    name: str
    module: str  # its runner module, imported on first use
    opener: str  # the module's function that opens an artifact: opener(artifact, device=..., **options)
    runs: str  # "module" (the PyTorch model), "graph" (an ONNX file) or "engine" (a TensorRT engine)
    devices: tuple[str, ...]
    default_for: tuple[str, ...] = ()  # the commands ("verify", "bench") that run it unless --runtime says
    fixed: tuple[tuple[str, Any], ...] = ()  # fixed options for the opener (ort-trt: the provider)
    takes: tuple[str, ...] = ()  # the options object's attributes it reads, passed to the opener by name
    options: tuple[RuntimeOption, ...] = ()  # options of its own: a flag each on verify, bench and predict
    primer: str | None = None  # the module's function that loads its library once, primer(device)
    dist: tuple[str, ...] = ()  # the distributions whose versions the reports record
    localizes: bool = False  # verify localises a failing graph it runs (layer outputs and trial graphs)
    baseline: bool = False  # the recommendation's speed-ups are against its fp32 rows
    fleet: tuple[str, ...] = ()  # the devices ("cpu", "cuda") of the fleet kinds whose nodes run it
    available: str | None = None  # the module's function naming the devices it runs on here (a fleet node's probe)
    bench_notes: str | None = None  # the module's function wording bench notes on its rows, f(options, device)
    int8_causes: str | None = None  # ... and why int8 may not pay on it, f(graph path, recipe, device)
    help: str = ""

    def opener_fn(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.opener)


RUNTIMES: dict[str, RuntimeSpec] = {}


def register(spec: RuntimeSpec) -> RuntimeSpec:
    if spec.name in RUNTIMES:
        raise ValueError(f"runtime {spec.name!r} registered twice")
    taken = {o.flag for s in RUNTIMES.values() for o in s.options}
    if clash := [o.flag for o in spec.options if o.flag in taken]:
        raise ValueError(f"runtime {spec.name!r} declares {', '.join(clash)}, which another row declares")
    RUNTIMES[spec.name] = spec
    return spec


register(RuntimeSpec("torch", "runtimes.torch_rt", "open_torch", "module", (CPU, CUDA), ("bench",),
                     takes=("channels_last", "cuda_graph", "compile", "compile_mode", "cudnn_benchmark",
                            "compile_cache"), primer="prime", dist=("torch",), available="devices",
                     bench_notes="bench_notes",
                     help="PyTorch itself: eager, channels_last, CUDA graphs, torch.compile"))
register(RuntimeSpec("ort", "runtimes.ort_rt", "open_ort", "graph", (CPU, CUDA), ("verify", "bench"),
                     takes=("threads", "prefer_nhwc"), primer="prime", dist=("onnxruntime", "onnxruntime-gpu"),
                     localizes=True, baseline=True, fleet=(CPU, CUDA), available="devices",
                     int8_causes="int8_causes", help="onnxruntime: CPU, or CUDA with I/O binding"))
# opt-in: it needs onnxruntime-gpu built with TensorRT AND TensorRT's libraries, yet onnxruntime lists the provider
# even where those are missing
register(RuntimeSpec("ort-trt", "runtimes.ort_rt", "open_ort", "graph", (CUDA,), fixed=(("provider", "trt-ep"),),
                     takes=("trt_profile", "input_chw"), dist=("onnxruntime-gpu",),
                     help="onnxruntime's TensorRT execution provider"))
register(RuntimeSpec("trt", "runtimes.trt_rt", "open_trt", "engine", (CUDA,), ("verify", "bench"),
                     takes=("cuda_graph",), dist=("tensorrt-rtx-cu13", "tensorrt-cu13", "tensorrt"), fleet=(CUDA,),
                     available="devices", help="the TensorRT engines built by export"))
register(RuntimeSpec("openvino", "runtimes.openvino_rt", "open_openvino", "graph", (CPU,),
                     takes=("threads",), primer="prime", dist=("openvino",), fleet=(CPU,), available="devices",
                     options=(RuntimeOption("ov_device", "--ov-device", "the device OpenVINO compiles for, passed "
                                            "through (GPU, NPU: untested here)", default_label="CPU"),),
                     help="OpenVINO, compiling the folder's ONNX graphs (fp32, fp16, int8 Q/DQ)"))


def runtime_spec(name: str) -> RuntimeSpec:
    if name not in RUNTIMES:
        raise BadInput(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def open_runtime(name: str, artifact: Any, device: str = "cpu", **opts: Any) -> Any:
    """Open `artifact` (an nn.Module for torch, a file for the others) on `device` with the runtime `name`."""
    spec = runtime_spec(name)
    return spec.opener_fn()(artifact, device=device, **dict(spec.fixed), **opts)


def hook(spec: RuntimeSpec, name: str | None) -> Callable[..., Any] | None:
    """One of the row's module functions (primer, available, bench_notes, int8_causes), or None when the row names
    none or its module does not import here (its backend is not installed)."""
    if name is None:
        return None
    try:
        return getattr(importlib.import_module(spec.module), name)
    except ImportError:
        return None


def prime(names: set[str], device: str) -> None:
    """Load each runtime's library and run it once, before any memory baseline: a cost of the process, paid once,
    that no row should carry. A runtime that is not installed is skipped (its rows say so)."""
    for name in sorted(names):
        spec = RUNTIMES.get(name)
        if spec is not None and (fn := hook(spec, spec.primer)) is not None:
            fn(device)


def runtimes_help() -> str:
    """'torch (PyTorch itself: ...), ort (...), ...': the --runtime help, from the rows."""
    return ", ".join(f"{s.name} ({s.help})" for s in RUNTIMES.values())


def default_label(command: str) -> str:
    """'ort; +trt on cuda': what `command` runs without --runtime, from the rows' defaults and devices."""
    everywhere = [s.name for s in RUNTIMES.values() if command in s.default_for and CPU in s.devices]
    cuda = [s.name for s in RUNTIMES.values() if command in s.default_for and CPU not in s.devices]
    return ",".join(everywhere) + (f"; +{','.join(cuda)} on cuda" if cuda else "")


def runners_of(runs: str) -> list[str]:
    """The runtimes that run this kind of artifact ("graph", "engine", "module"), by default first."""
    found = [s for s in RUNTIMES.values() if s.runs == runs]
    return [s.name for s in sorted(found, key=lambda s: not s.default_for)]


def baseline_runtime() -> str | None:
    """The runtime whose fp32 rows the recommendation's speed-ups are against."""
    return next((s.name for s in RUNTIMES.values() if s.baseline), None)


def fleet_runtimes(device: str) -> list[RuntimeSpec]:
    """The rows a fleet node of a `device` kind ("cpu" or "cuda") runs."""
    return [s for s in RUNTIMES.values() if device in s.fleet]


def row_options() -> list[tuple[RuntimeSpec, RuntimeOption]]:
    """Every runtime's own options, with their rows: what the command line makes flags of."""
    return [(s, o) for s in RUNTIMES.values() for o in s.options]


def runtime_version(spec: RuntimeSpec) -> str | None:
    """'onnxruntime 1.32.0': the first of the row's distributions installed here, with its version."""
    for dist in spec.dist:
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def available_devices(spec: RuntimeSpec) -> tuple[str, ...]:
    """The devices the runtime can run on here: its module's `available` function, else its devices when one of
    its distributions is installed (none when it cannot run here at all)."""
    fn = hook(spec, spec.available)
    if fn is not None:
        return tuple(fn())
    return spec.devices if runtime_version(spec) is not None or not spec.dist else ()
