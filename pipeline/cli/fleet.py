"""`resnetx fleet DIR`: one folder, every GPU kind of a Ray cluster (pipeline/fleet/)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

import pipeline.cli.show as show
from pipeline.cli.app import console
from pipeline.cli.options import BENCH_TIMING, DATA_OPTIONS, FOLDER, Args, P, command
from pipeline.cli.parse import csv, ints
from pipeline.defaults import DEFAULT_KIND_TIMEOUT, DEFAULT_REFERENCE_SAMPLES, DEFAULT_RETRIES, batches_text
from resnetx.errors import CheckFailed
from resnetx.flavors import EngineChoice, HardwareCompat

__all__ = ["fleet"]

FLEET_OPTIONS = (
    P("address", Annotated[str | None, typer.Option(help="A running Ray cluster (ray://host:10001 or host:6379).",
                                                    show_default="a local Ray instance on this machine")], None),
    P("kinds", Annotated[str, typer.Option(help=(
        "GPU kinds to serve: auto (every kind in the cluster: a node's ray.io/accelerator-type or resnetx.io/kind "
        "label), or a list such as L4,A10G."))], "auto"),
    P("plan", Annotated[bool, typer.Option("--plan", help="Show the nodes and what builds where, then stop.")], False),
    P("engine", Annotated[EngineChoice, typer.Option(help=(
        "auto (enterprise TensorRT where a node has it and a GPU, else TensorRT-RTX), rtx or tensorrt."))],
      EngineChoice.auto),
    P("hardware_compat", Annotated[HardwareCompat, typer.Option(help=(
        "Enterprise TensorRT: where its engines may run: none, same-cc, ampere+."))], HardwareCompat.none),
    P("rtx_turing", Annotated[bool, typer.Option(help="Also build TensorRT-RTX engines for compute 7.5 (T4).")],
      False),
    *DATA_OPTIONS,
    P("samples", Annotated[int, typer.Option(min=1, help="Verify inputs, shipped once to every kind.")],
      DEFAULT_REFERENCE_SAMPLES),
    P("batch", Annotated[str, typer.Option(help="Bench batch sizes on every kind.")], batches_text()),
    P("kind_timeout", Annotated[float, typer.Option(min=1, help=(
        "Seconds a kind's task may wait for a node and run; then it is reported not run."))], DEFAULT_KIND_TIMEOUT),
    P("retries", Annotated[int, typer.Option(min=0, help="Runs again on another node of its kind when a node dies.")],
      DEFAULT_RETRIES),
    P("force", Annotated[bool, typer.Option(help="Run kinds an earlier fleet run already recorded.")], False),
    *BENCH_TIMING,
)


@command(FOLDER, FLEET_OPTIONS)
def fleet(a: Args) -> None:
    """Build, verify and benchmark the folder's engines on every GPU kind of a Ray cluster; merge the results."""
    from pipeline.cli.tables import fleet_lines, fleet_table, plan_table
    from pipeline.fleet.plan import FleetBench, FleetOptions
    from pipeline.fleet.run import run_fleet

    opts = FleetOptions(folder=a.folder, address=a.address, kinds=None if a.kinds == "auto" else csv(a.kinds) or None,
                        plan_only=a.plan, engine=a.engine, hardware_compat=a.hardware_compat, rtx_turing=a.rtx_turing,
                        data=a.data, data_dir=a.data_dir, samples=a.samples, batches=ints(a.batch, "--batch"),
                        kind_timeout=a.kind_timeout, retries=a.retries, force=a.force,
                        bench=FleetBench(iters=a.iters, min_seconds=a.min_seconds))
    with show.status("fleet...") as s:
        run = run_fleet(opts, on_progress=s.update)
    c = console()
    c.print(plan_table(run.plans))
    show.notes(run.notes)
    if run.report is None:  # --plan
        return
    c.print(fleet_table(run.report))
    show.lines(fleet_lines(run))
    c.print(f"fleet: {len(run.results)} kind(s) run in {run.seconds:.0f} s; reports: "
            f"{escape(', '.join(str(p) for p in run.paths))}", soft_wrap=True)
    if run.failed:
        raise CheckFailed(f"fleet: kind(s) {', '.join(run.failed)} not run or failing their checks: see above")
