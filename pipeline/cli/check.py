"""Checking a folder: `verify` (every artifact against the reference), `bench` (latency, throughput, memory,
accuracy), `info` (this machine, or a folder's provenance), `predict` (classify image files)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import pipeline.cli.show as show
from pipeline.cli.app import console
from pipeline.cli.options import (
    BENCH_TIMING,
    DATA_OPTIONS,
    FOLDER,
    RUNTIME,
    VERIFY_TOLERANCES,
    Args,
    P,
    command,
    runtime_group,
    runtime_values,
)
from pipeline.cli.parse import csv, ints
from pipeline.defaults import (
    DEFAULT_REFERENCE_SAMPLES,
    DEFAULT_ROUNDS,
    DEFAULT_TOP,
    DEFAULT_WARMUP,
    DEFAULT_WARMUP_SECONDS,
    batches_text,
)
from runtimes.base import Device
from runtimes.torch_rt import CompileMode

__all__ = ["verify", "bench", "info", "predict"]

VERIFY_OPTIONS = (
    P("device", Annotated[Device, typer.Option(help=(
        "Where candidates run; the reference is the source's own (PyTorch, onnxruntime or Keras) on the CPU."))],
      Device.cpu),
    P("samples", Annotated[int, typer.Option(min=1, help=(
        "Inputs: real images plus 4 extreme ones (zeros, noise, large); an image folder is drawn seeded across its "
        "classes."))], DEFAULT_REFERENCE_SAMPLES),
    P("precision", Annotated[str | None, typer.Option(help="Only these precisions, e.g. fp16,int8.")], None),
    P("localize", Annotated[bool, typer.Option(help=(
        "Always localise: error by depth and the first divergent layer (done anyway on failure)."))], False),
    P("batch_size", Annotated[int | None, typer.Option(min=1, help=(
        "Batch size for the runs (default 16 at ImageNet sizes, 64 for small images)."))], None),
)

COMPILE_MODE_HELP = ("torch.compile mode: max-autotune-no-cudagraphs (minutes of autotuning, cached in the folder; "
                     "--cuda-graph adds graphs), max-autotune, reduce-overhead, default (fastest to compile).")
BENCH_OPTIONS = (
    P("precision", Annotated[str | None, typer.Option(help="Only these precisions.", rich_help_panel=RUNTIME)], None),
    P("device", Annotated[Device, typer.Option(help="cpu, cuda, or auto (cuda when a GPU is visible).",
                                               rich_help_panel=RUNTIME)], Device.cpu),
    P("batch", Annotated[str, typer.Option(help=(
        "Batch sizes, comma-separated, or auto (per runtime, double from 1 until throughput grows by less than "
        "5%)."))], batches_text()),
    P("warmup", Annotated[int, typer.Option(min=0, help="Warm-up runs (at least).")], DEFAULT_WARMUP),
    P("warmup_seconds", Annotated[float, typer.Option(min=0, help="Warm-up time (at least).")],
      DEFAULT_WARMUP_SECONDS),
    *BENCH_TIMING,
    P("rounds", Annotated[int, typer.Option(min=1, help=(
        "Interleaved passes over all runtimes (iters and seconds are totals): ratios measured side by side."))],
      DEFAULT_ROUNDS),
    P("threads", Annotated[int | None, typer.Option(min=1, help="CPU threads for onnxruntime, OpenVINO and torch.",
                                                    rich_help_panel=RUNTIME)], None),
    P("channels_last", Annotated[bool, typer.Option(help="torch: channels_last memory format.",
                                                    rich_help_panel=RUNTIME)], False),
    P("cuda_graph", Annotated[bool, typer.Option(help="torch/trt: capture CUDA graphs per batch size.",
                                                 rich_help_panel=RUNTIME)], False),
    P("compile", Annotated[bool, typer.Option("--compile", help="torch: torch.compile (compile time reported apart).",
                                              rich_help_panel=RUNTIME)], False),
    P("compile_mode", Annotated[CompileMode, typer.Option(help=COMPILE_MODE_HELP, rich_help_panel=RUNTIME)],
      CompileMode.max_autotune_no_cudagraphs),
    P("prefer_nhwc", Annotated[bool, typer.Option(help="ort CUDA: prefer NHWC kernels.", rich_help_panel=RUNTIME)],
      False),
    P("cudnn_benchmark", Annotated[bool, typer.Option(rich_help_panel=RUNTIME, help=(
        "torch CUDA: let cuDNN time its algorithms per shape (during warm-up), as onnxruntime's CUDA provider does "
        "here."))], True),
    P("include_transfers", Annotated[bool, typer.Option(help=(
        "GPU: time host->device->host copies too (CPU always does)."))], False),
    P("accuracy", Annotated[bool, typer.Option(help="Top-1 accuracy column on --data.")], True),
    *DATA_OPTIONS,
    P("compare", Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help=(
        "An earlier bench.json: print ratios per row."))], None),
    P("peak_tflops", Annotated[float | None, typer.Option(min=0, help=(
        "The device's compute peak at this precision in TFLOP/s (e.g. 725 for an H100's measured fp16): adds % of "
        "peak per row."))], None),
)

PREDICT_OPTIONS = (
    P("paths", Annotated[list[Path], typer.Argument(help="Image files, or folders (read recursively, sorted).")]),
    P("precision", Annotated[str | None, typer.Option(help=(
        "The graph to run: fp32, fp16 or int8 (default fp32), or an engine's name (e.g. fp16.rtx-sm86)."))], None),
    P("device", Annotated[Device, typer.Option(help="cpu, cuda, or auto.")], Device.cpu),
    P("top", Annotated[int, typer.Option(min=1, help="Classes shown per image.")], DEFAULT_TOP),
    P("json", Annotated[Path | None, typer.Option("--json", dir_okay=False, help=(
        "Write the results here: one record per image, in order: file, top classes, the raw outputs."))], None),
    P("batch_size", Annotated[int, typer.Option(min=1, help="Images run at a time.")], 16),
)


@command(FOLDER, VERIFY_OPTIONS, DATA_OPTIONS, runtime_group("verify"), VERIFY_TOLERANCES)
def verify(a: Args) -> None:
    """Check every artifact against the fp32 reference (the source the folder was exported from); exit 1 if any
    fails its tolerance."""
    from pipeline.check.verify import VerifyOptions

    opts = VerifyOptions(folder=a.folder, device=a.device, samples=a.samples, data=a.data, data_dir=a.data_dir,
                         batch_size=a.batch_size, precisions=csv(a.precision) or None, runtimes=csv(a.runtime) or None,
                         rel_l2=a.rtol_l2, top1_agreement=a.min_agreement, accuracy_drop=a.max_acc_drop,
                         localize=a.localize, runtime_options=runtime_values(a))
    show.verdict(verify_report=show.verify(opts))


@command(FOLDER, runtime_group("bench"), BENCH_OPTIONS)
def bench(a: Args) -> None:
    """Latency percentiles, throughput, memory and accuracy for runtimes x precisions x batch sizes."""
    from pipeline.check.bench import BenchOptions

    auto = a.batch.strip().lower() == "auto"
    given = {k: a[k] for k in ("folder", "device", "warmup", "warmup_seconds", "iters", "min_seconds", "rounds",
                               "threads", "channels_last", "cuda_graph", "compile", "compile_mode", "prefer_nhwc",
                               "cudnn_benchmark", "include_transfers", "accuracy", "data", "data_dir", "peak_tflops")}
    opts = BenchOptions(**given, runtimes=csv(a.runtime) or None, precisions=csv(a.precision) or None,
                        batches=(1,) if auto else ints(a.batch, "--batch"), auto_batch=auto,
                        runtime_options=runtime_values(a))
    show.verdict(bench_report=show.bench(opts, a.compare))


@command((P("folder", Annotated[Path | None, typer.Argument(help=(
    "An artifact folder: show its provenance and check every file."))], None),))
def info(a: Args) -> None:
    """Versions, devices and providers here; with a folder, what it holds and whether it is intact (exit 1 if not)."""
    from pipeline.check.here import machine_facts
    from pipeline.cli.tables import folder_notes, folder_table, machine_table
    from pipeline.folder.audit import audit_folder
    from pipeline.folder.remake import remake_command
    from resnetx.errors import CheckFailed

    c = console()
    if a.folder is None:
        c.print(machine_table(machine_facts()))
        return
    audit = audit_folder(a.folder)
    c.print(folder_table(audit))
    show.lines(folder_notes(audit))
    c.print(f"re-make with: {remake_command(audit.manifest, a.folder, tuple(audit.manifest.graphs))}", soft_wrap=True,
            markup=False)  # one line to copy
    if not audit.intact:
        raise CheckFailed(f"{a.folder}: files differ from the manifest or are missing (see the table above)")


@command(FOLDER, PREDICT_OPTIONS, runtime_group("predict"))
def predict(a: Args) -> None:
    """Classify image files (or folders of them) with one of the folder's artifacts, with the model's own
    preprocessing; exit 2 at the end if any file could not be decoded."""
    from pipeline.check.predict import PredictOptions, predict_files
    from pipeline.cli.tables import predict_table

    opts = PredictOptions(folder=a.folder, paths=tuple(a.paths), artifact=a.precision, runtime=a.runtime,
                          device=a.device.resolve(), top=a.top, json=a.json, batch_size=a.batch_size,
                          runtime_options=runtime_values(a))
    with show.status("predict: reading the images...") as s:
        result = predict_files(opts, on_progress=lambda done, total: s.update(f"predict: {done}/{total} images"))
    console().print(predict_table(result))
    show.notes(result.bad, "[red]not classified:[/] ")
    show.notes(result.notes)
    n = len(result.predictions)
    console().print(f"{n} image(s) classified with {result.artifact} on {result.runtime} in {result.seconds:.1f} s"
                    + (f"; wrote them to {result.json}" if result.json is not None else ""), markup=False)
    result.raise_for_bad()
