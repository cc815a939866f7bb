"""The resnetx command line: parse options, construct the options object, call one pipeline function, print."""

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
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from exporters.calibrate import CalibMethod
from exporters.onnx import DEFAULT_OPSET, Exporter
from exporters.quantize import Fallback, Int8Target
from pipeline.defaults import DEFAULT_CALIB_SAMPLES, DEFAULT_OPT_LEVEL, DEFAULT_REFERENCE_SAMPLES
from pipeline.precisions import tolerance_help
from resnetx.errors import BadInput, CheckFailed, ResnetxError
from resnetx.flavors import EngineChoice, HardwareCompat
from runtimes.base import Device
from runtimes.registry import runtimes_help
from runtimes.torch_rt import CompileMode

if TYPE_CHECKING:
    from pipeline.bench import BenchOptions, BenchReport
    from pipeline.export import ExportOptions, ExportResult
    from pipeline.verify import VerifyOptions, VerifyReport
    from pipeline.zoo import ModelInfo, ModelSpec, OnnxSpec

__all__ = ["app", "main", "cli"]

def _flags_bare(params: list[Any]) -> list[Any]:
    """Flags (--force, --help) take no value: their help shows no `<bool>` type as if they did."""
    for p in params:
        if getattr(p, "is_flag", False):
            p.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_bare(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _flags_bare(super().get_params(ctx))


app = typer.Typer(
    name="resnetx",
    help="ResNet from PyTorch to a deployable, verified, measured artifact.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)
log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

MODEL, DATA, RUNTIME, INT8, TRT, TOL = "Model", "Data", "Runtime", "INT8", "TensorRT", "Tolerances"


class Schedule(str, Enum):
    cosine = "cosine"
    step = "step"


class ServeDevice(str, Enum):
    gpu = "gpu"
    cpu = "cpu"

SEARCH = "INT8 accuracy search"


def _console() -> Any:  # rich's console is made on first use so `--help` stays light
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
    try:  # newer typer vendors click (a separately installed click, e.g. Ray's, is another module)
        from typer._click.globals import get_current_context
    except ImportError:  # typer < 0.20 depends on click
        from click import get_current_context
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
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version,
                                          help="Print the version.")] = False,
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


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def _numbers(text: str, what: str, kind: type, example: str) -> tuple:
    try:
        vals = tuple(kind(t) for t in _csv(text))
    except ValueError:
        vals = ()
    if not vals:
        noun = "integers" if kind is int else "numbers"
        raise BadInput(f"{what} takes comma-separated {noun}, e.g. {example}; got {text!r}")
    return vals


def _ints(text: str, what: str) -> tuple[int, ...]:
    return _numbers(text, what, int, "1,8,32")


def _batch_range(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    br = _ints(text, "--batch-range")
    if len(br) != 3:
        raise BadInput(f"--batch-range takes MIN,OPT,MAX; got {text!r}")
    return br  # type: ignore[return-value]


# --------------------------------------------------------------------------- options shared by commands
ModelOpt = Annotated[str, typer.Option("--model", "-m", rich_help_panel=MODEL, help=(
    "Zoo name: resnet18/34/50/101/152, resnext50_32x4d, wide_resnet50_2, CIFAR resnetN (6n+2), preact_resnetN "
    "(9n+2), or 'default' (the shipped Fashion-MNIST ResNet-20); `resnetx info` lists them."))]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", "-w", rich_help_panel=MODEL, help=(
    "Checkpoint: state_dict .pth, wrapped checkpoint, or TorchScript."))]
ClassesOpt = Annotated[int | None, typer.Option(min=1, rich_help_panel=MODEL,
                                                help="Number of classes (default: from the checkpoint, else 1000/10).")]
ChansOpt = Annotated[int | None, typer.Option(min=1, rich_help_panel=MODEL,
                                              help="Input channels (default: from the checkpoint, else 3).")]
SizeOpt = Annotated[int | None, typer.Option(min=1, rich_help_panel=MODEL, help="Input height = width.",
                                             show_default="the checkpoint's, else 224 ImageNet, 32 CIFAR")]
TrustOpt = Annotated[bool, typer.Option(rich_help_panel=MODEL, help=(
    "Allow pickled Python objects in the checkpoint (runs code from the file!)."))]
MeanOpt = Annotated[str | None, typer.Option(rich_help_panel=MODEL, help=(
    "Normalisation mean, one value or one per channel (e.g. 0.485,0.456,0.406); wins over the checkpoint's."))]
StdOpt = Annotated[str | None, typer.Option(rich_help_panel=MODEL, help="Normalisation std, as --mean.")]
ResizeOpt = Annotated[int | None, typer.Option(min=1, rich_help_panel=MODEL, help=(
    "Resize the shorter side to this before the center crop to --image-size."))]
ClassNamesOpt = Annotated[Path | None, typer.Option(rich_help_panel=MODEL, help=(
    "A text file of class names, one per line, in logits order."))]
OnnxOpt = Annotated[Path | None, typer.Option("--onnx", dir_okay=False, rich_help_panel=MODEL, help=(
    "Your classifier as an ONNX file (one image input, NCHW or NHWC, one logits output) instead of --model: the "
    "reference is the file itself on onnxruntime; give --mean/--std unless its metadata records them."))]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Artifact folder (default artifacts/<model>).")]
DirArg = Annotated[Path, typer.Argument(help="Artifact folder written by resnetx export.")]
ReplaceOutOpt = Annotated[bool, typer.Option(help="Replace --out if it exists.")]
CalibDataOpt = Annotated[str, typer.Option(rich_help_panel=INT8, help=(
    "INT8 calibration data (train split): sample, fashion-mnist, cifar10, imagefolder:DIR."))]
CalibDirOpt = Annotated[Path | None, typer.Option(rich_help_panel=INT8, help="Calibration dataset directory.")]
Int8TargetOpt = Annotated[Int8Target, typer.Option(rich_help_panel=INT8, help=(
    "tensorrt: symmetric int8 activations, float bias; cpu: uint8 activations for onnxruntime x86."))]
