"""The fleet's merged report, the folder's and not the last run's: every kind the folder holds results for (each with
the run that produced it: when, which resnetx, which node, or why it failed), the kinds asked for and not run, rows
kind x artifact x batch, the cross-kind parity matrix (and the kinds whose logits could not be read), the cost of
ampere+ engines, and one line per kind saying what to ship (reports/fleet.{json,md,png})."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.check.records import png_bytes
from pipeline.folder.manifest import read_manifest
from pipeline.precisions import Precision
from resnetx.files import atomic_write, atomic_write_text
from resnetx.parity import logit_parity

if TYPE_CHECKING:
    from pipeline.fleet.plan import KindPlan

__all__ = ["FleetReport", "merge_reports", "write_fleet_files", "fleet_markdown"]


@dataclass
class FleetReport:
    rows: list[dict[str, Any]]  # kind, artifact, precision, runtime, batch, verdict, agreement, delta, latency ...
    parity: list[dict[str, Any]]  # precision, kind_a, kind_b, top1_agreement, rel_l2
    ship: dict[str, str]  # kind -> what to ship there, in words
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> the run that produced its results
    ampere_plus: list[dict[str, Any]] = field(default_factory=list)  # kind, precision, p50 native vs ampere+
    not_run: dict[str, str] = field(default_factory=dict)  # kinds asked for by the last run and not run: why
    unreadable: dict[str, str] = field(default_factory=dict)  # kinds whose logits the parity matrix could not read
    ray_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kinds": self.kinds, "rows": self.rows, "parity": self.parity, "unreadable": self.unreadable,
                "ship": self.ship, "ampere_plus": self.ampere_plus, "not_run": self.not_run,
                "ray_seconds": self.ray_seconds}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return d if isinstance(d, dict) else None


def _kind_rows(kind: str, verify: dict[str, Any], bench: dict[str, Any] | None, sizes: dict[str, dict]) -> list[dict]:
    """One row per artifact and batch: verify's verdict beside bench's timing of the same artifact on the same
    runtime (bench's `backend`, verify's `backend`: the registry's name)."""
    out = []
    timed: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for b in (bench or {}).get("rows", []):
        timed.setdefault((b.get("artifact", ""), b["backend"]), []).append(b)
    for r in verify.get("rows", []):
        m = r.get("metrics") or {}
        base = {"kind": kind, "artifact": r["artifact"], "precision": r["precision"], "runtime": r["runtime"],
                "verdict": "not run" if r.get("skipped") else "pass" if r.get("passed") else "fail",
                "why": r.get("skipped") or "; ".join(r.get("failures") or []),
                "top1_agreement": m.get("top1_agreement"), "engine": sizes.get(r["artifact"], {}).get("engine", False),
                "accuracy_delta": None if m.get("accuracy_drop") is None else 0.0 - m["accuracy_drop"] + 0.0,
                "size_mb": round(sizes.get(r["artifact"], {}).get("size", 0) / 2**20, 2),
                "build_s": sizes.get(r["artifact"], {}).get("build")}
        benches = [b for b in timed.get((r["artifact"], r.get("backend", "")), []) if b.get("latency_ms")] or [None]
        for b in benches:
            lat = (b or {}).get("latency_ms") or {}
            out.append({**base, "batch": (b or {}).get("batch"), "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
                        "img_s": (b or {}).get("stream_ips") or (b or {}).get("throughput_ips"),
                        "mem_mb": (b or {}).get("peak_mem_mb")})
    return out


def _parity(folder: Path, kinds: list[str], engines: set[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Per precision, per pair of kinds: top-1 agreement and rel. L2 between what each kind's artifact of that
    precision gave on the same inputs (the same Q/DQ graph may round differently on different GPUs); and the kinds
    whose logits could not be read, with why."""
    logits: dict[str, dict[str, np.ndarray]] = {}
    unreadable: dict[str, str] = {}
    for k in kinds:
        path = folder / "reports" / k / "fleet-logits.npz"
        try:
            with np.load(path) as z:
                logits[k] = {name: z[name] for name in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            unreadable[k] = f"{path.name} cannot be read ({type(e).__name__}: {str(e)[:120]})"
    out = []
    for a, b in combinations(sorted(logits), 2):
        for precision in (p.value for p in Precision):
            pick = {k: _preferred(logits[k], precision, engines) for k in (a, b)}
            if pick[a] is None or pick[b] is None:
                continue
            (na, xa), (nb, xb) = pick[a], pick[b]
            agreement, rel = logit_parity(xa, xb)
            out.append({"precision": precision, "kind_a": a, "artifact_a": na, "kind_b": b, "artifact_b": nb,
                        "top1_agreement": agreement, "rel_l2": rel})
    return out, unreadable


def _preferred(by_name: dict[str, np.ndarray], precision: str, engines: set[str]) -> tuple[str, np.ndarray] | None:
    """The kind's engine of that precision when one ran there, else its graph."""
    ran = sorted(n for n in by_name if n in engines and n.startswith(f"{precision}."))
    name = ran[0] if ran else precision if precision in by_name else None
    return (name, by_name[name]) if name else None


def _ship_line(kind: str, rows: list[dict[str, Any]], why: str) -> str:
    """What to ship on this kind: the fastest engine that passed verify there; else what was built but could not
    run there (no GPU on the node), and the fastest graph that passed."""
    mine = [r for r in rows if r["kind"] == kind]
    passing = [r for r in mine if r["verdict"] == "pass" and r.get("img_s")]
    engines = [r for r in passing if r["engine"]]
    best = max(engines or passing, key=lambda r: (r["batch"] or 0, r["img_s"]), default=None)
    unrun = sorted({r["artifact"] for r in mine if r["engine"] and r["verdict"] == "not run"})
    built = f"engines built for it, not run there ({next(r['why'] for r in mine if r['artifact'] in unrun)}): " \
            f"{', '.join(unrun)}; " if unrun and not engines else ""
    if best is None:
        return built + (f"nothing verified and timed ({why})" if why else "nothing verified and timed")
    what = "engine" if engines else "ONNX graph"
    return (f"{built}ship {best['artifact']} ({what}, {best['runtime']}): {best['img_s']:,.0f} img/s at batch "
            f"{best['batch']}, top-1 agreement {100 * (best['top1_agreement'] or 0):.2f}%")


def _kind_record(record: dict[str, Any]) -> dict[str, Any]:
    """The run that produced a kind's results: when, which resnetx, which node, what it ran, or why it failed."""
    node = record.get("node") or {}
    return {"when": record.get("when"), "resnetx": record.get("resnetx") or node.get("resnetx"),
            "node": node.get("node_id"), "host": node.get("host"), "gpu": node.get("gpu"), "cc": record.get("cc"),
            "flavor": record.get("flavor"), "runtimes": record.get("runtimes", []), "error": record.get("error"),
            "traceback": record.get("traceback")}


def merge_reports(folder: Path, plans: list[KindPlan], not_run: dict[str, str],
                  ray_seconds: dict[str, float] | None = None) -> FleetReport:
    """Every kind the folder has fleet results for (run now, or recorded by an earlier run), in the order of its
    reports; `not_run`: the kinds the last run was asked for and could not run."""
    folder = Path(folder)
    m = read_manifest(folder)
    sizes = {e.name: {"size": e.size_bytes, "build": e.seconds, "engine": e.form == "engine"} for e in m.entries()}
    records = {p.parent.name: r for p in sorted(folder.glob("reports/*/fleet.json")) if (r := _read(p)) is not None}
    rows: list[dict[str, Any]] = []
    for k, record in records.items():
        if record.get("error") is None:
            verify = _read(folder / "reports" / k / "verify.json") or {}
            rows += _kind_rows(k, verify, _read(folder / "reports" / k / "bench.json"), sizes)
    why = {p.kind: p.why for p in plans}
    ship = {k: (f"its task failed: {r['error']} (the node's traceback is in reports/{k}/fleet.json)"
                if r.get("error") else _ship_line(k, rows, why.get(k, ""))) for k, r in records.items()}
    ship.update({k: f"not run: {w}" for k, w in not_run.items() if k not in records})
    good = [k for k, r in records.items() if r.get("error") is None]
    parity, unreadable = _parity(folder, good, set(m.engines))
    return FleetReport(rows, parity, ship, {k: _kind_record(r) for k, r in records.items()}, _ampere_plus(rows),
                       dict(not_run), unreadable, dict(ray_seconds or {}))


def _ampere_plus(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where a kind timed both its native engine and an ampere+ one of a precision: what portability costs."""
    out = []
    for r in rows:
        if "ampere+" not in r["artifact"] or not r.get("p50_ms"):
            continue
        native = next((n for n in rows if n["kind"] == r["kind"] and n["precision"] == r["precision"]
                       and n["batch"] == r["batch"] and n.get("p50_ms") and "ampere+" not in n["artifact"]
                       and n["engine"]), None)
        if native:
            out.append({"kind": r["kind"], "precision": r["precision"], "batch": r["batch"],
                        "native_p50_ms": native["p50_ms"], "ampere_plus_p50_ms": r["p50_ms"],
                        "slowdown": r["p50_ms"] / native["p50_ms"]})
    return out


def fleet_markdown(rep: FleetReport) -> str:
    def f(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    lines = ["# resnetx fleet", "", "| kind | run | resnetx | node | result |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {r['when']} | {r['resnetx']} | {r['host']} ({(r['node'] or '')[:12]}) | "
              f"{'failed: ' + r['error'] if r['error'] else 'ok'} |" for k, r in rep.kinds.items()]
    lines += [f"| {k} | not run | | | {w} |" for k, w in rep.not_run.items() if k not in rep.kinds]
    lines += ["", "| kind | artifact | runtime | batch | verdict | top-1 agree | acc delta | p50 ms | p99 ms | img/s | "
              "mem MB | size MB | build s |", "|---" * 13 + "|"]
    for r in rep.rows:
        lines.append(f"| {r['kind']} | {r['artifact']} | {r['runtime']} | {f(r['batch'], 'd')} | {r['verdict']} | "
                     f"{f(None if r['top1_agreement'] is None else 100 * r['top1_agreement'], '.2f')} | "
                     f"{f(r['accuracy_delta'], '+.2f')} | {f(r['p50_ms'], '.3f')} | {f(r['p99_ms'], '.3f')} | "
                     f"{f(r['img_s'], ',.0f')} | {f(r['mem_mb'], '.0f')} | {f(r['size_mb'], '.2f')} | "
                     f"{f(r['build_s'], '.1f')} |")
    lines += ["", "## Parity between kinds (same inputs)", "", "| precision | kind | artifact | kind | artifact | "
              "top-1 agree | rel L2 |", "|---|---|---|---|---|---:|---:|"]
    lines += [f"| {p['precision']} | {p['kind_a']} | {p['artifact_a']} | {p['kind_b']} | {p['artifact_b']} | "
              f"{100 * p['top1_agreement']:.2f}% | {p['rel_l2']:.2e} |" for p in rep.parity]
    lines += [f"- {k}: left out of the parity matrix: {w}" for k, w in rep.unreadable.items()]
    if rep.ampere_plus:
        lines += ["", "## ampere+ against native engines", ""]
        lines += [f"- {a['kind']} {a['precision']} batch {a['batch']}: {a['ampere_plus_p50_ms']:.3f} ms vs "
                  f"{a['native_p50_ms']:.3f} ms ({a['slowdown']:.2f}x)" for a in rep.ampere_plus]
    lines += ["", "## What to ship", ""] + [f"- {k}: {v}" for k, v in rep.ship.items()]
    return "\n".join(lines) + "\n"


def _png(rep: FleetReport) -> bytes | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    timed = [r for r in rep.rows if r.get("img_s")]
    if not timed:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(timed) + 1.5))
    labels = [f"{r['kind']} {r['artifact']} b{r['batch']}" for r in timed]
    ax.barh(labels, [r["img_s"] for r in timed], color=["tab:green" if r["verdict"] == "pass" else "tab:red"
                                                         for r in timed])
    ax.set_xlabel("images/s (green: passed verify on that kind)")
    ax.invert_yaxis()
    return png_bytes(fig, dpi=100)


def write_fleet_files(folder: Path, rep: FleetReport) -> list[Path]:
    reports = Path(folder) / "reports"
    paths = [reports / "fleet.json", reports / "fleet.md"]
    atomic_write_text(paths[0], json.dumps(rep.to_dict(), indent=1) + "\n")
    atomic_write_text(paths[1], fleet_markdown(rep))
    if (png := _png(rep)) is not None:
        atomic_write(reports / "fleet.png", png)
        paths.append(reports / "fleet.png")
    return paths
