"""The files a check leaves in a folder: verify's report and the verdicts it adds (one writer, under the folder's
lock), bench's JSON, Markdown, CSV and plot."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.folder.manifest import export_lock, read_manifest
from pipeline.folder.verdicts import read_verdicts, write_verdicts
from resnetx.files import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from pipeline.check.results import BenchReport, BenchRow, VerifyReport

__all__ = ["fmt", "bench_order", "write_bench_files", "write_verify_json", "record_verify", "record_verify_unlocked",
           "bench_markdown", "png_bytes"]


def fmt(v: float | None, spec: str) -> str:
    """A number for a table or report cell: 'n/a' for None, 'inf'/'nan' as such, else formatted by `spec`."""
    if v is None:
        return "n/a"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec)


def bench_order(r: BenchRow) -> tuple[Any, ...]:
    """Bench rows by batch, then by p50 (rows not timed last)."""
    return (r.batch, r.latency_ms["p50"] if r.latency_ms else float("inf"))


_CSV_COLS = ("runtime", "backend", "mode", "precision", "device", "batch", "p50", "p90", "p95", "p99", "mean", "std",
             "cov", "round_spread", "throughput_ips", "stream_ips", "tflops", "peak_pct", "peak_mem_mb",
             "accuracy_top1", "size_mb", "load_s", "compile_s", "build_s", "transfers_included", "iters", "error")


def _flat(r: BenchRow) -> dict[str, Any]:
    d = {k: getattr(r, k) for k in _CSV_COLS if hasattr(r, k)}
    for k in ("p50", "p90", "p95", "p99", "mean", "std", "cov", "round_spread"):
        d[k] = r.latency_ms.get(k) if r.latency_ms else None
    return d


def bench_markdown(report: BenchReport) -> str:
    sys = report.system
    lines = [f"# resnetx bench: {report.folder}", "",
             f"- CPU: {sys.get('cpu')} ({sys.get('cores')} cores)",
             f"- GPU: {json.dumps(sys.get('gpu')) if sys.get('gpu') else 'none'}",
             f"- versions: {', '.join(f'{k} {v}' for k, v in sys.get('versions', {}).items())}",
             f"- accuracy data: {report.accuracy_data or 'n/a'}",
             f"- model: {fmt(report.gflops_per_image, '.3g')} GFLOP per image", "",
             "| batch | runtime | p50 ms | p90 ms | p99 ms | mean ms | CoV % | img/s | img/s stream | TFLOP/s | % peak "
             "| top-1 % | mem MB | size MB | compile/build s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(report.rows, key=bench_order):
        if r.latency_ms is None:
            lines.append(f"| {r.batch} | {r.runtime} | {r.error} | | | | | | | | | | | | |")
            continue
        lat = r.latency_ms
        lines.append(f"| {r.batch} | {r.runtime} | {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} | "
                     f"{lat['mean']:.3f} | {fmt(100 * lat.get('cov', 0.0), '.1f')} | {r.throughput_ips:.0f} | "
                     f"{fmt(r.stream_ips, '.0f')} | {fmt(r.tflops, '.3g')} | {fmt(r.peak_pct, '.1f')} | "
                     f"{fmt(r.accuracy_top1, '.2f')} | "
                     f"{fmt(r.peak_mem_mb, '.0f')} | {fmt(r.size_mb, '.2f')} | {fmt(r.one_time_s, '.1f')} |")
    lines += [""] + [f"- {n}" for n in report.notes]
    lines += [""] + [f"- recommended: {n}" for n in report.recommendations] if report.recommendations else []
    return "\n".join(lines) + "\n"


def _png(report: BenchReport) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in report.rows if r.latency_ms]
    if not ok:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name in sorted({r.runtime for r in ok}):
        rs = sorted((r for r in ok if r.runtime == name), key=lambda r: r.batch)
        b = [r.batch for r in rs]
        axes[0].plot(b, [r.latency_ms["p50"] for r in rs], marker="o", label=name)
        axes[1].plot(b, [r.throughput_ips for r in rs], marker="o", label=name)
        acc = [r for r in rs if r.accuracy_top1 is not None]
        if acc:
            axes[2].scatter([r.latency_ms["p50"] for r in acc], [r.accuracy_top1 for r in acc], label=name)
    if not any(r.accuracy_top1 is not None for r in ok):
        axes[2].text(0.5, 0.5, "accuracy n/a (no labelled data)", ha="center", va="center", transform=axes[2].transAxes)
    for ax, title, ylabel in ((axes[0], "p50 latency vs batch", "ms"), (axes[1], "throughput vs batch", "images/s"),
                              (axes[2], "accuracy vs p50 latency", "top-1 %")):
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("batch" if ax is not axes[2] else "p50 latency (ms)")
        ax.grid(alpha=0.3)
    axes[0].set_xscale("log", base=2)
    axes[1].set_xscale("log", base=2)
    axes[0].legend(fontsize=7)
    return png_bytes(fig, dpi=110)


def png_bytes(fig: Any, dpi: int) -> bytes:
    """A matplotlib figure as PNG bytes (laid out tight), the figure closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def write_bench_files(report: BenchReport, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        plot = False
        report.notes.append("bench.png not written: matplotlib is not installed (pip install matplotlib)")
    else:
        plot = True
    paths = [folder / "bench.json", folder / "bench.md", folder / "bench.csv"]
    atomic_write_text(paths[0], json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    atomic_write_text(paths[1], bench_markdown(report))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(_CSV_COLS))
    w.writeheader()
    for r in report.rows:
        w.writerow(_flat(r))
    atomic_write_text(paths[2], buf.getvalue())
    png = _png(report) if plot else None
    if png:
        atomic_write(folder / "bench.png", png)
        paths.append(folder / "bench.png")
    return paths


def record_verify(report: VerifyReport) -> Path | None:
    """The one writer of a verify's records: reports/<kind>/verify.json and the verdicts it adds to
    reports/verdicts.json, under the folder's lock (a verify and a fleet's landing never lose each other's records).
    Nothing is written when nothing ran (the last real verdict stays), nor when the verdicts on file cannot be read
    (BadInput: they are never rewritten by a command that could not read them)."""
    if report.report_path is None:
        return None
    with export_lock(report.folder):
        return record_verify_unlocked(report)


def record_verify_unlocked(report: VerifyReport) -> Path | None:
    """record_verify for a caller that holds the folder's lock already (a fleet landing a kind)."""
    if report.report_path is None:
        return None
    manifest = read_manifest(report.folder)
    old = read_verdicts(report.folder)  # a damaged record is refused here, before anything is written
    path = write_verify_json(report)
    write_verdicts(report.folder, [*old, *report.verdicts(manifest)])
    return path


def write_verify_json(report: VerifyReport) -> Path | None:
    """reports/<kind>/verify.json, unless nothing was verified (then the last real verdict stays)."""
    path = report.report_path
    if path is not None:
        atomic_write_text(path, json.dumps(report.to_dict(), indent=2, default=_json_value) + "\n")
    return path


def _json_value(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    raise TypeError(type(o))