DataOpt = Annotated[str, typer.Option(rich_help_panel=DATA, help=(
    "Data: sample (bundled), fashion-mnist, cifar10, imagefolder:DIR, synthetic."))]
OvDeviceOpt = Annotated[str | None, typer.Option(rich_help_panel="Runtime", help=(
    "openvino: the device OpenVINO compiles for, passed through (GPU, NPU: untested here)."), show_default="CPU")]
DataDirOpt = Annotated[Path | None, typer.Option(rich_help_panel=DATA,
                                                 help="Dataset directory (default: the dataset's standard place).")]


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    return None if text is None else _numbers(text, what, float, "0.485,0.456,0.406")


def _model_spec(model: str, weights: Path | None, num_classes: int | None, in_chans: int | None,
                image_size: int | None, trust: bool, mean: str | None = None, std: str | None = None,
                resize: int | None = None, class_names: Path | None = None,
                onnx: Path | None = None) -> ModelSpec | OnnxSpec:
    from pipeline.zoo import ModelSpec, OnnxSpec

    if onnx is not None:
        zoo = [flag for flag, on in (("--model", model != "default"), ("--weights", weights),
                                     ("--num-classes", num_classes), ("--in-chans", in_chans),
                                     ("--image-size", image_size), ("--trust-checkpoint", trust)) if on]
        if zoo:
            raise BadInput(f"--onnx is the model: {', '.join(zoo)} name another one; give one or the other (the "
                           "file's input and output give its shape)")
        return OnnxSpec(onnx, _floats(mean, "--mean"), _floats(std, "--std"), resize, class_names)
    if trust:
        log.warning("--trust-checkpoint: the checkpoint may run arbitrary code while loading")
    return ModelSpec(arch=model, num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                     weights=weights, trust_checkpoint=trust, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                     resize=resize, class_names=class_names)


def _announce_model(info: ModelInfo) -> None:
    if not info.trained:
        log.warning("note: %s has random weights (no --weights): parity is meaningful, accuracy is not", info.arch)


