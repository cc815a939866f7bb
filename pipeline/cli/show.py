"""What the commands print: progress while the pipeline works, then its results (tables from pipeline/cli/tables.py,
notes, the verdict line), and the exit a result calls for. Nothing here writes a file or measures anything."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from pipeline.cli.app import console
from resnetx.errors import BackendUnavailable, BadInput, CheckFailed

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline.check.bench import BenchOptions, BenchReport
    from pipeline.check.verify import VerifyOptions, VerifyReport
    from pipeline.make.export import ExportOptions, ExportResult

__all__ = ["export", "verify", "bench", "run_line", "verdict", "notes", "lines", "status"]


@contextmanager
def status(text: str) -> Iterator[Any]:
    """A spinner with a line that says what is happening now."""
    with console().status(text) as s:
        yield s


def notes(items: list[str], prefix: str = "[yellow]note:[/] ") -> None:
    c = console()
    for n in items:
        c.print(f"{prefix}{escape(n)}", soft_wrap=True)


def lines(items: list[str]) -> None:
    """Lines already marked up (rich markup of the tables module)."""
    c = console()
    for line in items:
        c.print(line, soft_wrap=True)


# --------------------------------------------------------------------------- export
def export(opts: ExportOptions) -> ExportResult:
    from pipeline.cli.tables import export_table
    from pipeline.make.export import export as run_export

    c = console()
    with c.status("exporting...") as s:
        result = run_export(opts, on_step=lambda ev: s.update(f"{ev.step}: {ev.status} {ev.file or ''}"),
                            on_progress=s.update)
    if not opts.engines_only and not result.info.trained:
        notes([f"{result.info.arch} has random weights (no --weights): parity is meaningful, accuracy is not"])
    c.print(export_table(result))
    notes(result.notices)
    if result.missed:
        raise CheckFailed(result.missed)
    return result


# --------------------------------------------------------------------------- verify
def verify(opts: VerifyOptions) -> VerifyReport:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pipeline.check.verify import verify as run_verify

    c = console()
    with Progress(TextColumn("verify {task.description}"), BarColumn(), MofNCompleteColumn(), console=c,
                  transient=True) as bar:
        tasks: dict[str, Any] = {}

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        report = run_verify(opts, on_progress=on_progress)
    _verify_lines(report)
    return report


def _verify_lines(report: VerifyReport) -> None:
    """The table, reasons, localisation and notes, then the verdict line. A report that could not be written (a
    read-only folder) still leaves the verdict on screen, then exit 2."""
    from pipeline.cli.tables import localization_table, verify_reasons, verify_table
    from pipeline.folder.verdicts import VERDICTS

    c = console()
    c.print(verify_table(report, width=c.width))
    lines(verify_reasons(report))
    for r in report.rows:
        if r.localization is not None:
            c.print(localization_table(r.artifact, r.localization))
            measured = r.localization.suggestion_measured
            if r.localization.suggestion:  # one line however long: it is a command to copy
                c.print(f"try: {escape(r.localization.suggestion)}", soft_wrap=True)
                if measured:
                    c.print(f"     ({escape(measured)})", soft_wrap=True)
            elif measured:
                c.print(f"no try line: {escape(measured)}", soft_wrap=True)
        elif r.localization_error:
            c.print(f"[yellow]localisation of {r.artifact} failed:[/] {escape(r.localization_error)}")
    notes(report.notes)
    ref = "stored reference logits" if report.reference_stored else "reference computed now"
    word = "[green]PASS[/]" if report.passed else "[yellow]NOTHING RAN[/]" if report.nothing_ran else "[red]FAIL[/]"
    where = (f"report: {escape(str(report.report_path))}, verdicts: {escape(str(report.folder / VERDICTS))}"
             if report.report_path else "no report written (the folder's reports keep the last verdicts)")
    c.print(f"{word} in {report.seconds:.1f} s ({ref}); {where if report.unwritten is None else 'NOT WRITTEN'}",
            soft_wrap=True)
    if report.unwritten is not None:
        raise BadInput(f"the verify report {report.report_path} could not be written ({report.unwritten}); the "
                       f"verdict above is not recorded: make {report.folder / 'reports'} writable and verify again")


def verdict(verify_report: VerifyReport | None = None, bench_report: BenchReport | None = None) -> None:
    """Exit 3 when a command judged or timed nothing (every runtime it tried was missing or failed), 1 when a
    verify failed."""
    if verify_report is not None and verify_report.nothing_ran:
        raise BackendUnavailable(f"nothing was verified: {verify_report.rows[0].skipped}")
    if bench_report is not None and bench_report.nothing_ran:
        raise BackendUnavailable(f"nothing was benchmarked: {bench_report.rows[0].error}")
    if verify_report is not None and not verify_report.passed:
        failed = [r.artifact for r in verify_report.rows if not r.passed and r.skipped is None]
        raise CheckFailed(f"verify failed for {', '.join(failed)}: see the table and reasons above")


# --------------------------------------------------------------------------- bench
def bench(opts: BenchOptions, compare: Path | None = None) -> BenchReport:
    from pipeline.check.bench import bench as run_bench
    from pipeline.check.bench import compare_reports
    from pipeline.cli.tables import bench_not_run, bench_table, compare_table

    c = console()
    with c.status("benchmarking...") as s:
        def on_row(row: Any) -> None:
            s.update(f"{row.runtime} batch {row.batch}: "
                     + (f"{row.latency_ms['p50']:.3f} ms" if row.latency_ms else escape(row.error or "")))

        report = run_bench(opts, on_row=on_row, on_progress=lambda text: s.update(escape(text)))
    c.print(bench_table(report, width=c.width))
    lines(bench_not_run(report))
    notes(report.notes)
    notes(report.recommendations, "[bold]recommended:[/] ")
    if report.nothing_ran:
        c.print("[yellow]NOTHING RAN[/]: no report written (reports/<kind>/bench.* keep the last run)")
        return report
    if compare is not None:
        ratios = compare_reports(report, compare)
        c.print(compare_table(ratios, compare) if ratios else
                f"[yellow]--compare:[/] no timed row of {escape(str(compare))} has this run's runtime, "
                "precision, device and batch size")
    if report.unwritten is not None:
        raise BadInput(f"the bench report could not be written to {report.reports} ({report.unwritten}): make it "
                       "writable and bench again")
    c.print(f"reports: {escape(str(report.reports))}/bench.{{json,md,csv,png}}")
    return report


def run_line(exp: ExportOptions, report: VerifyReport, bench_report: BenchReport) -> None:
    """`resnetx run`'s last line: the whole job's verdict."""
    timed = sum(r.latency_ms is not None for r in bench_report.rows)
    word = "[green]PASS[/]" if report.passed and timed else "[red]FAIL[/]" if not report.passed else \
        "[yellow]NOTHING TIMED[/]"
    acc = f"; bench's accuracy column on {escape(bench_report.accuracy_data)}" if bench_report.accuracy_data else ""
    console().print(f"resnetx run: {word}: exported to {escape(str(exp.out))}; verify "
                    f"{'passed' if report.passed else 'FAILED'} on {report.samples} inputs of {escape(report.data)}"
                    f"{acc}; {timed} of {len(bench_report.rows)} bench rows timed", soft_wrap=True)
