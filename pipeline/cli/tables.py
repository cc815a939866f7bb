"""Terminal tables and lines for every command: export, verify, bench, info, triton, fleet (rich renderables; the
commands print them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.check.records import bench_order, fmt
from pipeline.precisions import Precision

if TYPE_CHECKING:
    from rich.table import Table

    from pipeline.check.bench import BenchReport
    from pipeline.check.localize import Localization
    from pipeline.check.verify import VerifyReport, VerifyRow
    from pipeline.folder.audit import FolderAudit
    from pipeline.folder.manifest import EngineEntry
    from pipeline.handoff.triton import TritonResult
    from pipeline.make.export import ExportResult

__all__ = ["export_table", "verify_table", "verify_reasons", "localization_table", "folder_table", "folder_notes",
           "triton_table", "engine_target", "bench_table", "bench_not_run", "compare_table"]


def _mb(n: float | None) -> str:
    return "" if n is None else f"{n / 2**20:.2f} MB"


def _esc(text: object) -> str:
    """Free text (paths, error messages, pip extras like resnetx[gpu]) shown literally, not as rich markup."""
    from rich.markup import escape

    return escape(str(text))


def export_table(result: ExportResult) -> Table:
    from rich.table import Table

    t = Table(title=f"resnetx export -> {_esc(result.folder)}", title_justify="left")
    for c in ("step", "status", "file", "size", "seconds", "note"):
        t.add_column(c, justify="right" if c in ("size", "seconds") else "left")
    precisions = [p.value for p in Precision]  # the manifest's order too

    def order(e: Any) -> tuple[bool, bool, int]:  # graphs, then engines, by precision; the reference last
        last = e.step.split()[-1]
        return e.step == "reference", e.step.startswith("engine"), precisions.index(last) if last in precisions else 9

    for e in sorted(result.events, key=order):  # kept rows come after the builds, but read in artifact order
        t.add_row(e.step, e.status, _esc(e.file or ""), _mb(e.size_bytes),
                  f"{e.seconds:.2f}" if e.status == "built" else "", _esc(e.note))
    return t


# verify's columns, least needed first: a narrow terminal loses them in this order (all are in verify.json)
_VERIFY_DROP_ORDER = ("mean abs", "acc ref top-1/5", "acc top-1/5", "top-5 overlap", "min cos", "max abs", "NaN/Inf",
                      "acc ref")


def verify_table(report: VerifyReport, width: int | None = None) -> Table:
    """One row per artifact, verdict beside the name. Every cell keeps its whole value: where `width` (the
    terminal's) cannot hold them all, the least needed columns go, in _VERIFY_DROP_ORDER (top-1/5 accuracy
    falls back to top-1), rather than numbers being cut."""

    def cells(r: VerifyRow) -> dict[str, str]:
        m = r.metrics
        verdict = "[yellow]skipped[/]" if r.skipped else "[green]pass[/]" if r.passed else "[red]FAIL[/]"
        out = {"artifact": _esc(r.artifact), "runtime": _esc(r.runtime), "verdict": verdict}
        if r.skipped or m is None:
            return out
        drop = m.accuracy_drop
        return out | {
            "max abs": fmt(m.max_abs, ".2e"), "mean abs": fmt(m.mean_abs, ".2e"), "rel L2": fmt(m.rel_l2, ".2e"),
            "min cos": fmt(m.min_cosine, ".6f"), "top-1 agree": f"{100 * m.top1_agreement:.2f}%",
            "top-5 overlap": f"{100 * m.top5_overlap:.2f}%", "NaN/Inf": str(m.nonfinite),
            "acc ref top-1/5": _acc(m.ref_top1, m.ref_top5), "acc top-1/5": _acc(m.top1, m.top5),
            "acc ref": _acc(m.ref_top1, None), "acc": _acc(m.top1, None),
            "delta": fmt(None if drop is None else -drop + 0.0, "+.2f"),  # + 0.0: no "-0.00"
        }

    cols = ["artifact", "runtime", "verdict", "max abs", "mean abs", "rel L2", "min cos", "top-1 agree",
            "top-5 overlap", "NaN/Inf", "acc ref top-1/5", "acc top-1/5", "delta"]
    drawn = f" ({_esc(report.drawn)}, + the extreme ones)" if report.drawn else ""
    what = "" if report.output == "logits" else f" (outputs: {report.output})"
    return _fitted_table(f"resnetx verify: {report.samples} inputs from {_esc(report.data)}{drawn} vs "
                         f"{report.reference}{what}",
                         cols, [cells(r) for r in report.rows], width, _VERIFY_DROP_ORDER,
                         {"acc ref top-1/5": "acc ref", "acc top-1/5": "acc"}, left=("artifact", "runtime", "verdict"))


def _fitted_table(title: str, cols: list[str], rows: list[dict[str, str]], width: int | None,
                  drop_order: tuple[str, ...], fallback: dict[str, str], left: tuple[str, ...]) -> Table:
    """A table whose cells keep their whole values: while it is wider than `width` (the terminal's), columns go
    in `drop_order` (or give way to their shorter `fallback`); a cell is never cut to "1.19…"."""
    from rich.table import Table
    from rich.text import Text

    def need(c: str) -> int:  # the column's natural width: its widest cell or its header (rich crops, not wraps)
        return max([len(c), *(len(Text.from_markup(row.get(c, "")).plain) for row in rows)])

    cols = list(cols)
    for c in drop_order:
        if width is None or sum(need(k) + 3 for k in cols) + 1 <= width:
            break
        if c in cols:
            i = cols.index(c)
            cols[i : i + 1] = [fallback[c]] if c in fallback else []
    t = Table(title=title, title_justify="left")
    for c in cols:
        t.add_column(c, justify="left" if c in left else "right", min_width=need(c))
    for row in rows:
        t.add_row(*(row.get(c, "") for c in cols))
    return t


def verify_reasons(report: VerifyReport) -> list[str]:
    """Why each row failed or was skipped, one line per row (below the table)."""
    out = []
    for r in report.rows:
        if r.skipped:
            out.append(f"[yellow]skipped[/] {_esc(r.artifact)} ({_esc(r.runtime)}): {_esc(r.skipped)}")
        elif not r.passed:
            out.append(f"[red]FAIL[/] {_esc(r.artifact)} ({_esc(r.runtime)}): {_esc('; '.join(r.failures))}")
    if report.output == "probabilities":
        out.append("the model outputs probabilities (a softmax head): fp16 and int8 rows are judged on top-1 "
                   "agreement and the accuracy drop; their rel. L2 is of probabilities, shown, not judged (a saturated "
                   "softmax hides error from it; export with --strip-softmax to compare logits)")
    elif any(r.precision == "int8" and r.metrics is not None for r in report.rows):
        out.append("int8 rows are judged by top-1 agreement and accuracy drop only: rounding to 8 bits moves every "
                   "logit, so max abs, rel L2 and min cos are shown, not judged")
    return out


def _acc(top1: float | None, top5: float | None) -> str:
    return "n/a" if top1 is None else f"{top1:.2f}" + ("" if top5 is None else f" / {top5:.2f}")


def localization_table(artifact: str, loc: Localization, limit: int = 12) -> Any:
    """The error-by-depth table between its heading and the first divergent layer, as lines of their own: in
    the table's title they wrapped at its (narrow) width. The suggested command is the caller's to print
    unwrapped (soft_wrap), so that it can be copied whole."""
    from rich.console import Group
    from rich.table import Table

    first, jump = loc.first_divergent_layer, loc.largest_jump_layer
    head = f"{artifact}: error by depth vs {_esc(loc.baseline)} (layer bar rel. L2 {loc.layer_tolerance})"
    foot = f"first divergent layer: {first or 'none'}   largest jump: {jump or 'none'}"
    if loc.revert_first:
        foot += f"   reverting recovers most: {', '.join(loc.revert_first)}"
    t = Table()
    t.add_column("layer")
    t.add_column("op")
    t.add_column("rel L2", justify="right")
    rows = loc.by_depth
    keep = {0, len(rows) - 1} | {i for i, r in enumerate(rows) if r.layer in (first, jump)}
    keep |= set(range(0, len(rows), max(1, len(rows) // limit)))
    for i, r in enumerate(rows):
        if i in keep:
            mark = " <" if r.layer in (first, jump) else ""
            t.add_row(r.layer + mark, r.op, fmt(r.rel_l2, ".2e"))
    return Group(head, t, foot)


def folder_table(audit: FolderAudit) -> Table:
    """resnetx info DIR: provenance of an artifact folder, every file checked against the manifest."""
    from rich.table import Table

    section = audit.manifest.model
    m = section.info
    t = Table(title=f"{_esc(audit.folder)}: {m.arch}, {m.num_classes} classes, input "
              f"{m.in_chans}x{m.image_size}x{m.image_size}, weights {_esc(m.weights or 'random init')} "
              f"(state sha256 {section.state_sha256[:12]}), exported {audit.manifest.created}", title_justify="left")
    for c in ("artifact", "file", "precision", "size MB", "sha256", "made from", "file check"):
        t.add_column(c, justify="right" if c == "size MB" else "left")
    colour = {"ok": "green", "changed": "red", "missing": "red"}
    for r in audit.rows:
        e = r.entry
        t.add_row(e.name, _esc(e.file), e.precision.value, fmt(e.size_bytes / 2**20, ".2f"), e.sha256[:12],
                  _esc(r.source), f"[{colour[r.status]}]{r.status}[/]")
    return t



def triton_table(result: TritonResult) -> Table:
    """resnetx triton: each model written, what Triton batches it to, where it runs, what verify said."""
    from rich.table import Table

    t = Table(title=f"resnetx triton -> {_esc(result.repo)}", title_justify="left")
    for c in ("model", "platform", "max batch", "input", "instances", "files", "verify"):
        t.add_column(c, justify="right" if c == "max batch" else "left")
    for x in result.models:
        batch = str(x.max_batch_size) if x.max_batch_size else f"0 (fixed {x.fixed_batch})"
        i = x.inputs[0]
        gpus = f" for {', '.join(x.cc_model_filenames)}" if x.cc_model_filenames else ""
        t.add_row(x.name, x.platform, batch, f"{i.name} {i.data_type[5:].lower()} {list(x.dims(i))}",
                  f"{x.instances} {x.kind[5:].lower()}", _esc(", ".join(e.file for e in x.entries)) + gpus,
                  _esc(x.verdict))
    return t


def engine_target(e: EngineEntry) -> str:
    """Where an engine runs: the TensorRT flavour and version it needs, its GPUs, its batch profile."""
    from resnetx.flavors import FLAVORS

    compat = {"none": f"{e.gpu_kind or e.gpu or 'its'} GPUs only", "same-cc": "any GPU of that compute capability",
              "ampere+": "any compute 8.0+ GPU"}[e.hardware_compat.value]
    gpus = ", ".join(e.compute_capabilities) or (
        f"built on {e.gpu or 'a GPU'} (compute {e.compute_capability or 'unknown'}, driver {e.driver or 'unknown'}) "
        f"for {compat}")
    lo, opt, hi = e.profile
    counts = e.network.note(e.precision.value) if e.network else "network precision not recorded"
    return f"{FLAVORS[e.flavor].name} {e.trt_version}, {gpus}, batch {lo}..{hi} (opt {opt}), {counts}"


def folder_notes(audit: FolderAudit) -> list[str]:
    """The lines under the folder table: calibration, version drift, references, verdicts, stale files."""
    from pipeline.folder.manifest import EngineEntry

    lines: list[str] = []
    m = audit.manifest
    if c := m.calibration:
        lines.append(f"int8 calibration: {c.images or c.samples} images of {_esc(c.dataset)} ({c.split}), {c.method}, "
                     f"{c.recipe} recipe, seed {c.seed}")
    int8 = m.graphs.get(Precision.int8)
    if int8 is not None and (chk := int8.check):
        lines.append(f"int8 vs fp32 right after quantization: top-1 agreement {100 * chk.top1_agree:.1f}% on "
                     f"{chk.samples} calibration-set images, rel. L2 {chk.rel_l2:.2e}")
    if int8 is not None and (s := int8.search):
        t = s.result
        kept = f"{len(t.reverted)} kept out of int8 (fallback {t.fallback}): {', '.join(t.reverted)}" \
            if t.reverted else "none kept out of int8"
        margin = f" + margin {t.margin:.2f} ({s.margin_rule})" if s.margin_rule else ""
        lines.append(f"int8 search: budget {s.budget:g} points on {s.data}; drop {t.drop:.2f}{margin} "
                     f"({'met' if s.met else '[red]MISSED[/]'}); {_esc(kept)}; {len(s.trials)} trial(s) and "
                     f"{s.estimates} estimate(s), {s.took}")
    if audit.static_batch:
        lines.append(f"fixed batch {audit.static_batch}: every graph and engine runs exactly that many images at "
                     "a time (exported with --static-batch)")
    for k, (then, now) in audit.version_drift.items():
        lines.append(f"[yellow]{k} {then} at export, {now or 'not installed'} now[/]: "
                     "a re-export rebuilds what it shapes")
    lines += [_esc(f"{e.file}: {engine_target(e)}") for e in m.entries() if isinstance(e, EngineEntry)]
    refs = audit.references
    lines.append(f"stored reference logits: {_esc(', '.join(refs))}" if refs else "no stored reference logits")
    lines += _verdict_lines(audit) + _target_lines(audit)
    if audit.stale:
        lines.append(f"[yellow]stale files (made by an earlier export, listed by no manifest entry):[/] "
                     f"{_esc(', '.join(audit.stale))}")
    if not audit.intact:
        lines.append("[red]files differ from the manifest: their provenance is unknown; "
                     "re-run resnetx export --force[/]")
    else:
        lines.append("serve it: resnetx triton (a Triton model repository) or resnetx deepstream (an nvinfer config, "
                     "with what its preprocessing costs); both need a passing verify")
    return lines


def _target_lines(audit: FolderAudit) -> list[str]:
    """One line per machine kind a fleet (or a verify there) reported on: its engines and how its checks went."""
    lines = []
    for k in audit.kinds:
        how = f"compute {k.cc}, {k.flavor or 'no engines'}" if k.cc else "no engines"
        engines = f"engines {', '.join(k.engines)}; " if k.engines else ""
        failed = f"; its last fleet task failed: {_esc(k.error)}" if k.error else ""
        lines.append(f"target {_esc(k.kind)} ({how}): {engines}verify {k.passed} pass, {k.failed} fail, {k.not_run} "
                     f"not run on {k.samples} {_esc(k.data)} inputs{failed}")
    return lines


def _verdict_lines(audit: FolderAudit) -> list[str]:
    """Each artifact's standing verdict and what it was measured on; those never verified."""
    if not audit.verdicts:
        return ["not verified yet: resnetx verify " + _esc(audit.folder)]
    lines = [f"{name}: {'[green]PASS[/]' if st.passed else '[red]FAIL[/]'} ({_esc(st.words)})"
             for name, st in audit.verdicts.items()]
    if unjudged := [e.name for e in audit.manifest.entries() if e.name not in audit.verdicts]:
        lines.append(f"not verified: {', '.join(unjudged)}")
    return ["standing verdicts (the latest on the most representative data each was verified on):", *lines]


# bench's columns, least needed first: a narrow terminal loses them in this order (all are in bench.json/md/csv)
_BENCH_DROP_ORDER = ("p90 ms", "load s", "size MB", "mean ms", "TFLOP/s", "CoV %", "mem MB", "p99 ms")


def bench_table(report: BenchReport, width: int | None = None) -> Table:
    sys = report.system
    gpu = sys.get("gpu") or {}
    title = f"resnetx bench: {sys.get('cpu')} ({sys.get('cores')} cores)" + (f", {gpu.get('name')}" if gpu else "")
    if report.accuracy_data:
        title += f"; accuracy on {_esc(report.accuracy_data)}"
    if report.gflops_per_image:
        title += f"; {report.gflops_per_image:.3g} GFLOP/image"
    cols = ["batch", "runtime", "p50 ms", "p90 ms", "p99 ms", "mean ms", "CoV %", "img/s", "TFLOP/s", "top-1 %",
            "mem MB", "size MB", "load s"]
    if any(r.stream_ips is not None for r in report.rows):
        cols.insert(cols.index("img/s") + 1, "img/s stream")  # batches back to back, one sync per window
    if any(r.peak_pct is not None for r in report.rows):
        cols.insert(8, "% peak")
    if any(r.one_time_s is not None for r in report.rows):
        cols.append("compile/build s")  # paid once, never inside the latency
    rows = []
    for r in sorted(report.rows, key=bench_order):
        row = {"batch": str(r.batch or ""), "runtime": _esc(r.runtime)}
        if r.latency_ms is None:
            rows.append(row | {"p50 ms": "[yellow]not run[/]"})
            continue
        lat = r.latency_ms
        rows.append(row | {
            "p50 ms": f"{lat['p50']:.3f}", "p90 ms": f"{lat['p90']:.3f}", "p99 ms": f"{lat['p99']:.3f}",
            "mean ms": f"{lat['mean']:.3f}", "CoV %": fmt(100 * lat.get("cov", 0.0), ".1f"),
            "img/s": f"{r.throughput_ips:,.0f}", "img/s stream": fmt(r.stream_ips, ",.0f"),
            "TFLOP/s": fmt(r.tflops, ".3g"),
            "% peak": fmt(r.peak_pct, ".1f"), "top-1 %": fmt(r.accuracy_top1, ".2f"),
            "mem MB": fmt(r.peak_mem_mb, ".0f"), "size MB": fmt(r.size_mb, ".2f"), "load s": fmt(r.load_s, ".2f"),
            "compile/build s": fmt(r.one_time_s, ".1f"),
        })
    return _fitted_table(title, cols, rows, width, _BENCH_DROP_ORDER, {}, left=("runtime",))


def bench_not_run(report: BenchReport) -> list[str]:
    """Why rows were not timed, one line per reason, naming the runtimes it hit (below the table)."""
    by_reason: dict[str, list[str]] = {}
    for r in report.rows:
        if r.latency_ms is None and r.error:
            name = f"{r.runtime} batch {r.batch}" if r.batch else r.runtime
            by_reason.setdefault(r.error, []).append(name)
    return [f"[yellow]not run[/]: {_esc(', '.join(names))}: {_esc(reason)}" for reason, names in by_reason.items()]


def compare_table(rows: list[dict[str, Any]], other: Path) -> Table:
    from rich.table import Table

    t = Table(title=f"against {_esc(other)} (speedup > 1: faster now)", title_justify="left")
    for c in ("runtime", "batch", "p50 ms", "was ms", "speedup", "throughput x"):
        t.add_column(c, justify="left" if c == "runtime" else "right")
    for r in rows:
        t.add_row(r["runtime"], str(r["batch"]), f"{r['p50_ms']:.3f}", f"{r['other_p50_ms']:.3f}",
                  f"{r['speedup']:.2f}x", f"{r['throughput_ratio']:.2f}x")
    return t




def machine_table(facts: list[tuple[str, str]]) -> Table:
    """resnetx info: what this machine has."""
    from rich.table import Table

    t = Table(title="resnetx info", title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value")
    for k, v in facts:
        t.add_row(_esc(k), _esc(v))
    return t


def plan_table(plans: list[Any]) -> Table:
    """resnetx fleet --plan: each kind's nodes, GPU, compute capability, backends, and what builds where and why."""
    from rich.table import Table

    t = Table(title="resnetx fleet plan", title_justify="left")
    for c in ("kind", "nodes", "GPU", "compute", "resnetx", "runtimes", "engines", "why"):
        t.add_column(c)
    for p in plans:
        n = p.nodes[0] if p.nodes else None
        runtimes = ", ".join(f"{name} ({'/'.join(devs)})" for name, devs in n.runtimes) if n else ""
        cc = f"{p.cc} ({p.cc_from})" if p.cc else "-"
        engines = p.flavor.value if p.flavor else ("none" if p.runnable else "[red]not run[/]")
        t.add_row(_esc(p.kind), str(len(p.nodes)), _esc((n.gpu if n else None) or "none"), cc,
                  _esc(n.resnetx if n else ""), _esc(runtimes), engines, _esc(p.why))
    return t


def fleet_table(rep: Any) -> Table:
    from rich.table import Table

    t = Table(title="resnetx fleet", title_justify="left")
    for c in ("kind", "artifact", "runtime", "batch", "verdict", "top-1 agree", "p50 ms", "img/s", "size MB"):
        t.add_column(c, justify="left" if c in ("kind", "artifact", "runtime", "verdict") else "right")
    colour = {"pass": "green", "fail": "red", "not run": "yellow"}
    for r in rep.rows:
        agree = "" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.2f}%"
        t.add_row(_esc(r["kind"]), _esc(r["artifact"]), _esc(r["runtime"]),
                  "" if r["batch"] is None else str(r["batch"]), f"[{colour[r['verdict']]}]{r['verdict']}[/]", agree,
                  "" if r["p50_ms"] is None else f"{r['p50_ms']:.3f}",
                  "" if r["img_s"] is None else f"{r['img_s']:,.0f}", f"{r['size_mb']:.2f}")
    return t


def fleet_lines(run: Any) -> list[str]:
    """Under the fleet table: each kind's run, the parity between kinds, what to ship where, what an earlier run
    recorded."""
    rep = run.report
    lines = [f"{_esc(k)}: results of {r['when']} (resnetx {r['resnetx']}, node {_esc(r['host'])})"
             + (f"; [red]its task failed[/]: {_esc(r['error'])}" if r["error"] else "") for k, r in rep.kinds.items()]
    lines += [f"parity {p['precision']}: {_esc(p['kind_a'])} vs {_esc(p['kind_b'])}: top-1 agreement "
              f"{100 * p['top1_agreement']:.2f}%, rel. L2 {p['rel_l2']:.2e}" for p in rep.parity]
    lines += [f"[yellow]parity: {_esc(k)} left out[/]: {_esc(w)}" for k, w in rep.unreadable.items()]
    lines += [f"{_esc(k)}: {_esc(line)}" for k, line in rep.ship.items()]
    if run.recorded:
        lines.append(f"[yellow]note:[/] recorded by an earlier fleet run, not run again: {', '.join(run.recorded)} "
                     "(--force runs them)")
    return lines


def predict_table(result: Any) -> Table:
    """resnetx predict: each image's best classes and their scores."""
    from rich.table import Table

    what = "softmax of the logits" if result.output == "logits" else "the model's probabilities"
    t = Table(title=f"resnetx predict: {_esc(result.artifact)} on {_esc(result.runtime)} (scores: {what})",
              title_justify="left")
    for c in ("file", "top-1", "score", "next"):
        t.add_column(c, justify="right" if c == "score" else "left")
    for p in result.predictions:
        best, rest = p.top[0], p.top[1:]
        label = best["name"] if best["name"] is not None else str(best["index"])
        t.add_row(_esc(p.file), _esc(label), f"{best['score']:.4f}",
                  _esc(", ".join(f"{r['name'] if r['name'] is not None else r['index']} {r['score']:.3f}"
                                 for r in rest)))
    return t