# --------------------------------------------------------------------------- train
@app.command(cls=_Command)
@handled
def train(
    model: Annotated[str, typer.Option(help="Zoo architecture to train, e.g. resnet20.",
                                       rich_help_panel=MODEL)] = "resnet20",
    data: Annotated[str, typer.Option(help="Training dataset: fashion-mnist, cifar10, imagefolder:DIR (a tenth "
                                            "of its images, across its classes, held out to score).",
                                      rich_help_panel=DATA)] = "fashion-mnist",
    data_dir: DataDirOpt = None,
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs.")] = 15,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size.")] = 128,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (SGD, Nesterov momentum).")] = 0.1,
    weight_decay: Annotated[float, typer.Option(min=0.0, help="Weight decay on conv/linear weights.")] = 5e-4,
    schedule: Annotated[Schedule, typer.Option(help="Learning-rate schedule: cosine, or step (x0.1 at 50% and "
                                               "75%).")] = Schedule.cosine,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for init, order and augmentation.")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="Train on N images only: the first, or an image "
                                              "folder's drawn seeded across its classes.")] = None,
    eval_limit: Annotated[int | None, typer.Option(min=1, help="Score on N test images only (an image folder: N "
                                                   "of the tenth it holds out).")] = None,
    image_size: Annotated[int | None, typer.Option(min=8, help="Train at this image size (resized once); default: "
                                                   "the data's.")] = None,
    device: Annotated[Device, typer.Option(help="Training device.")] = Device.auto,
    out: Annotated[Path, typer.Option(help="Checkpoint to write (best epoch); a .json card goes beside it.")] = (
        Path("model.pt")),
) -> None:
    """Train a zoo model (SGD + cosine, crop/flip augmentation); the best epoch is saved for `export --weights`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.train import TrainConfig
    from pipeline.train import train as run_train

    cfg = TrainConfig(model=model, data=data, data_dir=data_dir, epochs=epochs, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, schedule=schedule.value, flip=flip, seed=seed, limit=limit,
                      eval_limit=eval_limit, device=device.value, out=out, image_size=image_size)
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


# --------------------------------------------------------------------------- export
def _do_export(opts: ExportOptions) -> ExportResult:
    from pipeline.export import export as run_export
    from pipeline.report import export_table

    console = _console()
    with console.status("exporting...") as status:
        result = run_export(opts, on_step=lambda ev: status.update(f"{ev.step}: {ev.status} {ev.file or ''}"),
                            on_progress=status.update)
    if not opts.engines_only:
        _announce_model(result.info)
    console.print(export_table(result))
    for n in result.notices:
        console.print(f"[yellow]note:[/] {escape(n)}")
    if result.missed:
        raise CheckFailed(result.missed)
    return result


PRECISION_HELP = ("Comma-separated: fp32,fp16,int8 (fp32 is always made: it is the source); with --engines-only, "
                  "default every graph in the folder.")
STATIC_HELP = "Bake this batch size into the graph and engines (implies --no-dynamic-batch; default 1 with it)."
KEEP_HELP = "Layers (module paths, e.g. layer3.1.conv2) kept in fp32 in fp16 graphs and unquantized in int8."
ENDS_HELP = ("Also quantize the stem conv and the classifier (kept float by default: most accuracy, least speed; "
             "--max-accuracy-drop quantizes them and reverts them if they cost accuracy).")
REF_HELP = ("Store fp32 PyTorch logits on verify's default inputs (sample data) in reports/reference.sample.N.npz, "
            "so verify need not re-run PyTorch; 0: skip.")
FORCE_HELP = "Rebuild everything asked for, ignoring the cache; the folder then holds only what this export made."
EQUALIZE_HELP = ("Cross-layer equalize conv -> ReLU -> conv pairs before calibrating (the fp32 function is kept; a "
                 "few loud channels no longer set a whole tensor's int8 range).")
BUDGET_HELP = ("Search for an int8 graph within this many points of top-1 of the fp32 graph, on held-out labelled "
               "images, keeping as many layers in int8 as it can.")
ACC_DATA_HELP = ("Held-out labelled images that judge the search (default: the test split of --calib-data; for "
                 "sample, the images calibration did not use; imagefolder needs its own validation folder).")
FALLBACK_HELP = ("What layers kept out of int8 compute in: auto (fp16 for the tensorrt recipe where accuracy "
                 "allows, else fp32), fp16, fp32.")
ENGINES_ONLY_HELP = ("Build engines from the ONNX graphs already in --out, without the model or its weights: for a "
                     "folder copied to the GPU it will run on (engines are tied to their GPU and TensorRT version).")


CalibSamplesOpt = Annotated[int, typer.Option(min=1, help="Calibration images (seeded random subset).",
                                              rich_help_panel=INT8)]
CalibMethodOpt = Annotated[CalibMethod, typer.Option(rich_help_panel=INT8, help=(
    "Range estimate: percentile (99.99th of |x|), mean-max (mean over images of each image's min/max), max, "
    "entropy."))]
AccDirOpt = Annotated[Path | None, typer.Option(help="Accuracy dataset directory.", rich_help_panel=SEARCH)]
AccSamplesOpt = Annotated[int, typer.Option(min=1, help="Held-out images that judge the search (or all).",
                                            rich_help_panel=SEARCH)]
AccMarginOpt = Annotated[float | None, typer.Option(min=0, rich_help_panel=SEARCH, show_default="one std. error",
                                                     help=(
    "Points a graph's drop must stay below the budget by on the judging images, so the budget also holds on "
    "others; 0 judges the drop alone (as NNCF does)."))]
SearchSecondsOpt = Annotated[float, typer.Option(min=1, rich_help_panel=SEARCH, help=(
    "Time cap of the search; then the best graph found is kept (exit 1 if over budget)."))]
EngineOpt = Annotated[EngineChoice, typer.Option(rich_help_panel=TRT, help=(
    "TensorRT engines: auto (tensorrt, else rtx, else none), tensorrt, rtx, none."))]
BatchRangeOpt = Annotated[str | None, typer.Option(rich_help_panel=TRT, help=(
    "Engine profile MIN,OPT,MAX (default 1,8,64 ImageNet sizes; 1,32,256 small)."))]
WorkspaceOpt = Annotated[int | None, typer.Option(min=1, help="Builder workspace limit (MiB).", rich_help_panel=TRT)]
RtxOpt = Annotated[str | None, typer.Option(rich_help_panel=TRT, help=(
    "TensorRT-RTX targets, e.g. SM86,SM89 (default SM80,SM86,SM89,SM120)."))]
OptLevelOpt = Annotated[int, typer.Option(min=0, max=5, help="Builder optimization level.", rich_help_panel=TRT)]
CompatOpt = Annotated[HardwareCompat, typer.Option(rich_help_panel=TRT, help=(
    "Enterprise TensorRT: where its engines may run: none (the GPU kind built on), same-cc (any GPU of its compute "
    "capability), ampere+ (any compute 8.0+, at some speed); recorded in the engine's name."))]


@app.command(cls=_Command)
@handled
def export(
    model: ModelOpt = "default",
    weights: WeightsOpt = None,
    num_classes: ClassesOpt = None,
    in_chans: ChansOpt = None,
    image_size: SizeOpt = None,
    trust_checkpoint: TrustOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    resize: ResizeOpt = None,
    class_names: ClassNamesOpt = None,
    onnx: OnnxOpt = None,
    out: OutOpt = None,
    precision: Annotated[str | None, typer.Option(help=PRECISION_HELP, show_default="fp32")] = None,
    exporter: Annotated[Exporter, typer.Option(help="dynamo (torch.export) or legacy (TorchScript).")] = "dynamo",
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = DEFAULT_OPSET,
    dynamic_batch: Annotated[bool, typer.Option(help="Dynamic batch dimension (--no-dynamic-batch: batch 1).")] = True,
    static_batch: Annotated[int | None, typer.Option(min=1, help=STATIC_HELP)] = None,
    calib_data: CalibDataOpt = "sample",
    calib_dir: CalibDirOpt = None,
    calib_samples: CalibSamplesOpt = DEFAULT_CALIB_SAMPLES,
    calib_method: CalibMethodOpt = CalibMethod.percentile,
    int8_target: Int8TargetOpt = Int8Target.tensorrt,
    keep_fp32: Annotated[str | None, typer.Option(help=KEEP_HELP, rich_help_panel=INT8)] = None,
    int8_quantize_ends: Annotated[bool, typer.Option(help=ENDS_HELP, rich_help_panel=INT8)] = False,
    int8_equalize: Annotated[bool, typer.Option(help=EQUALIZE_HELP, rich_help_panel=INT8)] = True,
    max_accuracy_drop: Annotated[float | None, typer.Option(min=0, help=BUDGET_HELP, rich_help_panel=SEARCH)] = None,
    accuracy_data: Annotated[str | None, typer.Option(help=ACC_DATA_HELP, rich_help_panel=SEARCH)] = None,
    accuracy_dir: AccDirOpt = None,
    accuracy_samples: AccSamplesOpt = 2000,
    accuracy_margin: AccMarginOpt = None,
    fallback: Annotated[Fallback, typer.Option(help=FALLBACK_HELP, rich_help_panel=SEARCH)] = Fallback.auto,
    search_seconds: SearchSecondsOpt = 600.0,
    engine: EngineOpt = EngineChoice.none,
    batch_range: BatchRangeOpt = None,
    workspace_mb: WorkspaceOpt = None,
    opt_level: OptLevelOpt = DEFAULT_OPT_LEVEL,
    rtx_compute_capability: RtxOpt = None,
    hardware_compat: CompatOpt = HardwareCompat.none,
    reference_samples: Annotated[int, typer.Option(min=0, help=REF_HELP)] = DEFAULT_REFERENCE_SAMPLES,
    force: Annotated[bool, typer.Option(help=FORCE_HELP)] = False,
    engines_only: Annotated[bool, typer.Option(help=ENGINES_ONLY_HELP, rich_help_panel=TRT)] = False,
) -> None:
    """Export a model to ONNX (fp32, fp16, int8) and TensorRT engines, with a manifest."""
    from pipeline.export import ExportOptions
    from pipeline.precisions import parse_precisions

    _do_export(ExportOptions(
        model=_model_spec(model, weights, num_classes, in_chans, image_size, trust_checkpoint, mean, std, resize,
                          class_names, onnx),
        out=out or Path("artifacts") / (onnx.stem if onnx else model),
        precisions=parse_precisions(precision, with_source=False) if precision else None, exporter=exporter,
        opset=opset, batch=static_batch or (None if dynamic_batch else 1), calib_data=calib_data, calib_dir=calib_dir,
        calib_samples=calib_samples, calib_method=calib_method, int8_target=int8_target, keep_fp32=_csv(keep_fp32),
        int8_quantize_ends=int8_quantize_ends, int8_equalize=int8_equalize, max_accuracy_drop=max_accuracy_drop,
        accuracy_data=accuracy_data, accuracy_dir=accuracy_dir, accuracy_samples=accuracy_samples, fallback=fallback,
        accuracy_margin=accuracy_margin, search_seconds=search_seconds, engine=engine,
        batch_range=_batch_range(batch_range), workspace_mb=workspace_mb, opt_level=opt_level, force=force,
        rtx_compute_capabilities=_csv(rtx_compute_capability) or None, hardware_compat=hardware_compat,
        engines_only=engines_only, reference_samples=reference_samples))


# --------------------------------------------------------------------------- verify
def _do_verify(opts: VerifyOptions) -> VerifyReport:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

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
    _print_verify(console, report)
    return report


def _print_verify(console: Any, report: VerifyReport) -> None:
    """The table, reasons, localisation and notes; then the report and verdicts are written and the verdict line
    printed. A report that cannot be written (a read-only folder) still leaves the verdict on screen: exit 2."""
    from pipeline.artifacts import read_manifest
    from pipeline.report import localization_table, verify_reasons, verify_table, write_verify_json
    from pipeline.verdicts import VERDICTS, record_verdicts

    console.print(verify_table(report, width=console.width))
    for line in verify_reasons(report):
        console.print(line)
    for r in report.rows:
        if r.localization is not None:
            console.print(localization_table(r.artifact, r.localization))
            if r.localization.suggestion:  # one line however long: it is a command to copy
                console.print(f"try: {escape(r.localization.suggestion)}", soft_wrap=True)
        elif r.localization_error:
            console.print(f"[yellow]localisation of {r.artifact} failed:[/] {escape(r.localization_error)}")
    for n in report.notes:
        console.print(f"[yellow]note:[/] {escape(n)}")
    unwritten = None
    try:
        if write_verify_json(report) is not None:
            record_verdicts(report.folder, report.verdicts(read_manifest(report.folder)))
    except OSError as e:
        unwritten = e
    ref = "stored reference logits" if report.reference_stored else "reference computed now"
    verdict = ("[green]PASS[/]" if report.passed else "[yellow]NOTHING RAN[/]" if report.nothing_ran
               else "[red]FAIL[/]")
    where = (f"report: {escape(str(report.report_path))}, verdicts: {escape(str(report.folder / VERDICTS))}"
             if report.report_path else "no report written (the folder's reports keep the last verdicts)")
    console.print(f"{verdict} in {report.seconds:.1f} s ({ref}); {where if unwritten is None else 'NOT WRITTEN'}")
    if unwritten is not None:
        why = unwritten.strerror or str(unwritten)
        raise BadInput(f"the verify report {report.report_path} could not be written ({why}); the verdict above is "
                       f"not recorded: make {report.folder / 'reports'} writable and verify again")


def _verdict(verify_report: VerifyReport | None = None, bench_report: BenchReport | None = None) -> None:
    """Exit 3 when a command judged or timed nothing (every runtime it tried was missing or failed), 1 when a
    verify failed."""
    from resnetx.errors import BackendUnavailable

    if verify_report is not None and verify_report.nothing_ran:
        raise BackendUnavailable(f"nothing was verified: {verify_report.rows[0].skipped}")
    if bench_report is not None and bench_report.nothing_ran:
        raise BackendUnavailable(f"nothing was benchmarked: {bench_report.rows[0].error}")
    if verify_report is not None and not verify_report.passed:
        failed = [r.artifact for r in verify_report.rows if not r.passed and r.skipped is None]
        raise CheckFailed(f"verify failed for {', '.join(failed)}: see the table and reasons above")


@app.command(cls=_Command)
@handled
def verify(
    folder: DirArg = Path("artifacts/default"),
    device: Annotated[Device, typer.Option(help="Where candidates run; the reference is fp32 PyTorch on the "
                                           "CPU.")] = Device.cpu,
    samples: Annotated[int, typer.Option(min=1, help="Inputs: real images plus 4 extreme ones (zeros, noise, "
                                         "large); an image folder is drawn seeded across its classes.")] = (
        DEFAULT_REFERENCE_SAMPLES),
    data: DataOpt = "sample",
    data_dir: DataDirOpt = None,
    precision: Annotated[str | None, typer.Option(help="Only these precisions, e.g. fp16,int8.")] = None,
    runtime: Annotated[str | None, typer.Option(help=f"Only these runtimes: {runtimes_help()}.",
                                                show_default="ort; +trt on cuda")] = None,
    rtol_l2: Annotated[float | None, typer.Option(rich_help_panel=TOL, help=(
        f"Override the rel. L2 bar (defaults: {tolerance_help('rel_l2')})."))] = None,
    min_agreement: Annotated[float | None, typer.Option(min=0, max=1, rich_help_panel=TOL, help=(
        f"Override the top-1 agreement bar ({tolerance_help('top1_agreement')})."))] = None,
    max_acc_drop: Annotated[float | None, typer.Option(min=0, rich_help_panel=TOL, help=(
        f"Override the accuracy-drop bar in points ({tolerance_help('accuracy_drop')})."))] = None,
    localize: Annotated[bool, typer.Option(help="Always localise: error by depth and the first divergent layer "
                                           "(done anyway on failure).")] = False,
    ov_device: OvDeviceOpt = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size for the runs (default 16 at ImageNet "
                                                   "sizes, 64 for small images).")] = None,
) -> None:
    """Check every artifact against the fp32 PyTorch reference; exit 1 if any fails its tolerance."""
    from pipeline.verify import VerifyOptions

    opts = VerifyOptions(folder=folder, device=device, samples=samples, data=data, data_dir=data_dir,
                         batch_size=batch_size, precisions=_csv(precision) or None, runtimes=_csv(runtime) or None,
                         rel_l2=rtol_l2, top1_agreement=min_agreement, accuracy_drop=max_acc_drop, localize=localize,
                         ov_device=ov_device)
    _verdict(verify_report=_do_verify(opts))


# --------------------------------------------------------------------------- bench
def _do_bench(opts: BenchOptions, compare: Path | None = None) -> BenchReport:
    from pipeline.bench import bench as run_bench
    from pipeline.bench import compare_reports
    from pipeline.report import bench_not_run, bench_table, compare_table, write_bench_files

    console = _console()
    with console.status("benchmarking...") as status:
        def on_row(row: Any) -> None:
            status.update(f"{row.runtime} batch {row.batch}: "
                          + (f"{row.latency_ms['p50']:.3f} ms" if row.latency_ms else escape(row.error or "")))

        report = run_bench(opts, on_row=on_row, on_progress=lambda text: status.update(escape(text)))
    if not report.nothing_ran:
        write_bench_files(report, report.reports)
    console.print(bench_table(report, width=console.width))
    for line in bench_not_run(report):
        console.print(line)
    for n in report.notes:
        console.print(f"[yellow]note:[/] {escape(n)}")
    for line in report.recommendations:
        console.print(f"[bold]recommended:[/] {escape(line)}", soft_wrap=True)
    if report.nothing_ran:
        console.print("[yellow]NOTHING RAN[/]: no report written (reports/<kind>/bench.* keep the last run)")
        return report
    if compare is not None:
        ratios = compare_reports(report, compare)
        console.print(compare_table(ratios, compare) if ratios else
                      f"[yellow]--compare:[/] no timed row of {escape(str(compare))} has this run's runtime, "
                      "precision, device and batch size")
    console.print(f"reports: {escape(str(report.reports))}/bench.{{json,md,csv,png}}")
    return report


RUNTIME_HELP = f"Runtimes: {runtimes_help()}."
COMPILE_MODE_HELP = ("torch.compile mode: max-autotune-no-cudagraphs (minutes of autotuning, cached in the folder; "
                     "--cuda-graph adds graphs), max-autotune, reduce-overhead, default (fastest to compile).")
CUDNN_HELP = ("torch CUDA: let cuDNN time its algorithms per shape (during warm-up), as onnxruntime's CUDA provider "
              "does here.")
PEAK_HELP = ("The device's compute peak at this precision in TFLOP/s (e.g. 725 for an H100's measured fp16): adds % "
             "of peak per row.")


@app.command(cls=_Command)
@handled
def bench(
    folder: DirArg = Path("artifacts/default"),
    runtime: Annotated[str | None, typer.Option(help=RUNTIME_HELP, rich_help_panel=RUNTIME,
                                                show_default="torch,ort; +trt on cuda")] = None,
    precision: Annotated[str | None, typer.Option(help="Only these precisions.", rich_help_panel=RUNTIME)] = None,
    device: Annotated[Device, typer.Option(help="cpu, cuda, or auto (cuda when a GPU is visible).",
                                           rich_help_panel=RUNTIME)] = Device.cpu,
    batch: Annotated[str, typer.Option(help="Batch sizes, comma-separated, or auto (per runtime, double from 1 "
                                       "until throughput grows by less than 5%).")] = "1,8,32",
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up runs (at least).")] = 10,
    warmup_seconds: Annotated[float, typer.Option(min=0, help="Warm-up time (at least).")] = 0.5,
    iters: Annotated[int, typer.Option(min=1, help="Timed runs (at least).")] = 50,
    min_seconds: Annotated[float, typer.Option(min=0, help="Timed seconds (at least).")] = 1.0,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved passes over all runtimes (iters and seconds are "
                                        "totals): ratios measured side by side.")] = 3,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for onnxruntime and torch.",
                                                rich_help_panel=RUNTIME)] = None,
    channels_last: Annotated[bool, typer.Option(help="torch: channels_last memory format.",
                                                rich_help_panel=RUNTIME)] = False,
    cuda_graph: Annotated[bool, typer.Option(help="torch/trt: capture CUDA graphs per batch size.",
                                             rich_help_panel=RUNTIME)] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch: torch.compile (compile time reported apart).",
                                          rich_help_panel=RUNTIME)] = False,
    compile_mode: Annotated[CompileMode, typer.Option(help=COMPILE_MODE_HELP, rich_help_panel=RUNTIME)] = (
        CompileMode.max_autotune_no_cudagraphs),
    prefer_nhwc: Annotated[bool, typer.Option(help="ort CUDA: prefer NHWC kernels.", rich_help_panel=RUNTIME)] = False,
    cudnn_benchmark: Annotated[bool, typer.Option(help=CUDNN_HELP, rich_help_panel=RUNTIME)] = True,
    include_transfers: Annotated[bool, typer.Option(help="GPU: time host->device->host copies too (CPU always "
                                                    "does).")] = False,
    accuracy: Annotated[bool, typer.Option(help="Top-1 accuracy column on --data.")] = True,
    data: DataOpt = "sample",
    data_dir: DataDirOpt = None,
    compare: Annotated[Path | None, typer.Option(exists=True, dir_okay=False,
                                                 help="An earlier bench.json: print ratios per row.")] = None,
    peak_tflops: Annotated[float | None, typer.Option(min=0, help=PEAK_HELP)] = None,
    ov_device: OvDeviceOpt = None,
) -> None:
    """Latency percentiles, throughput, memory and accuracy for runtimes x precisions x batch sizes."""
    from pipeline.bench import BenchOptions

    auto = batch.strip().lower() == "auto"
    opts = BenchOptions(folder=folder, runtimes=_csv(runtime) or None, precisions=_csv(precision) or None,
                        device=device, batches=(1,) if auto else _ints(batch, "--batch"), auto_batch=auto,
                        warmup=warmup, warmup_seconds=warmup_seconds,
                        iters=iters, min_seconds=min_seconds, rounds=rounds, threads=threads,
                        channels_last=channels_last, cuda_graph=cuda_graph, compile=compile, compile_mode=compile_mode,
                        prefer_nhwc=prefer_nhwc, cudnn_benchmark=cudnn_benchmark, include_transfers=include_transfers,
                        accuracy=accuracy, data=data, data_dir=data_dir, peak_tflops=peak_tflops, ov_device=ov_device)
    _verdict(bench_report=_do_bench(opts, compare))


# --------------------------------------------------------------------------- run
@app.command(cls=_Command)
@handled
def run(
    model: ModelOpt = "default",
    weights: WeightsOpt = None,
    num_classes: ClassesOpt = None,
    in_chans: ChansOpt = None,
    image_size: SizeOpt = None,
    trust_checkpoint: TrustOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    resize: ResizeOpt = None,
    class_names: ClassNamesOpt = None,
    onnx: OnnxOpt = None,
    out: OutOpt = None,
    precision: Annotated[str, typer.Option(help="Precisions to export, verify and bench.")] = "fp32,fp16,int8",
    engine: Annotated[EngineChoice, typer.Option(help="TensorRT engines to build (auto/tensorrt/rtx/none).")] = (
        EngineChoice.auto),
    device: Annotated[Device, typer.Option(help="Where verify and bench run.")] = Device.auto,
    batch: Annotated[str, typer.Option(help="Bench batch sizes.")] = "1,8,32",
    data: DataOpt = "sample",
    data_dir: DataDirOpt = None,
    calib_data: CalibDataOpt = "sample",
    calib_dir: CalibDirOpt = None,
    calib_samples: CalibSamplesOpt = DEFAULT_CALIB_SAMPLES,
    int8_target: Int8TargetOpt = Int8Target.tensorrt,
    iters: Annotated[int, typer.Option(min=1, help="Bench: timed runs (at least).")] = 50,
    min_seconds: Annotated[float, typer.Option(min=0, help="Bench: timed seconds (at least).")] = 1.0,
    rounds: Annotated[int, typer.Option(min=1, help="Bench: interleaved passes over all runtimes.")] = 3,
) -> None:
    """export -> verify -> bench with defaults: the whole job in one command (--data: what verify and bench's
    accuracy use; --calib-data: what int8 is calibrated on); one verdict line at the end."""
    from pipeline.bench import BenchOptions
    from pipeline.data import open_dataset
    from pipeline.export import ExportOptions
    from pipeline.precisions import parse_precisions
    from pipeline.verify import VerifyOptions

    # every option is checked, and the data opened, before minutes of export
    out = out or Path("artifacts") / (onnx.stem if onnx else model)
    dev = device.resolve()
    spec = _model_spec(model, weights, num_classes, in_chans, image_size, trust_checkpoint, mean, std, resize,
                       class_names, onnx)
    exp = ExportOptions(model=spec, out=out, precisions=parse_precisions(precision), engine=engine,
                        calib_data=calib_data, calib_dir=calib_dir, calib_samples=calib_samples,
                        int8_target=int8_target, reference_data=data, reference_data_dir=data_dir)
    ver = VerifyOptions(folder=out, device=dev, data=data, data_dir=data_dir)
    ben = BenchOptions(folder=out, device=dev, batches=_ints(batch, "--batch"), data=data, data_dir=data_dir,
                       iters=iters, min_seconds=min_seconds, rounds=rounds)
    open_dataset(data, data_dir=data_dir)
    if dev == "cuda":
        from runtimes.base import require_cuda

        require_cuda("; nothing was exported")
    _run_all(exp, ver, ben)


def _run_all(exp: ExportOptions, ver: VerifyOptions, ben: BenchOptions) -> None:
    """export, verify, bench; then one line with the whole job's verdict, and its exit code."""
    _do_export(exp)
    report = _do_verify(ver)
    bench_report = _do_bench(ben)
    timed = sum(r.latency_ms is not None for r in bench_report.rows)
    verdict = "[green]PASS[/]" if report.passed and timed else "[red]FAIL[/]" if not report.passed else \
        "[yellow]NOTHING TIMED[/]"
    acc = f"; bench's accuracy column on {escape(bench_report.accuracy_data)}" if bench_report.accuracy_data else ""
    _console().print(f"resnetx run: {verdict}: exported to {escape(str(exp.out))}; verify "
                     f"{'passed' if report.passed else 'FAILED'} on {report.samples} inputs of {escape(report.data)}"
                     f"{acc}; {timed} of {len(bench_report.rows)} bench rows timed", soft_wrap=True)
    _verdict(verify_report=report, bench_report=bench_report)


