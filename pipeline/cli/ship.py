"""Handing a verified folder to serving: `triton` (a model repository) and `deepstream` (an nvinfer config)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

import pipeline.cli.show as show
from pipeline.cli.app import console
from pipeline.cli.options import DATA_OPTIONS, FOLDER, Args, P, command
from pipeline.defaults import DEFAULT_QUEUE_DELAY_US, DEFAULT_REFERENCE_SAMPLES, DEFAULT_TRITON_MAX_BATCH
from pipeline.precisions import parse_precisions
from resnetx.errors import BadInput

__all__ = ["triton", "deepstream"]


class ServeDevice(str, Enum):
    gpu = "gpu"
    cpu = "cpu"


class DsMode(str, Enum):
    primary = "primary"
    secondary = "secondary"


ALLOW = P("allow_unverified", Annotated[bool, typer.Option(help=(
    "Write it even if an artifact's standing verdict is a fail, or it was never verified."))], False)
FORCE = P("force", Annotated[bool, typer.Option(help="Replace --out if it exists.")], False)
TRITON_OPTIONS = (
    P("out", Annotated[Path, typer.Option(help="The model repository to write (replaced only with --force).")],
      Path("model_repository")),
    P("name", Annotated[str | None, typer.Option(help=(
        "Model name prefix (default: the architecture); models are NAME_PRECISION_onnx and NAME_PRECISION_trt."))],
      None),
    P("precision", Annotated[str | None, typer.Option(help="Only these precisions, e.g. fp16,int8.")], None),
    P("max_batch", Annotated[int | None, typer.Option(min=1, help=(
        f"max_batch_size (default: the engine profile's MAX; {DEFAULT_TRITON_MAX_BATCH} for ONNX graphs without "
        "engines)."))], None),
    P("instances", Annotated[int, typer.Option(min=1, help="Instances of each model (instance_group count).")], 1),
    P("device", Annotated[ServeDevice, typer.Option(help=(
        "Where the ONNX models run (engines need a GPU; cpu leaves them out)."))], ServeDevice.gpu),
    P("queue_delay_us", Annotated[int, typer.Option(min=0, help=(
        "Dynamic batching: how long a request may wait for others, in microseconds."))], DEFAULT_QUEUE_DELAY_US),
    ALLOW, FORCE,
)
DEEPSTREAM_OPTIONS = (
    P("out", Annotated[Path, typer.Option(help="The config folder to write (replaced only with --force).")],
      Path("deepstream")),
    P("precision", Annotated[str, typer.Option(help="The graph nvinfer runs: fp32, fp16 or int8.")], "fp16"),
    P("kind", Annotated[str | None, typer.Option(help=(
        "The GPU kind it deploys to (L4, A10G, orin, ...): names the folder's enterprise TensorRT engine for it."))],
      None),
    P("batch", Annotated[int | None, typer.Option(min=1, help="batch-size (within the engine's profile).")], None),
    P("mode", Annotated[DsMode, typer.Option(help="primary: whole frames; secondary: the objects a detector found.")],
      DsMode.primary),
    P("fold_preprocessing", Annotated[bool, typer.Option(help=(
        "Ship a copy of the graph that takes nvinfer's pixels as they are: the per-channel std folded into its first "
        "convolution (nvinfer has one net-scale-factor), or a per-pixel mean image folded in front of it (nvinfer "
        "has no per-pixel offsets)."))], False),
    *DATA_OPTIONS,
    P("samples", Annotated[int, typer.Option(min=1, help="Images the preprocessing fidelity is measured on.")],
      DEFAULT_REFERENCE_SAMPLES),
    ALLOW, FORCE,
)


@command(FOLDER, TRITON_OPTIONS)
def triton(a: Args) -> None:
    """Write a Triton Inference Server model repository from a verified artifact folder."""
    from pipeline.cli.tables import triton_table
    from pipeline.handoff.triton import TritonOptions
    from pipeline.handoff.triton_repo import write_repository

    opts = TritonOptions(folder=a.folder, out=a.out, name=a.name, max_batch=a.max_batch, instances=a.instances,
                         device=a.device.value, queue_delay_us=a.queue_delay_us, allow_unverified=a.allow_unverified,
                         force=a.force,
                         precisions=parse_precisions(a.precision, with_source=False) if a.precision else None)
    result = write_repository(opts)
    console().print(triton_table(result))
    show.notes(result.notes, "note: ")
    console().print(f"serve with: tritonserver --model-repository {escape(str(result.repo))}  "
                    f"(see {escape(str(result.repo / 'README.md'))})", soft_wrap=True)


@command(FOLDER, DEEPSTREAM_OPTIONS)
def deepstream(a: Args) -> None:
    """Write a DeepStream nvinfer classifier config of a verified folder, and measure what nvinfer's preprocessing
    costs against the model's own."""
    from pipeline.handoff.deepstream import write_deepstream
    from pipeline.handoff.deepstream_readme import fidelity_lines
    from pipeline.handoff.nvinfer import DeepStreamOptions

    chosen = parse_precisions(a.precision, with_source=False)
    if len(chosen) != 1:
        raise BadInput(f"--precision {a.precision}: give one of fp32, fp16, int8")
    opts = DeepStreamOptions(folder=a.folder, out=a.out, precision=chosen[0], kind=a.kind, batch=a.batch,
                             mode=a.mode.value, fold=a.fold_preprocessing, data=a.data, data_dir=a.data_dir,
                             samples=a.samples, allow_unverified=a.allow_unverified, force=a.force)
    with show.status("deepstream: measuring nvinfer's preprocessing..."):
        plan = write_deepstream(opts)
    show.lines([f"[red]{escape(line)}[/]" if line.startswith("WARNING") else escape(line)
                for line in plan.notes + fidelity_lines(plan, opts)])
    engine = plan.engine.file if plan.engine else f"none ({plan.engine_why})"
    console().print(f"wrote {escape(str(a.out))}/config_infer_{plan.name}.txt: onnx-file {plan.props['onnx-file']}, "
                    f"engine {escape(engine)}, network-mode {plan.props['network-mode']}, batch-size "
                    f"{plan.props['batch-size']}; see {escape(str(a.out))}/README.md", soft_wrap=True)
