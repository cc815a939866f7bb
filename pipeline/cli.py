"""The resnetx command line: parse options, call one pipeline function, print, exit."""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
import traceback
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from runtimes.errors import ResnetxError

__all__ = ["app", "main"]

app = typer.Typer(
    name="resnetx",
    help="ResNet from PyTorch to a deployable, verified, measured artifact.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("resnetx")
F = TypeVar("F", bound=Callable[..., Any])

MODEL_PANEL = "Model"
DATA_PANEL = "Data"
RUN_PANEL = "Runtime"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Exporter(str, Enum):
    dynamo = "dynamo"
    legacy = "legacy"


class Engine(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    rtx = "rtx"
    none = "none"


class Int8Target(str, Enum):
    tensorrt = "tensorrt"
    cpu = "cpu"


class CalibMethod(str, Enum):
    max = "max"
    entropy = "entropy"
    percentile = "percentile"


class CompileMode(str, Enum):
    max_autotune_no_cudagraphs = "max-autotune-no-cudagraphs"
    max_autotune = "max-autotune"
    reduce_overhead = "reduce-overhead"
    default = "default"


def _console():  # rich is imported on first use so `--help` stays light
    from rich.console import Console

    # Piped or captured output gets full-width tables instead of rich's 80-column default; COLUMNS still rules.
    wide = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(highlight=False, width=180 if wide else None)


def handled(fn: F) -> F:
    """Map resnetx errors to one-line messages and exit codes: the ONE place that does so."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click_context()
        debug = bool(ctx and ctx.obj and ctx.obj.get("debug"))
        try:
            return fn(*args, **kwargs)
        except ResnetxError as e:
            if debug:  # the traceback, and still the exit code scripts test for
                traceback.print_exc()
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:  # a folder that cannot be written, a full disk: the user's to fix, not a crash
            if debug:
                traceback.print_exc()
            where = f" ({e.filename})" if e.filename else ""
            typer.echo(f"error: {e.strerror or e}{where}; check the path and its permissions and free space "
                       "(--debug shows the traceback)", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def click_context() -> Any:
    try:  # typer < 0.20 depends on click; newer typer vendors it
        from click import get_current_context
    except ImportError:
        from typer._click.globals import get_current_context
    return get_current_context(silent=True)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            typer.echo(f"resnetx {metadata.version('resnetx')}")
        except metadata.PackageNotFoundError:
            typer.echo("resnetx (not installed)")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version, help="Print the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and debug logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and results.")] = False,
) -> None:
    """resnetx: export, verify and benchmark ResNets (ONNX, onnxruntime, TensorRT)."""
    ctx.obj = {"debug": debug}
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    # other libraries speak at WARNING (INFO with --debug: matplotlib, torch.export, onnxscript chatter)
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(message)s", stream=sys.stderr,
                        force=True)
    for ours in ("resnetx", "pipeline", "runtimes", "exporters"):
        logging.getLogger(ours).setLevel(level)


def _command_line() -> str:
    return "resnetx " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# --------------------------------------------------------------------------- train
@app.command()
@handled
def train(
    model: Annotated[str, typer.Option(help="Zoo architecture to train, e.g. resnet20.", rich_help_panel=MODEL_PANEL)] = "resnet20",
    data: Annotated[str, typer.Option(help="Training dataset: fashion-mnist, cifar10, imagefolder:DIR.", rich_help_panel=DATA_PANEL)] = "fashion-mnist",
    data_dir: Annotated[Path | None, typer.Option(help="Dataset directory (default: the dataset's standard place).", rich_help_panel=DATA_PANEL)] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 15,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size.")] = 128,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (SGD, Nesterov momentum).")] = 0.1,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="Weight decay on conv/linear weights.")] = 5e-4,
    schedule: Annotated[str, typer.Option(help="cosine or step (x0.1 at 50% and 75%).")] = "cosine",
    flip: Annotated[bool, typer.Option(help="Random horizontal flips.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for init, order and augmentation.")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="Train on the first N images only.")] = None,
    eval_limit: Annotated[int | None, typer.Option(min=1, help="Evaluate on the first N test images only.")] = None,
    device: Annotated[Device, typer.Option(help="Training device.")] = Device.auto,
    out: Annotated[Path, typer.Option(help="Checkpoint to write (best epoch); a .json card goes beside it.")] = Path("model.pt"),
) -> None:
    """Train a zoo model (SGD + cosine, crop/flip augmentation); the best epoch is saved for `export --weights`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.train import TrainConfig, train as run_train

    cfg = TrainConfig(model=model, data=data, data_dir=data_dir, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, schedule=schedule, flip=flip, seed=seed, limit=limit,
                      eval_limit=eval_limit, device=device.value, out=out)
    console = _console()
    with Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.1f}%"), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("train", total=None, epoch=1, loss=0.0, acc=0.0)

        def on_step(epoch: int, i: int, m: dict[str, float]) -> None:
            bar.update(task, completed=i, epoch=epoch + 1, loss=m["loss"], acc=m["acc"])

        def on_epoch(row: dict[str, float]) -> None:
            bar.console.print(f"epoch {row['epoch']:>3}: loss {row['train_loss']:.4f}  train {row['train_acc']:.2f}%  "
                              f"test top-1 {row['test_top1']:.2f}%  ({row['seconds']:.0f} s)")
            bar.reset(task)

        result = run_train(cfg, on_step=on_step, on_epoch=on_epoch, command=_command_line())
    console.print(f"best test top-1 {result.best_top1:.2f}% at epoch {result.best_epoch}; "
                  f"saved {escape(str(result.checkpoint))} ({result.seconds:.0f} s)")



# --------------------------------------------------------------------------- helpers
def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(t) for t in _csv(text))
    except ValueError:
        vals = ()
    if not vals:
        from runtimes.errors import BadInput

        raise BadInput(f"{what} takes comma-separated integers, e.g. 1,8,32; got {text!r}")
    return vals