# --------------------------------------------------------------------------- info
@app.command(cls=_Command)
@handled
def info(
    folder: Annotated[Path | None, typer.Argument(help="An artifact folder: show its provenance and check every "
                                                  "file.")] = None,
) -> None:
    """Versions, devices and providers here; with a folder, what it holds and whether it is intact (exit 1 if not)."""
    if folder is None:
        _console().print(_machine_table())
        return
    from pipeline.audit import audit_folder
    from pipeline.remake import remake_command
    from pipeline.report import folder_notes, folder_table

    audit = audit_folder(folder)
    console = _console()
    console.print(folder_table(audit))
    for line in folder_notes(audit):
        console.print(line)
    m = audit.manifest
    line = remake_command(m, folder, tuple(m.graphs))
    console.print(f"re-make with: {escape(line)}", soft_wrap=True)  # one line to copy
    if not audit.intact:
        raise CheckFailed(f"{folder}: files differ from the manifest or are missing (see the table above)")


@app.command(cls=_Command)
@handled
def triton(
    folder: DirArg = Path("artifacts/default"),
    out: Annotated[Path, typer.Option(help="The model repository to write (replaced only with --force).")] = Path(
        "model_repository"),
    name: Annotated[str | None, typer.Option(help="Model name prefix (default: the architecture); models are "
                                             "NAME_PRECISION_onnx and NAME_PRECISION_trt.")] = None,
    precision: Annotated[str | None, typer.Option(help="Only these precisions, e.g. fp16,int8.")] = None,
    max_batch: Annotated[int | None, typer.Option(min=1, help="max_batch_size (default: the engine profile's MAX; "
                                                  "64 for ONNX graphs without engines).")] = None,
    instances: Annotated[int, typer.Option(min=1, help="Instances of each model (instance_group count).")] = 1,
    device: Annotated[ServeDevice, typer.Option(help="Where the ONNX models run (engines need a GPU; cpu leaves "
                                                "them out).")] = ServeDevice.gpu,
    queue_delay_us: Annotated[int, typer.Option(min=0, help="Dynamic batching: how long a request may wait for "
                                                "others, in microseconds.")] = 100,
    allow_unverified: Annotated[bool, typer.Option(help="Write it even if the folder's last verify failed or is "
                                                   "missing or stale.")] = False,
    force: ReplaceOutOpt = False,
) -> None:
    """Write a Triton Inference Server model repository from a verified artifact folder."""
    from pipeline.precisions import parse_precisions
    from pipeline.report import triton_table
    from pipeline.triton import TritonOptions
    from pipeline.triton_repo import write_repository

    opts = TritonOptions(folder=folder, out=out, name=name, max_batch=max_batch, instances=instances,
                         device=device.value, queue_delay_us=queue_delay_us, allow_unverified=allow_unverified,
                         force=force,
                         precisions=parse_precisions(precision, with_source=False) if precision else None)
    result = write_repository(opts)
    console = _console()
    console.print(triton_table(result))
    for line in result.notes:
        console.print(f"note: {escape(line)}")
    console.print(f"serve with: tritonserver --model-repository {escape(str(result.repo))}  "
                  f"(see {escape(str(result.repo / 'README.md'))})", soft_wrap=True)


