"""What this machine is: its CPU and instruction sets, its GPU, and the kind of target it counts as.

Reports and verdicts are kept per machine kind (`reports/<kind>/`): a GPU kind named as Ray names accelerator types
("L4", "A100", "H100", "GeForce-RTX-4090"), or "cpu" on a machine without a CUDA GPU.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from resnetx.flavors import gpu_kind_of

__all__ = ["CPU_KIND", "INT8_DOT", "cpu_name", "cpu_isa", "isa_mismatch", "gpu_kind_of", "system_info",
           "driver_version", "usable_cores", "needs_reduce_range"]

CPU_KIND = "cpu"
_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
INT8_DOT = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})  # int8 dot-product instructions


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's share, not the host's count)."""
    with contextlib.suppress(AttributeError, OSError):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_isa() -> tuple[str, ...]:
    """The instruction sets int8 kernels care about that this CPU reports (Linux /proc/cpuinfo flags)."""
    with contextlib.suppress(OSError, StopIteration):
        text = Path("/proc/cpuinfo").read_text().splitlines()
        line = next(ln for ln in text if ln.startswith(("flags", "Features")))
        flags = set(line.split(":", 1)[1].split())
        return tuple(f for f in _ISA_FLAGS if f in flags)
    return ()


def needs_reduce_range(isa: tuple[str, ...] | list[str]) -> bool:
    """Whether a cpu-recipe int8 graph for a CPU with these instruction sets gets 7-bit weights: without int8
    dot-product instructions (VNNI, AMX, Arm dot product), onnxruntime's remedy for u8 x s8 products that saturate
    in 16-bit sums."""
    return not set(isa) & INT8_DOT


def isa_mismatch(made_on: tuple[str, ...] | list[str] | None, recipe: str | None) -> str | None:
    """A warning when a cpu-recipe int8 graph made on one CPU runs on a CPU whose int8 instructions differ: without
    VNNI, u8 x s8 products go through 16-bit sums that can saturate, so accuracy measured on one is not the other's."""
    if recipe != "cpu" or made_on is None:
        return None
    here = cpu_isa()

    def dot(isa: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        return tuple(sorted(set(isa) & (INT8_DOT | {"avx512f"})))

    if dot(made_on) == dot(here):
        return None
    then, now = (", ".join(dot(isa)) or "no VNNI/AVX-512" for isa in (made_on, here))
    return (f"the int8 graph (cpu recipe) was made on a CPU with {then}; this CPU has {now}: "
            "int8 saturation differs between them (u8 x s8 without VNNI sums in 16 bits), so verify it here "
            "before trusting another CPU's numbers")


def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def system_info(versions: dict[str, str] | None = None) -> dict[str, Any]:
    """Where a run happened: CPU, its int8 instruction sets, cores, platform, GPU and driver, the machine kind,
    library versions (bench and verify reports)."""
    info: dict[str, Any] = {"cpu": cpu_name(), "isa": list(cpu_isa()), "cores": os.cpu_count(),
                            "platform": platform.platform(), "versions": versions or {}, "gpu": None,
                            "kind": CPU_KIND}
    import torch

    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                       "compute_capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
                       "driver": driver_version()}
        info["kind"] = gpu_kind_of(p.name)
    return info