def _device(d: Device) -> str:
    if d is Device.auto:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return d.value


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Architecture (resnet18..152, resnext50_32x4d, wide_resnet50_2, resnet20/32/44/56/110, preact_resnet29/56/110/164) or 'default' (the shipped Fashion-MNIST ResNet-20).", rich_help_panel=MODEL_PANEL)]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", "-w", help="Checkpoint: state_dict .pth, wrapped checkpoint, or TorchScript.", rich_help_panel=MODEL_PANEL)]
ClassesOpt = Annotated[int | None, typer.Option(min=1, help="Number of classes (default: from the checkpoint, else 1000/10).", rich_help_panel=MODEL_PANEL)]
ChansOpt = Annotated[int | None, typer.Option(min=1, help="Input channels (default: from the checkpoint, else 3).", rich_help_panel=MODEL_PANEL)]
SizeOpt = Annotated[int | None, typer.Option(min=1, help="Input height = width (default 224 ImageNet, 32 CIFAR).", rich_help_panel=MODEL_PANEL)]
TrustOpt = Annotated[bool, typer.Option(help="Allow pickled Python objects in the checkpoint (runs code from the file!).", rich_help_panel=MODEL_PANEL)]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Artifact folder (default artifacts/<model>).")]
DirArg = Annotated[Path, typer.Argument(help="Artifact folder written by resnetx export.")]
CalibDataOpt = Annotated[str, typer.Option(help="INT8 calibration data (train split): sample, fashion-mnist, cifar10, imagefolder:DIR.", rich_help_panel="INT8")]
CalibDirOpt = Annotated[Path | None, typer.Option(help="Calibration dataset directory.", rich_help_panel="INT8")]
Int8TargetOpt = Annotated[Int8Target, typer.Option(help="tensorrt: symmetric int8 activations, float bias; cpu: uint8 activations for onnxruntime x86.", rich_help_panel="INT8")]
DataOpt = Annotated[str, typer.Option(help="Data: sample (bundled), fashion-mnist, cifar10, imagefolder:DIR, synthetic.", rich_help_panel=DATA_PANEL)]
DataDirOpt = Annotated[Path | None, typer.Option(help="Dataset directory (default: the dataset's standard place).", rich_help_panel=DATA_PANEL)]


def _model_spec(model: str, weights: Path | None, num_classes: int | None, in_chans: int | None,
                image_size: int | None, trust: bool) -> Any:
    from pipeline.models import ModelSpec

    if trust:
        log.warning("--trust-checkpoint: the checkpoint may run arbitrary code while loading")
    return ModelSpec(arch=model, num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                     weights=weights, trust_checkpoint=trust)