class DsMode(str, Enum):
    primary = "primary"
    secondary = "secondary"


@app.command(cls=_Command)
@handled
def deepstream(
    folder: DirArg = Path("artifacts/default"),
    out: Annotated[Path, typer.Option(help="The config folder to write (replaced only with --force).")] = Path(
        "deepstream"),
    precision: Annotated[str, typer.Option(help="The graph nvinfer runs: fp32, fp16 or int8.")] = "fp16",
    kind: Annotated[str | None, typer.Option(help="The GPU kind it deploys to (L4, A10G, orin, ...): names the "
                                             "folder's enterprise TensorRT engine for it.")] = None,
    batch: Annotated[int | None, typer.Option(min=1, help="batch-size (within the engine's profile).")] = None,
    mode: Annotated[DsMode, typer.Option(help="primary: whole frames; secondary: the objects a detector "
                                         "found.")] = DsMode.primary,
    fold_preprocessing: Annotated[bool, typer.Option(help="Ship a copy of the graph whose first convolution "
                                                     "absorbs the per-channel std, so nvinfer's single "
                                                     "net-scale-factor is exact.")] = False,
    data: DataOpt = "sample",
    data_dir: DataDirOpt = None,
    samples: Annotated[int, typer.Option(min=1, help="Images the preprocessing fidelity is measured on.")] = (
        DEFAULT_REFERENCE_SAMPLES),
    allow_unverified: Annotated[bool, typer.Option(help="Write it even if the artifact's standing verdict is a "
                                                   "fail, or it was never verified.")] = False,
    force: ReplaceOutOpt = False,
) -> None:
    """Write a DeepStream nvinfer classifier config of a verified folder, and measure what nvinfer's preprocessing
    costs against the model's own."""
    from pipeline.deepstream import DeepStreamOptions, write_deepstream
    from pipeline.deepstream_readme import fidelity_lines
    from pipeline.precisions import parse_precisions

    chosen = parse_precisions(precision, with_source=False)
    if len(chosen) != 1:
        raise BadInput(f"--precision {precision}: give one of fp32, fp16, int8")
    opts = DeepStreamOptions(folder=folder, out=out, precision=chosen[0], kind=kind, batch=batch, mode=mode.value,
                             fold=fold_preprocessing, data=data, data_dir=data_dir, samples=samples,
                             allow_unverified=allow_unverified, force=force)
    console = _console()
    with console.status("deepstream: measuring nvinfer's preprocessing..."):
        plan = write_deepstream(opts)
    for line in plan.notes + fidelity_lines(plan, opts):
        style = "[red]" if line.startswith("WARNING") else ""
        console.print(f"{style}{escape(line)}{'[/]' if style else ''}", soft_wrap=True)
    engine = plan.engine.file if plan.engine else f"none ({plan.engine_why})"
    console.print(f"wrote {escape(str(out))}/config_infer_{plan.name}.txt: onnx-file {plan.props['onnx-file']}, "
                  f"engine {escape(engine)}, network-mode {plan.props['network-mode']}, batch-size "
                  f"{plan.props['batch-size']}; see {escape(str(out))}/README.md", soft_wrap=True)


