"""The TensorRT flavour table: which module each flavour is, where it comes from, which GPUs it targets.

Both the engine builder (exporters/tensorrt.py) and the engine runner (runtimes/trt_rt.py) read it, and an
engine's manifest entry carries an `EngineTarget`: the facts a runner checks before it reads the engine.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from resnetx import gpus
from resnetx.errors import BackendUnavailable, BadInput

__all__ = ["Flavor", "EngineChoice", "HardwareCompat", "FlavorSpec", "FLAVORS", "RTX_CCS", "RTX_PORTABLE_CCS",
           "EngineTarget", "gpu_kind_of", "import_flavor", "available_flavors"]


class Flavor(str, Enum):
    tensorrt = "tensorrt"  # enterprise TensorRT: builds on, and for, the GPU at hand
    rtx = "rtx"  # TensorRT-RTX: builds ahead of time, on any machine, for a list of compute capabilities


class HardwareCompat(str, Enum):
    """Which GPUs an enterprise TensorRT engine may run on (TensorRT's hardware compatibility level)."""

    none = "none"  # the GPU kind it was built on (TensorRT's default)
    same_cc = "same-cc"  # any GPU of the compute capability it was built on
    ampere_plus = "ampere+"  # any Ampere or newer GPU (compute capability 8.0 and up), at some speed


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
# TensorRT-RTX's build targets and the compute capability each one is (it has none for 9.0, H100/H200): read from
# the one GPU table, resnetx/gpus.py
RTX_CCS, RTX_PORTABLE_CCS = gpus.RTX_CCS, gpus.RTX_PORTABLE_CCS


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
    hardware_compat: HardwareCompat = HardwareCompat.none  # enterprise: where else it may run
    kind: str | None = None  # enterprise: the GPU kind it was built on ("L4"), which `none` ties it to

    def gpus(self) -> list[str]:
        """The compute capabilities it runs on ('8.6', ...); empty when unknown or open-ended (ampere+)."""
        if self.flavor is Flavor.rtx:
            return [RTX_CCS.get(c, c) for c in self.compute_capabilities]
        if self.hardware_compat is HardwareCompat.ampere_plus:
            return []
        return [self.compute_capability] if self.compute_capability else []

    @property
    def tag(self) -> str:
        """What names the target in the engine's manifest name and file: 'rtx-sm86-sm89' (ahead of time, for those
        compute capabilities), 'trt10.13.0-sm89-L4' (built on an L4, for L4s), 'trt10.13.0-sm89-samecc',
        'trt10.13.0-sm89-ampere+'."""
        if self.flavor is Flavor.rtx:
            return "rtx-" + "-".join(c.lower() for c in self.compute_capabilities)
        cc = "sm" + (self.compute_capability or "unknown").replace(".", "")
        where = {HardwareCompat.none: self.kind or "gpu", HardwareCompat.same_cc: "samecc",
                 HardwareCompat.ampere_plus: "ampere+"}[self.hardware_compat]
        return f"trt{self.trt_version}-{cc}-{where}"

    def runs_on(self, gpu_cc: str, kind: str | None = None) -> str | None:
        """Why it cannot run on a GPU of compute capability `gpu_cc` (and kind `kind`), or None when it can."""
        if self.flavor is Flavor.rtx:
            if gpu_cc in self.gpus():
                return None
            return f"it targets compute capabilities {', '.join(self.gpus())}; this GPU is {gpu_cc}"
        if self.hardware_compat is HardwareCompat.ampere_plus:
            ok = gpus.is_ampere_plus(gpu_cc)
            return None if ok else (f"it runs on Ampere or newer (compute {gpus.AMPERE}+); this GPU is compute "
                                    f"{gpu_cc}")
        if self.compute_capability and gpu_cc != self.compute_capability:
            return f"it was built on a {self.gpu} (compute {self.compute_capability}); this GPU is compute {gpu_cc}"
        if self.hardware_compat is HardwareCompat.none and self.kind and kind and kind != self.kind:
            return (f"it was built on a {self.kind} for that kind (--hardware-compat none); this GPU is a {kind} "
                    "(rebuild it here, or build with --hardware-compat same-cc)")
        return None


def gpu_kind_of(name: str) -> str:
    """A GPU's kind from its name, as Ray labels a node's accelerator type ("NVIDIA L4" -> "L4", "Tesla T4" ->
    "T4", "NVIDIA A100-SXM4-80GB" -> "A100", "NVIDIA GeForce RTX 4090" -> "GeForce-RTX-4090"): what an engine of
    hardware compatibility `none` is tied to, and what reports are kept per."""
    m = re.match(r"\w+\s+((?:[A-Z]+\s+)*[A-Z0-9]*\d[A-Z0-9]*)", name)
    found = m.group(1).replace(" ", "-") if m else ""
    if len(found) > 1:
        return found
    return re.sub(r"^NVIDIA\s+", "", name).strip().replace(" ", "-") or "gpu"


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