def _announce_model(info: Any) -> None:
    if info.weights == "default-untrained":
        log.warning("note: the default model's trained weights are missing; using a seeded RANDOM ResNet-20")
    elif not info.trained:
        log.warning("note: %s has random weights (no --weights): parity is meaningful, accuracy is not", info.arch)


# --------------------------------------------------------------------------- export
def _do_export(opts: Any, engines_only: bool = False, precisions: tuple[Any, ...] | None = None) -> Any:
    """Export; or with engines_only, build engines from the folder's graphs (`precisions`, None: every graph)."""
    from pipeline.export import export as run_export, export_engines
    from pipeline.report import export_table

    console = _console()
    with console.status("exporting...") as status:
        def on_step(ev: Any) -> None:
            status.update(f"{ev.step}: {ev.status} {ev.file or ''}")

        if engines_only:
            result = export_engines(opts, precisions, on_step=on_step, on_progress=status.update)
        else:
            result = run_export(opts, on_step=on_step, on_progress=status.update)
            _announce_model(result.info)
    console.print(export_table(result))
    for n in result.notices:
        console.print(f"[yellow]note:[/] {escape(n)}")
    return result


@app.command()
@handled
def export(
    model: ModelOpt = "default",
    weights: WeightsOpt = None,
    num_classes: ClassesOpt = None,
    in_chans: ChansOpt = None,
    image_size: SizeOpt = None,
    trust_checkpoint: TrustOpt = False,
    out: OutOpt = None,
    precision: Annotated[str | None, typer.Option(help="Comma-separated: fp32,fp16,int8 (fp32 is always made: it is the source). Default fp32; with --engines-only, every graph in the folder.")] = None,
    exporter: Annotated[Exporter, typer.Option(help="dynamo (torch.export) or legacy (TorchScript).")] = Exporter.dynamo,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    dynamic_batch: Annotated[bool, typer.Option(help="Dynamic batch dimension (--no-dynamic-batch: the graph and engines take one batch size, --static-batch).")] = True,
    static_batch: Annotated[int | None, typer.Option(min=1, help="Bake this batch size into the graph and engines (implies --no-dynamic-batch; default 1 with it).")] = None,
    calib_data: CalibDataOpt = "sample",
    calib_dir: CalibDirOpt = None,
    calib_samples: Annotated[int, typer.Option(min=1, help="Calibration images (seeded random subset).", rich_help_panel="INT8")] = 512,
    calib_method: Annotated[CalibMethod, typer.Option(help="Range estimate.", rich_help_panel="INT8")] = CalibMethod.max,
    int8_target: Int8TargetOpt = Int8Target.tensorrt,
    keep_fp32: Annotated[str | None, typer.Option(help="Layers (module paths, e.g. layer3.1.conv2) kept in fp32 in fp16 graphs and unquantized in int8.", rich_help_panel="INT8")] = None,
    int8_quantize_ends: Annotated[bool, typer.Option(help="Also quantize the stem conv and the classifier (kept float by default: most accuracy, least speed).", rich_help_panel="INT8")] = False,
    engine: Annotated[Engine, typer.Option(help="TensorRT engines: auto (tensorrt, else rtx, else none), tensorrt, rtx, none.", rich_help_panel="TensorRT")] = Engine.none,
    batch_range: Annotated[str | None, typer.Option(help="Engine profile MIN,OPT,MAX (default 1,8,64 ImageNet sizes; 1,32,256 small).", rich_help_panel="TensorRT")] = None,
    workspace_mb: Annotated[int | None, typer.Option(min=1, help="Builder workspace limit (MiB).", rich_help_panel="TensorRT")] = None,
    opt_level: Annotated[int, typer.Option(min=0, max=5, help="Builder optimization level.", rich_help_panel="TensorRT")] = 3,
    rtx_compute_capability: Annotated[str | None, typer.Option(help="TensorRT-RTX targets, e.g. SM86,SM89 (default SM80,SM86,SM89,SM120).", rich_help_panel="TensorRT")] = None,
    reference_samples: Annotated[int, typer.Option(min=0, help="Store fp32 PyTorch logits on verify's default inputs (sample data) in reports/reference.sample.N.npz, so verify need not re-run PyTorch; 0: skip.")] = 512,
    force: Annotated[bool, typer.Option(help="Rebuild everything asked for, ignoring the cache; the folder then holds only what this export made.")] = False,
    engines_only: Annotated[bool, typer.Option(help="Build engines from the ONNX graphs already in --out, without the model or its weights: for a folder copied to the GPU it will run on (engines are tied to their GPU and TensorRT version).", rich_help_panel="TensorRT")] = False,
) -> None:
    """Export a model to ONNX (fp32, fp16, int8) and TensorRT engines, with a manifest."""
    from pipeline.export import ExportOptions
    from pipeline.precisions import parse_precisions
    from runtimes.errors import BadInput

    br = _ints(batch_range, "--batch-range") if batch_range else None
    if br is not None and len(br) != 3:
        raise BadInput(f"--batch-range takes MIN,OPT,MAX; got {batch_range!r}")
    if engines_only:
        model_opts = [o for o, given in (("--model", model != "default"), ("--weights", weights), ("--keep-fp32", keep_fp32),
                                         ("--static-batch", static_batch), ("--calib-data", calib_data != "sample"))
                      if given]
        if model_opts:
            raise BadInput(f"--engines-only builds from the graphs already in the folder; {', '.join(model_opts)} "
                           "would change those graphs: export them first without --engines-only")
        _do_export(ExportOptions(out=out or Path("artifacts") / model, engine=engine.value, batch_range=br,
                                 workspace_mb=workspace_mb, opt_level=opt_level, force=force,  # type: ignore[arg-type]
                                 rtx_compute_capabilities=_csv(rtx_compute_capability) or None),
                   engines_only=True,
                   precisions=tuple(parse_precisions(precision, with_source=False)) if precision else None)
        return
    opts = ExportOptions(
        model=_model_spec(model, weights, num_classes, in_chans, image_size, trust_checkpoint),
        out=out or Path("artifacts") / model,
        precisions=tuple(parse_precisions(precision or "fp32")), exporter=exporter.value, opset=opset,
        dynamic_batch=dynamic_batch and static_batch is None, static_batch=static_batch or 1, calib_data=calib_data, calib_dir=calib_dir, calib_samples=calib_samples,
        calib_method=calib_method.value, int8_target=int8_target.value, keep_fp32=_csv(keep_fp32),
        int8_quantize_ends=int8_quantize_ends,
        engine=engine.value, batch_range=br, workspace_mb=workspace_mb, opt_level=opt_level,  # type: ignore[arg-type]
        rtx_compute_capabilities=_csv(rtx_compute_capability) or None, force=force,
        reference_samples=reference_samples,
    )
    _do_export(opts)


