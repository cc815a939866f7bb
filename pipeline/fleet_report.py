"""The fleet's merged report: rows kind x artifact x batch, the cross-kind parity matrix, the cost of ampere+ engines,
and one line per kind saying what to ship (reports/fleet.{json,md,png}), read back from every kind's reports."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.report import png_bytes
from resnetx.files import atomic_write, atomic_write_text
from resnetx.parity import logit_parity

if TYPE_CHECKING:
    from rich.table import Table

    from pipeline.fleet import FleetRun, KindPlan

__all__ = ["FleetReport", "merge_reports", "write_fleet_files", "plan_table", "fleet_table"]


@dataclass
class FleetReport:
    rows: list[dict[str, Any]]  # kind, artifact, precision, runtime, batch, verdict, agreement, delta, latency ...
    parity: list[dict[str, Any]]  # precision, kind_a, kind_b, top1_agreement, rel_l2
    ship: dict[str, str]  # kind -> what to ship there, in words
    ampere_plus: list[dict[str, Any]] = field(default_factory=list)  # kind, precision, p50 native vs ampere+
    not_run: dict[str, str] = field(default_factory=dict)
    ray_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "parity": self.parity, "ship": self.ship, "ampere_plus": self.ampere_plus,
                "not_run": self.not_run, "ray_seconds": self.ray_seconds}


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _kind_rows(kind: str, verify: dict[str, Any], bench: dict[str, Any] | None, sizes: dict[str, dict]) -> list[dict]:
    """One row per artifact and batch: verify's verdict beside bench's timing of the same artifact."""
    out = []
    timed = {(b["precision"], b["backend"]): [] for b in (bench or {}).get("rows", [])}
    for b in (bench or {}).get("rows", []):
        timed[(b["precision"], b["backend"])].append(b)
    for r in verify.get("rows", []):
        m = r.get("metrics") or {}
        backend = "trt" if r["artifact"] in sizes and sizes[r["artifact"]].get("engine") else "ort"
        base = {"kind": kind, "artifact": r["artifact"], "precision": r["precision"], "runtime": r["runtime"],
                "verdict": "not run" if r.get("skipped") else "pass" if r.get("passed") else "fail",
                "why": r.get("skipped") or "; ".join(r.get("failures") or []),
                "top1_agreement": m.get("top1_agreement"),
                "accuracy_delta": None if m.get("accuracy_drop") is None else 0.0 - m["accuracy_drop"] + 0.0,
                "size_mb": round(sizes.get(r["artifact"], {}).get("size", 0) / 2**20, 2),
                "build_s": sizes.get(r["artifact"], {}).get("build")}
        benches = [b for b in timed.get((r["precision"], backend), []) if b.get("latency_ms")] or [None]
        for b in benches:
            lat = (b or {}).get("latency_ms") or {}
            out.append({**base, "batch": (b or {}).get("batch"), "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
                        "img_s": (b or {}).get("stream_ips") or (b or {}).get("throughput_ips"),
                        "mem_mb": (b or {}).get("peak_mem_mb")})
    return out


def _parity(folder: Path, kinds: list[str]) -> list[dict[str, Any]]:
    """Per precision, per pair of kinds: top-1 agreement and rel. L2 between what each kind's artifact of that
    precision gave on the same inputs (the same Q/DQ graph may round differently on different GPUs)."""
    logits: dict[str, dict[str, np.ndarray]] = {}
    for k in kinds:
        try:
            with np.load(folder / "reports" / k / "fleet-logits.npz") as z:
                logits[k] = {name: z[name] for name in z.files}
        except (OSError, ValueError):
            continue
    out = []
    for a, b in combinations(sorted(logits), 2):
        for precision in ("fp32", "fp16", "int8"):
            pick = {k: _preferred(logits[k], precision) for k in (a, b)}
            if pick[a] is None or pick[b] is None:
                continue
            (na, xa), (nb, xb) = pick[a], pick[b]
            agreement, rel = logit_parity(xa, xb)
            out.append({"precision": precision, "kind_a": a, "artifact_a": na, "kind_b": b, "artifact_b": nb,
                        "top1_agreement": agreement, "rel_l2": rel})
    return out


def _preferred(by_name: dict[str, np.ndarray], precision: str) -> tuple[str, np.ndarray] | None:
    """The kind's engine of that precision when one ran there, else its graph."""
    engines = sorted(n for n in by_name if n.startswith(f"{precision}.") and "torch" not in n)
    name = engines[0] if engines else precision if precision in by_name else None
    return (name, by_name[name]) if name else None


def _ship_line(kind: str, rows: list[dict[str, Any]], plan_why: str) -> str:
    """What to ship on this kind: the fastest engine that passed verify there; else what was built but could not
    run there (no GPU on the node), and the fastest graph that passed."""
    mine = [r for r in rows if r["kind"] == kind]
    passing = [r for r in mine if r["verdict"] == "pass" and r.get("img_s")]
    engines = [r for r in passing if "." in r["artifact"]]
    best = max(engines or passing, key=lambda r: (r["batch"] or 0, r["img_s"]), default=None)
    unrun = sorted({r["artifact"] for r in mine if "." in r["artifact"] and r["verdict"] == "not run"})
    built = f"engines built for it, not run there ({next(r['why'] for r in mine if r['artifact'] in unrun)}): " \
            f"{', '.join(unrun)}; " if unrun and not engines else ""
    if best is None:
        return built + (f"nothing verified and timed ({plan_why})" if plan_why else "nothing verified and timed")
    what = "engine" if engines else "ONNX graph"
    return (f"{built}ship {best['artifact']} ({what}, {best['runtime']}): {best['img_s']:,.0f} img/s at batch "
            f"{best['batch']}, top-1 agreement {100 * (best['top1_agreement'] or 0):.2f}%")


