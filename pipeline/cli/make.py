"""Making a folder: `train` (a zoo model), `export` (a model to graphs, engines and a manifest), `run` (export, then
verify, then bench)."""

from __future__ import annotations

from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

import pipeline.cli.show as show
from pipeline.cli.app import command_line, console
from pipeline.cli.options import DATA, EXPORT_OPTIONS, MODEL, MODEL_OPTIONS, RUN_OPTIONS, Args, P, command
from pipeline.cli.parse import export_options, ints
from runtimes.base import Device

__all__ = ["train", "export", "run"]


class Schedule(str, Enum):
    cosine = "cosine"
    step = "step"


def _train_defaults() -> dict[str, object]:
    from pipeline.model.train import TrainConfig

    return {f.name: f.default for f in fields(TrainConfig)}


_T = _train_defaults()
TRAIN_OPTIONS = (
    P("model", Annotated[str, typer.Option(help="Zoo architecture to train, e.g. resnet20.", rich_help_panel=MODEL)],
      _T["model"]),
    P("data", Annotated[str, typer.Option(rich_help_panel=DATA, help=(
        "Training dataset: fashion-mnist, cifar10, imagefolder:DIR (a tenth of its images, across its classes, held "
        "out to score)."))], _T["data"]),
    P("data_dir", Annotated[Path | None, typer.Option(rich_help_panel=DATA, help="Dataset directory.")], None),
    P("epochs", Annotated[int, typer.Option(min=1, help="Training epochs.")], _T["epochs"]),
    P("batch_size", Annotated[int, typer.Option(min=1, help="Batch size.")], _T["batch_size"]),
    P("lr", Annotated[float, typer.Option(min=0.0, help="Peak learning rate (SGD, Nesterov momentum).")], _T["lr"]),
    P("weight_decay", Annotated[float, typer.Option(min=0.0, help="Weight decay on conv/linear weights.")],
      _T["weight_decay"]),
    P("schedule", Annotated[Schedule, typer.Option(help="Learning-rate schedule: cosine, or step (x0.1 at 50% and "
                                                   "75%).")], Schedule(_T["schedule"])),
    P("flip", Annotated[bool, typer.Option(help="Random horizontal flips.")], _T["flip"]),
    P("seed", Annotated[int, typer.Option(help="Seed for init, order and augmentation.")], _T["seed"]),
    P("limit", Annotated[int | None, typer.Option(min=1, help=(
        "Train on N images only: the first, or an image folder's drawn seeded across its classes."))], None),
    P("eval_limit", Annotated[int | None, typer.Option(min=1, help=(
        "Score on N test images only (an image folder: N of the tenth it holds out)."))], None),
    P("image_size", Annotated[int | None, typer.Option(min=8, help=(
        "Train at this image size (resized once); default: the data's."))], None),
    P("device", Annotated[Device, typer.Option(help="Training device.")], Device(_T["device"])),
    P("out", Annotated[Path, typer.Option(help="Checkpoint to write (best epoch); a .json card goes beside it.")],
      _T["out"]),
)


@command(TRAIN_OPTIONS)
def train(a: Args) -> None:
    """Train a zoo model (SGD + cosine, crop/flip augmentation); the best epoch is saved for `export --weights`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.model.train import TrainConfig
    from pipeline.model.train import train as run_train

    cfg = TrainConfig(**{**a, "schedule": a.schedule.value, "device": a.device.value})
    c = console()
    with Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.1f}%"), TimeElapsedColumn(),
                  console=c, transient=True) as bar:
        task = bar.add_task("train", total=None, epoch=1, loss=0.0, acc=0.0)

        def on_epoch(row: dict[str, float]) -> None:
            bar.console.print(f"epoch {row['epoch']:>3}: loss {row['train_loss']:.4f}  train {row['train_acc']:.2f}%  "
                              f"test top-1 {row['test_top1']:.2f}%  ({row['seconds']:.0f} s)")
            bar.reset(task)

        result = run_train(cfg, on_epoch=on_epoch, command=command_line(),
                           on_step=lambda e, i, m: bar.update(task, completed=i, epoch=e + 1, loss=m["loss"],
                                                              acc=m["acc"]))
    c.print(f"best test top-1 {result.best_top1:.2f}% at epoch {result.best_epoch}; saved {result.checkpoint} "
            f"({result.seconds:.0f} s)", soft_wrap=True, markup=False)


@command(MODEL_OPTIONS, EXPORT_OPTIONS)
def export(a: Args) -> None:
    """Export a model (zoo + checkpoint, ONNX or Keras file) to ONNX (fp32, fp16, int8) and TensorRT engines, with
    a manifest."""
    show.export(export_options(a))


@command(MODEL_OPTIONS, RUN_OPTIONS)
def run(a: Args) -> None:
    """export -> verify -> bench with defaults: the whole job in one command (--data: what verify and bench's
    accuracy use; --calib-data: what int8 is calibrated on); one verdict line at the end."""
    from pipeline.check.bench import BenchOptions
    from pipeline.check.verify import VerifyOptions
    from pipeline.make.export import check_run_inputs
    from pipeline.precisions import parse_precisions

    # every option is checked, and the data opened, before minutes of export
    exp = export_options(a, precisions=parse_precisions(a.precision), reference_data=a.data,
                         reference_data_dir=a.data_dir)
    dev = a.device.resolve()
    ver = VerifyOptions(folder=exp.out, device=dev, data=a.data, data_dir=a.data_dir)
    ben = BenchOptions(folder=exp.out, device=dev, batches=ints(a.batch, "--batch"), data=a.data,
                       data_dir=a.data_dir, iters=a.iters, min_seconds=a.min_seconds, rounds=a.rounds)
    check_run_inputs(a.data, a.data_dir, dev)
    show.export(exp)
    report = show.verify(ver)
    bench_report = show.bench(ben)
    show.run_line(exp, report, bench_report)
    show.verdict(verify_report=report, bench_report=bench_report)