FLEET_KINDS_HELP = ("GPU kinds to serve: auto (every kind in the cluster: a node's ray.io/accelerator-type or "
                    "resnetx.io/kind label), or a list such as L4,A10G.")


@app.command(cls=_Command)
@handled
def fleet(
    folder: DirArg = Path("artifacts/default"),
    address: Annotated[str | None, typer.Option(help="A running Ray cluster (ray://host:10001 or host:6379).",
                                                show_default="a local Ray instance on this machine")] = None,
    kinds: Annotated[str, typer.Option(help=FLEET_KINDS_HELP)] = "auto",
    plan: Annotated[bool, typer.Option("--plan", help="Show the nodes and what builds where, then stop.")] = False,
    engine: Annotated[EngineChoice, typer.Option(help="auto (enterprise TensorRT where a node has it and a GPU, "
                                                 "else TensorRT-RTX), rtx or tensorrt.")] = EngineChoice.auto,
    hardware_compat: CompatOpt = HardwareCompat.none,
    rtx_turing: Annotated[bool, typer.Option(help="Also build TensorRT-RTX engines for compute 7.5 (T4).")] = False,
    data: DataOpt = "sample",
    data_dir: DataDirOpt = None,
    samples: Annotated[int, typer.Option(min=1, help="Verify inputs, shipped once to every kind.")] = (
        DEFAULT_REFERENCE_SAMPLES),
    batch: Annotated[str, typer.Option(help="Bench batch sizes on every kind.")] = "1,8,32",
    kind_timeout: Annotated[float, typer.Option(min=1, help="Seconds a kind's task may wait for a node and run; "
                                                "then it is reported not run.")] = 300.0,
    retries: Annotated[int, typer.Option(min=0, help="Runs again on another node of its kind when a node "
                                         "dies.")] = 2,
    force: Annotated[bool, typer.Option(help="Run kinds an earlier fleet run already recorded.")] = False,
    iters: Annotated[int, typer.Option(min=1, help="Bench: timed runs (at least).")] = 50,
    min_seconds: Annotated[float, typer.Option(min=0, help="Bench: timed seconds (at least).")] = 1.0,
) -> None:
    """Build, verify and benchmark the folder's engines on every GPU kind of a Ray cluster; merge the results."""
    from pipeline.fleet import FleetOptions, run_fleet
    from pipeline.fleet_report import fleet_table, merge_reports, plan_table, write_fleet_files

    if engine is EngineChoice.none:
        raise BadInput("--engine none builds nothing: give auto, rtx or tensorrt")
    opts = FleetOptions(folder=folder, address=address, kinds=None if kinds == "auto" else _csv(kinds) or None,
                        plan_only=plan, engine=engine.value, hardware_compat=hardware_compat, rtx_turing=rtx_turing,
                        data=data, data_dir=data_dir, samples=samples, batches=_ints(batch, "--batch"),
                        kind_timeout=kind_timeout, retries=retries, force=force,
                        bench={"iters": iters, "min_seconds": min_seconds, "rounds": 3})
    console = _console()
    with console.status("fleet...") as status:
        run = run_fleet(opts, on_progress=status.update)
    console.print(plan_table(run.plans))
    if plan:
        return
    rep = merge_reports(run)
    paths = write_fleet_files(run.folder, rep)
    console.print(fleet_table(rep))
    for p in rep.parity:
        console.print(f"parity {p['precision']}: {p['kind_a']} vs {p['kind_b']}: top-1 agreement "
                      f"{100 * p['top1_agreement']:.2f}%, rel. L2 {p['rel_l2']:.2e}")
    for kind, line in rep.ship.items():
        console.print(f"{escape(kind)}: {escape(line)}", soft_wrap=True)
    if run.recorded:
        console.print(f"[yellow]note:[/] recorded by an earlier fleet run, not run again: {', '.join(run.recorded)} "
                      "(--force runs them)")
    ray = ", ".join(f"{k} {v:.2f} s" for k, v in run.ray_seconds.items())
    console.print(f"fleet: {len(run.results)} kind(s) run in {run.seconds:.0f} s (Ray's share: {ray or 'none'}); "
                  f"reports: {escape(', '.join(str(p) for p in paths))}", soft_wrap=True)
    if run.failed:
        raise CheckFailed(f"fleet: kind(s) {', '.join(run.failed)} not run or failing their checks: see above")


