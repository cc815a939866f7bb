"""One table of GPU kinds and compute capabilities: every other table, help line and default is derived from it.

A new compute capability is one `_CC` row here; a new GPU kind is one entry of `KINDS`. What reads them: TensorRT-RTX's
build targets (`RTX_CCS`, `RTX_PORTABLE_CCS`), Triton's map of an ampere+ engine (`AMPERE_PLUS_CCS`), the fleet's
default targets (`RTX_FLEET_CCS`) and the compute capability of a kind a fleet names (`KINDS`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ComputeCapability", "CCS", "KINDS", "RTX_CCS", "RTX_PORTABLE_CCS", "RTX_OPT_IN_CCS", "RTX_FLEET_CCS",
           "AMPERE_PLUS_CCS", "AMPERE", "is_ampere_plus", "sm", "rtx_default_help"]

AMPERE = "8.0"  # the first compute capability an ampere+ engine runs on


@dataclass(frozen=True)
class ComputeCapability:
    """One compute capability and what TensorRT-RTX does with it."""

    cc: str  # "8.6"
    rtx_target: str | None = None  # TensorRT-RTX's build target ("SM86"); None: it builds nothing for it
    rtx_portable: bool = False  # in TensorRT-RTX's default target list (what `--engine rtx` builds without a list)
    rtx_opt_in: bool = False  # a fleet builds it only when asked (--rtx-turing)


_CC = ComputeCapability
# TensorRT-RTX targets 7.5 and 8.0 up, but not 9.0/10.0 (H100, H200, B200) nor the Jetson modules (7.2, 8.7)
CCS: dict[str, ComputeCapability] = {c.cc: c for c in (
    _CC("7.0"), _CC("7.2"), _CC("7.5", "SM75", rtx_opt_in=True), _CC("8.0", "SM80", True), _CC("8.6", "SM86", True),
    _CC("8.7"), _CC("8.9", "SM89", True), _CC("9.0"), _CC("10.0"), _CC("12.0", "SM120", True),
    _CC("12.1", "SM121"))}

# kind (as Ray names accelerator types, or a Jetson module) -> its compute capability; other kinds come from the node's
# own GPU or its resnetx.io/cc label
KINDS: dict[str, str] = {
    "V100": "7.0", "T4": "7.5", "A100": "8.0", "A30": "8.0", "A10": "8.6", "A10G": "8.6", "A40": "8.6",
    "A16": "8.6", "A2": "8.6", "RTX-A6000": "8.6", "GeForce-RTX-3090": "8.6", "L4": "8.9", "L40": "8.9",
    "L40S": "8.9", "GeForce-RTX-4090": "8.9", "RTX-6000-Ada": "8.9", "H100": "9.0", "H200": "9.0", "GH200": "9.0",
    "B200": "10.0", "GB200": "10.0", "GeForce-RTX-5090": "12.0", "RTX-PRO-6000": "12.0", "orin": "8.7",
    "xavier": "7.2",
}


def _key(cc: str) -> tuple[int, ...]:
    return tuple(int(p) for p in cc.split("."))


def is_ampere_plus(cc: str) -> bool:
    """Compute capability 8.0 or newer: where an ampere+ enterprise engine runs."""
    return _key(cc) >= _key(AMPERE)


def sm(cc: str) -> str:
    """'8.6' -> 'SM86': how TensorRT-RTX names a compute capability."""
    return "SM" + cc.replace(".", "")


RTX_CCS: dict[str, str] = {c.rtx_target: c.cc for c in CCS.values() if c.rtx_target}  # "SM86" -> "8.6"
RTX_PORTABLE_CCS: tuple[str, ...] = tuple(c.rtx_target for c in CCS.values() if c.rtx_portable and c.rtx_target)
RTX_OPT_IN_CCS: tuple[str, ...] = tuple(c.cc for c in CCS.values() if c.rtx_opt_in)  # "7.5"
RTX_FLEET_CCS: frozenset[str] = frozenset(c.cc for c in CCS.values() if c.rtx_target and not c.rtx_opt_in)
AMPERE_PLUS_CCS: tuple[str, ...] = tuple(cc for cc in CCS if is_ampere_plus(cc))


def rtx_default_help() -> str:
    """'SM80,SM86,SM89,SM120': TensorRT-RTX's default targets, for help text that cannot go stale."""
    return ",".join(RTX_PORTABLE_CCS)
