"""Every option of the command line, declared once, in groups: a command names the groups it takes (`command`), and
gets what was given as one `Args`. The model options come from the source table, a runtime's own options from its
registry row, the defaults from pipeline/defaults.py and the options objects."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from exporters.calibrate import CalibMethod
from exporters.onnx import DEFAULT_OPSET, Exporter
from exporters.quantize import Fallback, Int8Recipe
from pipeline.defaults import (
    DEFAULT_ACCURACY_SAMPLES,
    DEFAULT_CALIB_SAMPLES,
    DEFAULT_ITERS,
    DEFAULT_MIN_SECONDS,
    DEFAULT_OPT_LEVEL,
    DEFAULT_REFERENCE_SAMPLES,
    DEFAULT_ROUNDS,
    DEFAULT_SEARCH_SECONDS,
    batches_text,
)
from pipeline.model.preprocess import CHANNEL_ORDERS, MODES
from pipeline.precisions import tolerance_help
from pipeline.sources import SPECS
from resnetx.flavors import EngineChoice, HardwareCompat
from resnetx.gpus import rtx_default_help
from runtimes.base import Device
from runtimes.registry import default_label, row_options, runtimes_help

__all__ = ["Args", "command", "P", "MODEL_OPTIONS", "SOURCE_FILES", "EXPORT_OPTIONS", "VERIFY_TOLERANCES",
           "runtime_group", "FOLDER", "DATA_OPTIONS", "BENCH_TIMING", "runtime_values", "MODEL", "DATA", "RUNTIME",
           "INT8", "TRT", "TOL", "SEARCH"]

MODEL, DATA, RUNTIME, INT8, TRT, TOL, SEARCH = ("Model", "Data", "Runtime", "INT8", "TensorRT", "Tolerances",
                                                "INT8 accuracy search")


class Args(dict):  # type: ignore[type-arg]
    """What a command was given, by parameter name (`a.out`, `a["out"]`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def P(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> inspect.Parameter:  # noqa: N802
    """One option (or argument) of a command."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def command(*groups: tuple[inspect.Parameter, ...] | Callable[[], tuple[inspect.Parameter, ...]]
            ) -> Callable[[Callable[[Args], None]], Callable[..., None]]:
    """A command whose parameters are these groups' options, in order (typer reads the signature; a group given as
    a function is read when the command is made, so that runtime rows registered before the CLI is imported get their
    flags); the function gets them as one `Args`."""
    params = [p for g in groups for p in (g() if callable(g) else g)]

    def wrap(fn: Callable[[Args], None]) -> Callable[..., None]:
        def run(**given: Any) -> None:
            fn(Args(given))

        for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(run, attr, getattr(fn, attr))
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return run

    return wrap


def _opt(*names: str, panel: str | None = None, **kw: Any) -> Any:
    return typer.Option(*names, rich_help_panel=panel, **kw)


# --------------------------------------------------------------------------- the model (export, run)
SOURCE_FILES = tuple(s for s in SPECS.values() if s.flag != "--model")  # the sources named by a file flag
MODEL_OPTIONS = (
    P("model", Annotated[str, _opt("--model", "-m", panel=MODEL, help=(
        "Zoo name: resnet18/34/50/101/152, resnext50_32x4d, wide_resnet50_2, CIFAR resnetN (6n+2), preact_resnetN "
        "(9n+2), or 'default' (the shipped Fashion-MNIST ResNet-20); `resnetx info` lists them."))], "default"),
    P("weights", Annotated[Path | None, _opt("--weights", "-w", panel=MODEL, help=(
        "Checkpoint: state_dict .pth, wrapped checkpoint, TorchScript or .safetensors."))], None),
    *(P(s.flag.removeprefix("--"), Annotated[Path | None, _opt(s.flag, panel=MODEL, dir_okay=False, help=s.cli_help)],
        None) for s in SOURCE_FILES),
    P("num_classes", Annotated[int | None, _opt(min=1, panel=MODEL, help=(
        "Number of classes (default: from the checkpoint, else 1000/10)."))], None),
    P("in_chans", Annotated[int | None, _opt(min=1, panel=MODEL, help=(
        "Input channels (default: from the checkpoint, else 3)."))], None),
    P("image_size", Annotated[int | None, _opt(min=1, panel=MODEL, help="Input height = width.", show_default=(
        "the checkpoint's, else 224 ImageNet, 32 CIFAR; a Keras model's own"))], None),
    P("trust_checkpoint", Annotated[bool, _opt(panel=MODEL, help=(
        "Allow pickled Python objects in the checkpoint (runs code from the file!)."))], False),
    P("preprocess", Annotated[str | None, _opt(panel=MODEL, help=(
        f"The model's preprocessing is Keras's preprocess_input mode: {', '.join(MODES)} (caffe: BGR, 0-255 pixels "
        "minus the ImageNet means; tf: [-1, 1]; torch: ImageNet mean/std on [0, 1])."))], None),
    P("mean", Annotated[str | None, _opt(panel=MODEL, help=(
        "Normalisation mean on [0, 1] pixels, one value or one per channel in the model's channel order (e.g. "
        "0.485,0.456,0.406); wins over the checkpoint's."))], None),
    P("std", Annotated[str | None, _opt(panel=MODEL, help="Normalisation std, as --mean (default 1 with "
                                        "--mean-image).")], None),
    P("mean_image", Annotated[Path | None, _opt(panel=MODEL, dir_okay=False, help=(
        "A per-pixel mean (.npy, (H, W, C) or (C, H, W), on [0, 1] pixels, the model's channel order) subtracted "
        "after resizing, as Keras's CIFAR ResNet example does."))], None),
    P("channel_order", Annotated[str | None, _opt(panel=MODEL, help=(
        f"The channel order the model was trained on: {' or '.join(CHANNEL_ORDERS)} (images are decoded as RGB; "
        "bgr flips them)."))], None),
    P("resize", Annotated[int | None, _opt(min=1, panel=MODEL, help=(
        "Resize the shorter side to this before the center crop to the input size."))], None),
    P("class_names", Annotated[Path | None, _opt(panel=MODEL, help=(
        "A text file of class names, one per line, in output order."))], None),
    P("strip_softmax", Annotated[bool, _opt(panel=MODEL, help=(
        "The model ends in a softmax: export logits instead of probabilities."))], False),
    P("out", Annotated[Path | None, _opt("--out", "-o", help="Artifact folder (default artifacts/<model>).")], None),
)

PRECISION_HELP = ("Comma-separated: fp32,fp16,int8 (fp32 is always made: it is the source); with --engines-only, "
                  "default every graph in the folder.")
STATIC_HELP = "Bake this batch size into the graph and engines (implies --no-dynamic-batch; default 1 with it)."
KEEP_HELP = "Layers (module paths, e.g. layer3.1.conv2) kept in fp32 in fp16 graphs and unquantized in int8."
ENDS_HELP = ("Also quantize the stem conv and the classifier (kept float by default: most accuracy, least speed; "
             "--max-accuracy-drop quantizes them and reverts them if they cost accuracy).")
REF_HELP = ("Store the fp32 reference's outputs on verify's default inputs (sample data) in "
            "reports/reference.sample.N.npz, so verify need not run the source again; 0: skip.")
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

CALIB_OPTIONS = (
    P("calib_data", Annotated[str, _opt(panel=INT8, help=(
        "INT8 calibration data (train split): sample, fashion-mnist, cifar10, imagefolder:DIR."))], "sample"),
    P("calib_dir", Annotated[Path | None, _opt(panel=INT8, help="Calibration dataset directory.")], None),
    P("calib_samples", Annotated[int, _opt(min=1, panel=INT8, help="Calibration images (seeded random subset).")],
      DEFAULT_CALIB_SAMPLES),
    P("int8_recipe", Annotated[Int8Recipe, _opt("--int8-recipe", "--int8-target", panel=INT8, help=(
        "The int8 recipe: tensorrt (symmetric int8 activations, float bias), or cpu (uint8 activations for "
        "onnxruntime x86)."))], Int8Recipe.tensorrt),
)

EXPORT_OPTIONS = (
    P("precision", Annotated[str | None, _opt(help=PRECISION_HELP, show_default="fp32")], None),
    P("exporter", Annotated[Exporter, _opt(help="dynamo (torch.export) or legacy (TorchScript).")], Exporter.dynamo),
    P("opset", Annotated[int, _opt(help="ONNX opset.")], DEFAULT_OPSET),
    P("dynamic_batch", Annotated[bool, _opt(help="Dynamic batch dimension (--no-dynamic-batch: batch 1).")], True),
    P("static_batch", Annotated[int | None, _opt(min=1, help=STATIC_HELP)], None),
    *CALIB_OPTIONS,
    P("calib_method", Annotated[CalibMethod, _opt(panel=INT8, help=(
        "Range estimate: percentile (99.99th of |x|), mean-max (mean over images of each image's min/max), max, "
        "entropy."))], CalibMethod.percentile),
    P("keep_fp32", Annotated[str | None, _opt(help=KEEP_HELP, panel=INT8)], None),
    P("int8_quantize_ends", Annotated[bool, _opt(help=ENDS_HELP, panel=INT8)], False),
    P("int8_equalize", Annotated[bool, _opt(help=EQUALIZE_HELP, panel=INT8)], True),
    P("max_accuracy_drop", Annotated[float | None, _opt(min=0, help=BUDGET_HELP, panel=SEARCH)], None),
    P("accuracy_data", Annotated[str | None, _opt(help=ACC_DATA_HELP, panel=SEARCH)], None),
    P("accuracy_dir", Annotated[Path | None, _opt(help="Accuracy dataset directory.", panel=SEARCH)], None),
    P("accuracy_samples", Annotated[int, _opt(min=1, panel=SEARCH, help=(
        "Held-out images that judge the search (or all)."))], DEFAULT_ACCURACY_SAMPLES),
    P("accuracy_margin", Annotated[float | None, _opt(min=0, panel=SEARCH, show_default="one std. error", help=(
        "Points a graph's drop must stay below the budget by on the judging images, so the budget also holds on "
        "others; 0 judges the drop alone (as NNCF does)."))], None),
    P("fallback", Annotated[Fallback, _opt(help=FALLBACK_HELP, panel=SEARCH)], Fallback.auto),
    P("search_seconds", Annotated[float, _opt(min=1, panel=SEARCH, help=(
        "Time cap of the search; then the best graph found is kept (exit 1 if over budget)."))],
      DEFAULT_SEARCH_SECONDS),
    P("engine", Annotated[EngineChoice, _opt(panel=TRT, help=(
        "TensorRT engines: auto (tensorrt, else rtx, else none), tensorrt, rtx, none."))], EngineChoice.none),
    P("batch_range", Annotated[str | None, _opt(panel=TRT, help=(
        "Engine profile MIN,OPT,MAX (default 1,8,64 ImageNet sizes; 1,32,256 small)."))], None),
    P("workspace_mb", Annotated[int | None, _opt(min=1, help="Builder workspace limit (MiB).", panel=TRT)], None),
    P("opt_level", Annotated[int, _opt(min=0, max=5, help="Builder optimization level.", panel=TRT)],
      DEFAULT_OPT_LEVEL),
    P("rtx_compute_capability", Annotated[str | None, _opt(panel=TRT, help=(
        f"TensorRT-RTX targets, e.g. SM86,SM89 (default {rtx_default_help()})."))], None),
    P("hardware_compat", Annotated[HardwareCompat, _opt(panel=TRT, help=(
        "Enterprise TensorRT: where its engines may run: none (the GPU kind built on), same-cc (any GPU of its "
        "compute capability), ampere+ (any compute 8.0+, at some speed); recorded in the engine's name."))],
      HardwareCompat.none),
    P("reference_samples", Annotated[int, _opt(min=0, help=REF_HELP)], DEFAULT_REFERENCE_SAMPLES),
    P("force", Annotated[bool, _opt(help=FORCE_HELP)], False),
    P("engines_only", Annotated[bool, _opt(help=ENGINES_ONLY_HELP, panel=TRT)], False),
)

# --------------------------------------------------------------------------- checking a folder
FOLDER = (P("folder", Annotated[Path, typer.Argument(help="Artifact folder written by resnetx export.")],
            Path("artifacts/default")),)
DATA_OPTIONS = (
    P("data", Annotated[str, _opt(panel=DATA, help=(
        "Data: sample (bundled), fashion-mnist, cifar10, imagefolder:DIR, synthetic."))], "sample"),
    P("data_dir", Annotated[Path | None, _opt(panel=DATA, help=(
        "Dataset directory (default: the dataset's standard place)."))], None),
)
VERIFY_TOLERANCES = (
    P("rtol_l2", Annotated[float | None, _opt(panel=TOL, help=(
        f"Override the rel. L2 bar (defaults: {tolerance_help('rel_l2')})."))], None),
    P("min_agreement", Annotated[float | None, _opt(min=0, max=1, panel=TOL, help=(
        f"Override the top-1 agreement bar ({tolerance_help('top1_agreement')})."))], None),
    P("max_acc_drop", Annotated[float | None, _opt(min=0, panel=TOL, help=(
        f"Override the accuracy-drop bar in points ({tolerance_help('accuracy_drop')})."))], None),
)
BENCH_TIMING = (
    P("iters", Annotated[int, _opt(min=1, help="Bench: timed runs (at least).")], DEFAULT_ITERS),
    P("min_seconds", Annotated[float, _opt(min=0, help="Bench: timed seconds (at least).")], DEFAULT_MIN_SECONDS),
)
RUN_OPTIONS = (
    P("precision", Annotated[str, _opt(help="Precisions to export, verify and bench.")], "fp32,fp16,int8"),
    P("engine", Annotated[EngineChoice, _opt(help="TensorRT engines to build (auto/tensorrt/rtx/none).")],
      EngineChoice.auto),
    P("device", Annotated[Device, _opt(help="Where verify and bench run.")], Device.auto),
    P("batch", Annotated[str, _opt(help="Bench batch sizes.")], batches_text()),
    *DATA_OPTIONS,
    *CALIB_OPTIONS,
    *BENCH_TIMING,
    P("rounds", Annotated[int, _opt(min=1, help="Bench: interleaved passes over all runtimes.")], DEFAULT_ROUNDS),
)


def runtime_group(command: str) -> Callable[[], tuple[inspect.Parameter, ...]]:
    """--runtime (its default: what `command` runs without it), and every runtime row's own options (e.g.
    OpenVINO's --ov-device), read from the registry when the command is made."""

    def group() -> tuple[inspect.Parameter, ...]:
        own = tuple(P(o.attr, Annotated[o.type | None, _opt(o.flag, panel=RUNTIME, help=f"{s.name}: {o.help}",
                                                             show_default=o.default_label or False)], None)
                    for s, o in row_options())
        return (P("runtime", Annotated[str | None, _opt(panel=RUNTIME, help=f"Runtimes: {runtimes_help()}.",
                                                        show_default=default_label(command))], None), *own)

    return group


def runtime_values(a: Args) -> dict[str, Any]:
    """The runtime rows' own options that were given, by the opener's keyword."""
    return {o.attr: a[o.attr] for _, o in row_options() if a.get(o.attr) is not None}


def choices(enum: type[Enum]) -> str:
    return ", ".join(e.value for e in enum)