def _machine_table() -> Any:
    """What this machine has: versions, CUDA, onnxruntime's providers, TensorRT flavours, the zoo."""
    import torch
    from rich.table import Table

    from pipeline.artifacts import tool_versions
    from pipeline.zoo import DEFAULT_WEIGHTS, known_models
    from resnetx.errors import BackendUnavailable
    from resnetx.flavors import FLAVORS, import_flavor

    t = Table(title="resnetx info", title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value")
    for k, v in tool_versions().items():
        t.add_row(k, v)
    cuda = torch.cuda.is_available()
    t.add_row("torch CUDA", f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})" if cuda else
              "no CUDA device")
    try:
        import onnxruntime as ort

        t.add_row("onnxruntime providers", ", ".join(ort.get_available_providers()))
    except ImportError:
        t.add_row("onnxruntime providers", "onnxruntime not installed")
    for flavor, spec in FLAVORS.items():
        try:
            mod = import_flavor(flavor)
            run = "" if cuda else "; running them needs a GPU"
            t.add_row(f"TensorRT ({flavor.value})", f"{spec.module} {mod.__version__}: builds engines{run}")
        except BackendUnavailable as e:
            t.add_row(f"TensorRT ({flavor.value})", f"not available: {e}")
    t.add_row("default model", str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.exists() else "missing (random ResNet-20)")
    t.add_row("models", ", ".join(known_models()))
    return t


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