# --------------------------------------------------------------------------- verify
def _do_verify(opts: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from pipeline.report import localization_table, verify_reasons, verify_table
    from pipeline.verify import verify as run_verify

    console = _console()
    with Progress(TextColumn("verify {task.description}"), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True) as bar:
        tasks: dict[str, Any] = {}

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        report = run_verify(opts, on_progress=on_progress)
    console.print(verify_table(report, width=console.width))
    for line in verify_reasons(report):
        console.print(line)
    for r in report.rows:
        if r.localization and "error" not in r.localization:
            console.print(localization_table(r.artifact, r.localization))
            if r.localization.get("suggestion"):  # one line however long: it is a command to copy
                console.print(f"try: {escape(r.localization['suggestion'])}", soft_wrap=True)
        elif r.localization:
            console.print(f"[yellow]localisation of {r.artifact} failed:[/] {escape(r.localization['error'])}")
    for n in report.notes:
        console.print(f"[yellow]note:[/] {escape(n)}")
    ref = "stored reference logits" if report.reference_stored else "reference computed now"
    verdict = ("[green]PASS[/]" if report.passed else "[yellow]NOTHING RAN[/]" if report.nothing_ran
               else "[red]FAIL[/]")
    where = (f"report: {escape(str(report.report_path))}" if report.report_path
             else "no report written (reports/verify.json keeps the last verdict)")
    console.print(f"{verdict} in {report.seconds:.1f} s ({ref}); {where}")
    return report


@app.command()
@handled
def verify(
    folder: DirArg = Path("artifacts/default"),
    device: Annotated[Device, typer.Option(help="Where candidates run; the reference is fp32 PyTorch on the CPU.")] = Device.cpu,
    samples: Annotated[int, typer.Option(min=1, help="Inputs: real images plus 4 extreme ones (zeros, noise, large).")] = 512,
    data: DataOpt = "sample",
    data_dir: DataDirOpt = None,
    precision: Annotated[str | None, typer.Option(help="Only these precisions, e.g. fp16,int8.")] = None,
    runtime: Annotated[str | None, typer.Option(help="Only these runtimes: ort, trt, torch (torch = PyTorch itself on --device in fp32/fp16).")] = None,
    rtol_l2: Annotated[float | None, typer.Option(help="Override the rel. L2 bar (defaults: fp32 1e-4, fp16 1e-2, int8 none).", rich_help_panel="Tolerances")] = None,
    min_agreement: Annotated[float | None, typer.Option(min=0, max=1, help="Override the top-1 agreement bar (fp32 1.0, fp16 0.99, int8 0.97).", rich_help_panel="Tolerances")] = None,
    max_acc_drop: Annotated[float | None, typer.Option(min=0, help="Override the accuracy-drop bar in points (int8 0.5).", rich_help_panel="Tolerances")] = None,
    localize: Annotated[bool, typer.Option(help="Always localise: error by depth and the first divergent layer (done anyway on failure).")] = False,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size for the runs (default 16 at ImageNet sizes, 64 for small images).")] = None,
) -> None:
    """Check every artifact against the fp32 PyTorch reference; exit 1 if any fails its tolerance."""
    from pipeline.verify import VerifyOptions

    opts = VerifyOptions(folder=folder, device=_device(device), samples=samples, data=data, data_dir=data_dir,
                         batch_size=batch_size, precisions=_csv(precision) or None, runtimes=_csv(runtime) or None,
                         rel_l2=rtol_l2, top1_agreement=min_agreement, accuracy_drop=max_acc_drop, localize=localize)
    report = _do_verify(opts)
    _nothing_ran(verify_report=report)
    if not report.passed:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- bench
def _do_bench(opts: Any, compare: Path | None = None) -> Any:
    from pipeline.bench import bench as run_bench, compare_reports
    from pipeline.report import bench_not_run, bench_table, compare_table

    console = _console()
    with console.status("benchmarking...") as status:
        def on_row(row: Any) -> None:
            status.update(f"{row.runtime} batch {row.batch}: "
                          + (f"{row.latency_ms['p50']:.3f} ms" if row.latency_ms else escape(row.error or "")))

        report = run_bench(opts, on_row=on_row, on_progress=lambda text: status.update(escape(text)))
    console.print(bench_table(report, width=console.width))
    for line in bench_not_run(report):
        console.print(line)
    for n in report.notes:
        console.print(f"[yellow]note:[/] {escape(n)}")
    if report.nothing_ran:
        console.print("[yellow]NOTHING RAN[/]: no report written (reports/bench.* keep the last run)")
        return report
    if compare is not None:
        ratios = compare_reports(report, compare)
        console.print(compare_table(ratios, compare) if ratios else
                      f"[yellow]--compare:[/] no timed row of {escape(str(compare))} has this run's runtime, "
                      "precision, device and batch size")
    console.print(f"reports: {escape(str(opts.folder / 'reports'))}/bench.{{json,md,csv,png}}")
    return report


@app.command()
@handled
def bench(
    folder: DirArg = Path("artifacts/default"),
    runtime: Annotated[str | None, typer.Option(help="Runtimes: torch, ort, trt, ort-trt (default torch,ort; +trt on cuda; ort-trt = onnxruntime's TensorRT provider, on request).", rich_help_panel=RUN_PANEL)] = None,
    precision: Annotated[str | None, typer.Option(help="Only these precisions.", rich_help_panel=RUN_PANEL)] = None,
    device: Annotated[Device, typer.Option(help="cpu, cuda, or auto (cuda when a GPU is visible).", rich_help_panel=RUN_PANEL)] = Device.cpu,
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated.")] = "1,8,32",
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up runs (at least).")] = 10,
    warmup_seconds: Annotated[float, typer.Option(min=0, help="Warm-up time (at least).")] = 0.5,
    iters: Annotated[int, typer.Option(min=1, help="Timed runs (at least).")] = 50,
    min_seconds: Annotated[float, typer.Option(min=0, help="Timed seconds (at least).")] = 1.0,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved passes over all runtimes (iters and seconds are totals): ratios measured side by side.")] = 3,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for onnxruntime and torch.", rich_help_panel=RUN_PANEL)] = None,
    channels_last: Annotated[bool, typer.Option(help="torch: channels_last memory format.", rich_help_panel=RUN_PANEL)] = False,
    cuda_graph: Annotated[bool, typer.Option(help="torch/trt: capture CUDA graphs per batch size.", rich_help_panel=RUN_PANEL)] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch: torch.compile (compile time reported apart).", rich_help_panel=RUN_PANEL)] = False,
    compile_mode: Annotated[CompileMode, typer.Option(help="torch.compile mode: max-autotune-no-cudagraphs (minutes of autotuning, cached in the folder; --cuda-graph adds graphs), max-autotune, reduce-overhead, default (fastest to compile).", rich_help_panel=RUN_PANEL)] = CompileMode.max_autotune_no_cudagraphs,
    prefer_nhwc: Annotated[bool, typer.Option(help="ort CUDA: prefer NHWC kernels.", rich_help_panel=RUN_PANEL)] = False,
    cudnn_benchmark: Annotated[bool, typer.Option(help="torch CUDA: let cuDNN time its algorithms per shape (during warm-up), as onnxruntime's CUDA provider does here.", rich_help_panel=RUN_PANEL)] = True,
    include_transfers: Annotated[bool, typer.Option(help="GPU: time host->device->host copies too (CPU always does).")] = False,
    accuracy: Annotated[bool, typer.Option(help="Top-1 accuracy column on --data.")] = True,
    data: DataOpt = "sample",
    data_dir: DataDirOpt = None,
    compare: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="An earlier bench.json: print ratios per row.")] = None,
    peak_tflops: Annotated[float | None, typer.Option(min=0, help="The device's compute peak at this precision in TFLOP/s (e.g. 725 for an H100's measured fp16): adds % of peak per row.")] = None,
) -> None:
    """Latency percentiles, throughput, memory and accuracy for runtimes x precisions x batch sizes."""
    from pipeline.bench import BenchOptions

    opts = BenchOptions(folder=folder, runtimes=_csv(runtime) or None, precisions=_csv(precision) or None,
                        device=_device(device), batches=_ints(batch, "--batch"), warmup=warmup,
                        warmup_seconds=warmup_seconds, iters=iters, min_seconds=min_seconds, rounds=rounds, threads=threads,
                        channels_last=channels_last, cuda_graph=cuda_graph, compile=compile,
                        compile_mode=compile_mode.value, prefer_nhwc=prefer_nhwc, cudnn_benchmark=cudnn_benchmark,
                        include_transfers=include_transfers, accuracy=accuracy, data=data, data_dir=data_dir,
                        peak_tflops=peak_tflops)
    _nothing_ran(_do_bench(opts, compare))