def merge_reports(run: FleetRun) -> FleetReport:
    """Every kind the folder has fleet reports for (run now, or recorded by an earlier run)."""
    from pipeline.artifacts import read_manifest

    folder = Path(run.folder)
    m = read_manifest(folder)
    sizes = {e.name: {"size": e.size_bytes, "build": e.seconds, "engine": e.kind == "engine"}
             for e in m.entries()}
    kinds = [p.kind for p in run.plans if (folder / "reports" / p.kind / "fleet.json").is_file()]
    rows: list[dict[str, Any]] = []
    for k in kinds:
        verify = _read(folder / "reports" / k / "verify.json") or {}
        rows += _kind_rows(k, verify, _read(folder / "reports" / k / "bench.json"), sizes)
    why = {p.kind: p.why for p in run.plans}
    ship = {k: _ship_line(k, rows, why.get(k, "")) for k in kinds}
    ship.update({k: f"not run: {w}" for k, w in run.not_run.items()})
    return FleetReport(rows, _parity(folder, kinds), ship, _ampere_plus(rows), dict(run.not_run),
                       dict(run.ray_seconds))


def _ampere_plus(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where a kind timed both its native engine and an ampere+ one of a precision: what portability costs."""
    out = []
    for r in rows:
        if "ampere+" not in r["artifact"] or not r.get("p50_ms"):
            continue
        native = next((n for n in rows if n["kind"] == r["kind"] and n["precision"] == r["precision"]
                       and n["batch"] == r["batch"] and n.get("p50_ms") and "ampere+" not in n["artifact"]
                       and "." in n["artifact"]), None)
        if native:
            out.append({"kind": r["kind"], "precision": r["precision"], "batch": r["batch"],
                        "native_p50_ms": native["p50_ms"], "ampere_plus_p50_ms": r["p50_ms"],
                        "slowdown": r["p50_ms"] / native["p50_ms"]})
    return out


def fleet_markdown(rep: FleetReport) -> str:
    lines = ["# resnetx fleet", "", "| kind | artifact | runtime | batch | verdict | top-1 agree | acc delta | "
             "p50 ms | p99 ms | img/s | mem MB | size MB | build s |", "|---" * 13 + "|"]
    for r in rep.rows:
        def f(v: Any, fmt: str) -> str:
            return "" if v is None else format(v, fmt)
        lines.append(f"| {r['kind']} | {r['artifact']} | {r['runtime']} | {f(r['batch'], 'd')} | {r['verdict']} | "
                     f"{f(None if r['top1_agreement'] is None else 100 * r['top1_agreement'], '.2f')} | "
                     f"{f(r['accuracy_delta'], '+.2f')} | {f(r['p50_ms'], '.3f')} | {f(r['p99_ms'], '.3f')} | "
                     f"{f(r['img_s'], ',.0f')} | {f(r['mem_mb'], '.0f')} | {f(r['size_mb'], '.2f')} | "
                     f"{f(r['build_s'], '.1f')} |")
    lines += ["", "## Parity between kinds (same inputs)", "", "| precision | kind | artifact | kind | artifact | "
              "top-1 agree | rel L2 |", "|---|---|---|---|---|---:|---:|"]
    lines += [f"| {p['precision']} | {p['kind_a']} | {p['artifact_a']} | {p['kind_b']} | {p['artifact_b']} | "
              f"{100 * p['top1_agreement']:.2f}% | {p['rel_l2']:.2e} |" for p in rep.parity]
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


def plan_table(plans: list[KindPlan]) -> Table:
    """resnetx fleet --plan: each kind's nodes, GPU, compute capability, backends, and what builds where and why."""
    from rich.table import Table

    t = Table(title="resnetx fleet plan", title_justify="left")
    for c in ("kind", "nodes", "GPU", "compute", "resnetx", "backends", "engines", "why"):
        t.add_column(c)
    for p in plans:
        n = p.nodes[0] if p.nodes else None
        backends = ", ".join(n.backends) if n else ""
        cc = f"{p.cc} ({p.cc_from})" if p.cc else "-"
        engines = p.flavor or ("none" if p.runnable else "[red]not run[/]")
        t.add_row(p.kind, str(len(p.nodes)), (n.gpu if n else None) or "none", cc, n.resnetx if n else "",
                  backends, engines, p.why)
    return t


def fleet_table(rep: FleetReport) -> Table:
    from rich.table import Table

    t = Table(title="resnetx fleet", title_justify="left")
    for c in ("kind", "artifact", "runtime", "batch", "verdict", "top-1 agree", "p50 ms", "img/s", "size MB"):
        t.add_column(c, justify="left" if c in ("kind", "artifact", "runtime", "verdict") else "right")
    colour = {"pass": "green", "fail": "red", "not run": "yellow"}
    for r in rep.rows:
        agree = "" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.2f}%"
        t.add_row(r["kind"], r["artifact"], r["runtime"], "" if r["batch"] is None else str(r["batch"]),
                  f"[{colour[r['verdict']]}]{r['verdict']}[/]", agree,
                  "" if r["p50_ms"] is None else f"{r['p50_ms']:.3f}",
                  "" if r["img_s"] is None else f"{r['img_s']:,.0f}", f"{r['size_mb']:.2f}")
    return t
