"""What to ship on each device a bench measured: the fastest runtime x precision x batch whose accuracy passes, and how
much faster than onnxruntime fp32 it is; and whether int8 pays there at all."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Measured", "recommend"]


@dataclass(frozen=True)
class Measured:
    """One timed bench row, as the recommendation needs it."""

    artifact: str  # the manifest's name
    file: str  # what to ship
    runtime: str  # "openvino", "ort", ... (the registry's name)
    precision: str
    device: str
    batch: int
    images_per_s: float
    top1: float | None  # accuracy on bench's data, when it has labels


def _passes(m: Measured, fp32_top1: float | None, bars: dict[str, float | None], failing: set[str]) -> bool:
    """Never an artifact whose standing verdict is a fail; within its precision's accuracy-drop bar where bench
    measured accuracy (an fp32/fp16 row has no drop bar: its verdict judges it)."""
    if m.artifact in failing:
        return False
    bar = bars.get(m.precision)
    if bar is None or m.top1 is None or fp32_top1 is None:
        return True
    return fp32_top1 - m.top1 <= bar


def recommend(rows: Iterable[Measured], bars: dict[str, float | None], failing: set[str] = frozenset(),
              baseline: str | None = None, unverified: set[str] = frozenset()) -> list[str]:
    """One line per device: the fastest passing row against the `baseline` runtime's fp32 at the same batch (or,
    without one, the fastest fp32 row); then a line when int8 does not pay on that device. An artifact whose
    standing verdict is a fail is never named; one never verified is named only with "(not verified)"."""
    rows = list(rows)
    lines = []
    for device in sorted({r.device for r in rows}):
        mine = [r for r in rows if r.device == device]
        fp32_acc = [r.top1 for r in mine if r.precision == "fp32" and r.top1 is not None]
        fp32_top1 = max(fp32_acc) if fp32_acc else None
        ok = [r for r in mine if _passes(r, fp32_top1, bars, failing)]
        if not ok:
            lines.append(f"{device}: nothing to recommend: no row passes its accuracy bar and verdict")
            continue
        best = max(ok, key=lambda r: (r.images_per_s, -r.batch))
        base = _baseline(mine, best.batch, baseline)
        speed = f"{best.images_per_s / base.images_per_s:.2f}x {base.runtime} fp32 at batch {best.batch}" if base \
            else f"{best.images_per_s:,.0f} img/s at batch {best.batch}"
        delta = f", {best.top1 - fp32_top1:+.2f} pt" if best.top1 is not None and fp32_top1 is not None else ""
        check = " (not verified: resnetx verify it before shipping)" if best.artifact in unverified else ""
        lines.append(f"{device}: ship {best.file} on {best.runtime}{check}: {speed}{delta}")
        if line := _int8_pays(device, ok, mine):
            lines.append(line)
    return lines


def _baseline(rows: list[Measured], batch: int, runtime: str | None) -> Measured | None:
    same = [r for r in rows if r.precision == "fp32" and r.batch == batch]
    return next((r for r in same if r.runtime == runtime), max(same, key=lambda r: r.images_per_s, default=None))


def _int8_pays(device: str, ok: list[Measured], rows: list[Measured]) -> str | None:
    """Said when int8 is measured there and its best passing row is not faster than the best float row."""
    int8 = [r for r in ok if r.precision == "int8"]
    floats = [r for r in ok if r.precision != "int8"]
    if not any(r.precision == "int8" for r in rows) or not floats:
        return None
    best_float = max(floats, key=lambda r: r.images_per_s)
    if not int8:
        return f"{device}: int8 does not pay here: no int8 row passes its accuracy bar and verdict"
    best_int8 = max(int8, key=lambda r: r.images_per_s)
    if best_int8.images_per_s > best_float.images_per_s:
        return None
    return (f"{device}: int8 does not pay here: its fastest row ({best_int8.runtime}, batch {best_int8.batch}) runs "
            f"at {best_int8.images_per_s / best_float.images_per_s:.2f}x the fastest float row "
            f"({best_float.runtime} {best_float.precision}, batch {best_float.batch})")