def _nothing_ran(bench_report: Any = None, verify_report: Any = None) -> None:
    """Exit 3 when a command judged or timed nothing: every runtime it tried was missing or failed."""
    from runtimes.errors import BackendUnavailable

    if verify_report is not None and verify_report.nothing_ran:
        raise BackendUnavailable(f"nothing was verified: {verify_report.rows[0].skipped}")
    if bench_report is not None and bench_report.nothing_ran:
        raise BackendUnavailable(f"nothing was benchmarked: {bench_report.rows[0].error}")


# --------------------------------------------------------------------------- run
@app.command()
@handled
def run(
    model: ModelOpt = "default",
    weights: WeightsOpt = None,
    num_classes: ClassesOpt = None,
    in_chans: ChansOpt = None,
    image_size: SizeOpt = None,
    trust_checkpoint: TrustOpt = False,
    out: OutOpt = None,
    precision: Annotated[str, typer.Option(help="Precisions to export, verify and bench.")] = "fp32,fp16,int8",
    engine: Annotated[Engine, typer.Option(help="TensorRT engines to build (auto/tensorrt/rtx/none).")] = Engine.auto,
    device: Annotated[Device, typer.Option(help="Where verify and bench run.")] = Device.auto,
    batch: Annotated[str, typer.Option(help="Bench batch sizes.")] = "1,8,32",
    data: DataOpt = "sample",
    data_dir: DataDirOpt = None,
    calib_data: CalibDataOpt = "sample",
    calib_dir: CalibDirOpt = None,
    int8_target: Int8TargetOpt = Int8Target.tensorrt,
) -> None:
    """export -> verify -> bench with defaults: the whole job in one command (--data: what verify and bench's
    accuracy use; --calib-data: what int8 is calibrated on)."""
    from pipeline.bench import BenchOptions, check_batches
    from pipeline.export import ExportOptions
    from pipeline.precisions import parse_precisions
    from pipeline.verify import VerifyOptions

    precisions = tuple(parse_precisions(precision))
    batches = check_batches(_ints(batch, "--batch"))  # bad options fail before minutes of export, not after
    from pipeline.data import open_dataset

    open_dataset(data, data_dir=data_dir)  # a dataset that cannot be read, named before the export
    out = out or Path("artifacts") / model
    dev = _device(device)
    if dev == "cuda":  # before minutes of export: verify and bench could not run
        from runtimes.base import require_cuda

        require_cuda("; nothing was exported")
    _do_export(ExportOptions(model=_model_spec(model, weights, num_classes, in_chans, image_size, trust_checkpoint),
                             out=out, precisions=precisions, engine=engine.value, calib_data=calib_data,
                             calib_dir=calib_dir, int8_target=int8_target.value, reference_data=data,
                             reference_data_dir=data_dir))
    report = _do_verify(VerifyOptions(folder=out, device=dev, data=data, data_dir=data_dir))
    timed = _do_bench(BenchOptions(folder=out, device=dev, batches=batches, data=data, data_dir=data_dir))
    _nothing_ran(timed, report)
    if not report.passed:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- info
