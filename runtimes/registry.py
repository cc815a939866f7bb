"""The runtime registry: one row per runtime, above the runners, that everything else reads.

A row says what `--runtime NAME` runs (the PyTorch module, an ONNX graph or a TensorRT engine), where, by default
for which commands, which bench/verify options it takes, how to prime its library before memory is measured, what
installs it, and its help line. Help text, bench's options, memory priming and the manifest's messages are made
from the rows: adding a runtime is its runner module plus one `register(RuntimeSpec(...))` here. Runner modules are
imported on first use, so a missing backend costs nothing until it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resnetx.errors import BadInput

__all__ = ["RuntimeSpec", "RUNTIMES", "register", "runtime_spec", "open_runtime", "prime", "runtimes_help",
           "runners_of"]


@dataclass(frozen=True)
class RuntimeSpec:
    """One runtime: what `--runtime NAME` runs, with what, where, and when by default."""

    name: str
    module: str  # its runner module, imported on first use
    opener: str  # the module's function that opens an artifact: opener(artifact, device=..., **options)
    runs: str  # "module" (the PyTorch model), "graph" (an ONNX file) or "engine" (a TensorRT engine)
    devices: tuple[str, ...]
    default_for: tuple[str, ...] = ()  # the commands ("verify", "bench") that run it unless --runtime says
    options: tuple[tuple[str, Any], ...] = ()  # fixed options for the opener (ort-trt: the provider)
    takes: tuple[str, ...] = ()  # the options object's attributes it reads, passed to the opener by name
    primer: str | None = None  # the module's function that loads its library once, primer(device)
    pip: str = ""  # what installs it
    help: str = ""

    def opener_fn(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.opener)


RUNTIMES: dict[str, RuntimeSpec] = {}


def register(spec: RuntimeSpec) -> RuntimeSpec:
    if spec.name in RUNTIMES:
        raise ValueError(f"runtime {spec.name!r} registered twice")
    RUNTIMES[spec.name] = spec
    return spec


register(RuntimeSpec("torch", "runtimes.torch_rt", "open_torch", "module", ("cpu", "cuda"), ("bench",),
                     takes=("channels_last", "cuda_graph", "compile", "compile_mode", "cudnn_benchmark",
                            "compile_cache"), primer="prime", pip="torch",
                     help="PyTorch itself: eager, channels_last, CUDA graphs, torch.compile"))
register(RuntimeSpec("ort", "runtimes.ort_rt", "open_ort", "graph", ("cpu", "cuda"), ("verify", "bench"),
                     takes=("threads", "prefer_nhwc"), primer="prime", pip="onnxruntime",
                     help="onnxruntime: CPU, or CUDA with I/O binding"))
# opt-in: it needs onnxruntime-gpu built with TensorRT AND TensorRT's libraries, yet onnxruntime lists the provider
# even where those are missing
register(RuntimeSpec("ort-trt", "runtimes.ort_rt", "open_ort", "graph", ("cuda",), options=(("provider", "trt-ep"),),
                     takes=("trt_profile", "input_chw"), pip="onnxruntime-gpu",
                     help="onnxruntime's TensorRT execution provider"))
register(RuntimeSpec("trt", "runtimes.trt_rt", "open_trt", "engine", ("cuda",), ("verify", "bench"),
                     takes=("cuda_graph",), pip="tensorrt-rtx-cu13 or tensorrt-cu13",
                     help="the TensorRT engines built by export"))
register(RuntimeSpec("openvino", "runtimes.openvino_rt", "open_openvino", "graph", ("cpu",),
                     takes=("threads", "ov_device"), primer="prime", pip="openvino",
                     help="OpenVINO, compiling the folder's ONNX graphs (fp32, fp16, int8 Q/DQ)"))


def runtime_spec(name: str) -> RuntimeSpec:
    if name not in RUNTIMES:
        raise BadInput(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def open_runtime(name: str, artifact: Any, device: str = "cpu", **opts: Any) -> Any:
    """Open `artifact` (an nn.Module for torch, a file for the others) on `device` with the runtime `name`."""
    spec = runtime_spec(name)
    return spec.opener_fn()(artifact, device=device, **dict(spec.options), **opts)


def prime(names: set[str], device: str) -> None:
    """Load each runtime's library and run it once, before any memory baseline: a cost of the process, paid once,
    that no row should carry. A runtime that is not installed is skipped (its rows say so)."""
    for name in sorted(names):
        spec = RUNTIMES.get(name)
        if spec is None or spec.primer is None:
            continue
        try:
            fn = getattr(importlib.import_module(spec.module), spec.primer)
        except ImportError:
            continue
        fn(device)


def runtimes_help() -> str:
    """'torch (PyTorch itself: ...), ort (...), ...': the --runtime help, from the rows."""
    return ", ".join(f"{s.name} ({s.help})" for s in RUNTIMES.values())


def runners_of(runs: str) -> list[str]:
    """The runtimes that run this kind of artifact ("graph", "engine", "module"), by default first."""
    found = [s for s in RUNTIMES.values() if s.runs == runs]
    return [s.name for s in sorted(found, key=lambda s: not s.default_for)]
