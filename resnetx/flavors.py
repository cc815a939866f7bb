"""The TensorRT flavour table: which module each flavour is, where it comes from, which GPUs it targets.

Both the engine builder (exporters/tensorrt.py) and the engine runner (runtimes/trt_rt.py) read it, and an
engine's manifest entry carries an `EngineTarget`: the facts a runner checks before it reads the engine.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from resnetx.errors import BackendUnavailable, BadInput

__all__ = ["Flavor", "EngineChoice", "FlavorSpec", "FLAVORS", "RTX_CCS", "RTX_PORTABLE_CCS", "EngineTarget",
           "import_flavor", "available_flavors"]


class Flavor(str, Enum):
    tensorrt = "tensorrt"  # enterprise TensorRT: builds on, and for, the GPU at hand
    rtx = "rtx"  # TensorRT-RTX: builds ahead of time, on any machine, for a list of compute capabilities


class EngineChoice(str, Enum):
    """What `--engine` takes: a flavour, or auto (enterprise TensorRT if importable, else RTX, else none)."""

    auto = "auto"
    tensorrt = "tensorrt"
    rtx = "rtx"
    none = "none"


@dataclass(frozen=True)
class FlavorSpec:
    module: str  # the Python module
    pip: str  # the wheel that provides it
    name: str  # how messages call it


# in the order `--engine auto` prefers them
FLAVORS: dict[Flavor, FlavorSpec] = {
    Flavor.tensorrt: FlavorSpec("tensorrt", "tensorrt-cu13", "TensorRT"),
    Flavor.rtx: FlavorSpec("tensorrt_rtx", "tensorrt-rtx-cu13", "TensorRT-RTX"),
}
# TensorRT-RTX's build targets and the compute capability each one is; it has none for 9.0 (H100/H200)
RTX_CCS = {"SM75": "7.5", "SM80": "8.0", "SM86": "8.6", "SM89": "8.9", "SM120": "12.0", "SM121": "12.1"}
RTX_PORTABLE_CCS = ("SM80", "SM86", "SM89", "SM120")


@dataclass(frozen=True)
class EngineTarget:
    """Where an engine runs: what a runner checks before it deserializes the engine's bytes."""

    flavor: Flavor
    trt_version: str
    precision: str
    profile: tuple[int, int, int]  # MIN, OPT, MAX batch
    compute_capabilities: tuple[str, ...] = field(default=())  # rtx: its SM targets
    gpu: str | None = None  # enterprise TensorRT: the GPU it was built on
    compute_capability: str | None = None  # ... and that GPU's compute capability

    def gpus(self) -> list[str]:
        """The compute capabilities it runs on ('8.6', ...); empty when unknown."""
        if self.flavor is Flavor.rtx:
            return [RTX_CCS.get(c, c) for c in self.compute_capabilities]
        return [self.compute_capability] if self.compute_capability else []


def import_flavor(flavor: Flavor | str) -> Any:
    """The flavour's module, or BackendUnavailable with the pip line that installs it."""
    try:
        spec = FLAVORS[Flavor(flavor)]
    except ValueError:
        raise BadInput(f"unknown engine flavor {flavor!r}; use one of {', '.join(f.value for f in Flavor)}") from None
    try:
        return importlib.import_module(spec.module)
    except ImportError as e:
        raise BackendUnavailable(f"{spec.module} is not installed: pip install {spec.pip}") from e
    except OSError as e:  # wheel present but its shared libraries do not load
        raise BackendUnavailable(f"{spec.module} is installed but cannot load its libraries ({e})") from e


def available_flavors() -> list[Flavor]:
    out = []
    for flavor in FLAVORS:
        try:
            import_flavor(flavor)
            out.append(flavor)
        except BackendUnavailable:
            pass
    return out