@app.command()
@handled
def info(
    folder: Annotated[Path | None, typer.Argument(help="An artifact folder: show its provenance and check every file.")] = None,
) -> None:
    """Versions, devices and providers here; with a folder, what it holds and whether it is intact (exit 1 if not)."""
    from rich.table import Table

    if folder is not None:
        from pipeline.artifacts import audit_folder
        from pipeline.report import folder_notes, folder_table

        audit = audit_folder(folder)
        console = _console()
        console.print(folder_table(audit))
        for line in folder_notes(audit):
            console.print(line)
        console.print(f"re-make with: {escape(_remake_command(folder))}", soft_wrap=True)  # one line to copy
        if not audit["intact"]:
            raise typer.Exit(1)
        return

    from exporters.tensorrt import FLAVORS, import_flavor
    from pipeline.artifacts import tool_versions
    from runtimes.errors import BackendUnavailable

    t = Table(title="resnetx info", title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value")
    for k, v in tool_versions().items():
        t.add_row(k, v)
    import torch

    t.add_row("torch CUDA", f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})" if torch.cuda.is_available() else "no CUDA device")
    try:
        import onnxruntime as ort

        t.add_row("onnxruntime providers", ", ".join(ort.get_available_providers()))
    except ImportError:
        t.add_row("onnxruntime providers", "onnxruntime not installed")
    for flavor, (module, _) in FLAVORS.items():
        try:
            mod = import_flavor(flavor)
            t.add_row(f"TensorRT ({flavor})", f"{module} {mod.__version__}: builds engines" + ("" if torch.cuda.is_available() else "; running them needs a GPU"))
        except BackendUnavailable as e:
            t.add_row(f"TensorRT ({flavor})", f"not available: {e}")
    from pipeline.models import DEFAULT_WEIGHTS, known_models

    t.add_row("default model", str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.exists() else "missing (random ResNet-20)")
    t.add_row("models", ", ".join(known_models()))
    _console().print(t)


def _remake_command(folder: Path) -> str:
    """The export line that makes the folder's graphs (and engines of one flavour) again, as they were made."""
    from pipeline.artifacts import read_manifest
    from pipeline.export import export_command

    m = read_manifest(folder)
    return export_command(m, folder, tuple(e["precision"] for e in m.artifacts.values() if e["kind"] == "onnx"))


GLOBAL_FLAGS = ("--debug", "--quiet", "-q")


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Global flags written after the command (`resnetx verify DIR --debug`, as the error messages suggest)
    move in front of it, where click looks for them; nothing after a `--` moves."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in argv[:end] if a not in GLOBAL_FLAGS] + argv[end:]


def cli() -> None:
    """The `resnetx` console script."""
    app(args=hoist_global_flags(sys.argv[1:]), prog_name="resnetx")


if __name__ == "__main__":
    cli()
