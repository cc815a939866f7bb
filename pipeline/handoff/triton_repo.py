"""Writing a Triton model repository: the models' folders, and the README.md and client.py beside them."""

from __future__ import annotations

import pprint
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.folder.manifest import EngineEntry, Manifest
from pipeline.handoff.triton import TritonModel, TritonOptions, TritonResult, config_text, plan_repository
from pipeline.model.preprocess import MeanImage, Preprocess
from resnetx.errors import BadInput
from resnetx.files import atomic_dir, atomic_write, atomic_write_text, copy_checked
from resnetx.flavors import FLAVORS

__all__ = ["write_repository", "client_config", "client_script", "repository_readme"]

_CONFIG_LINE = "CONFIG: dict[str, Any] = {}\n"


def client_config(m: Manifest, models: list[TritonModel]) -> dict[str, Any]:
    """What client.py needs: each model's tensor names and input type (the request's datatype is the config's
    data type without TYPE_), the preprocessing, the class names."""
    info = m.model.info
    return {"preprocess": info.preprocess.to_dict(), "output": info.output, "class_names": list(info.class_names or []),
            "default_model": models[0].name,
            "models": {x.name: {"input": x.inputs[0].name, "output": x.outputs[0].name,
                                "datatype": x.inputs[0].data_type.removeprefix("TYPE_"), "fixed_batch": x.fixed_batch}
                       for x in models}}


def client_script(m: Manifest, models: list[TritonModel]) -> str:
    """pipeline/handoff/triton_client.py with this repository's CONFIG written in."""
    src = Path(__file__).with_name("triton_client.py").read_text()
    if _CONFIG_LINE not in src:
        raise RuntimeError("pipeline/handoff/triton_client.py lost its CONFIG line")
    body = pprint.pformat(client_config(m, models), width=110, sort_dicts=False)
    return src.replace(_CONFIG_LINE, f"CONFIG: dict[str, Any] = {body}\n")


def _table(models: list[TritonModel]) -> list[str]:
    rows = ["| model | platform | precision | max_batch_size | files in 1/ | resnetx verify |",
            "|---|---|---|---|---|---|"]
    for x in models:
        batch = str(x.max_batch_size) if x.max_batch_size else f"0 (fixed batch {x.fixed_batch})"
        rows.append(f"| `{x.name}` | {x.platform} | {x.precision.value} | {batch} | "
                    f"{', '.join(e.file for e in x.entries)} | {x.verified} |")
    return rows


def _engines(models: list[TritonModel]) -> list[str]:
    lines = []
    for x in models:
        for e in x.entries:
            if not isinstance(e, EngineEntry):
                continue
            gpus = ", ".join(e.target.gpus()) or "unknown"
            built = f", built on {e.gpu}" if e.gpu else ""
            lines.append(f"- `{x.name}/1/{e.file}`: {FLAVORS[e.flavor].name} {e.trt_version}, compute capability "
                         f"{gpus}{built}, batch profile MIN,OPT,MAX {','.join(map(str, e.profile))}")
    if lines:
        lines += ["", "An engine loads only where its `cc_model_filenames` has the GPU's compute capability and only "
                  "in a TensorRT backend of the version in the config's `parameters`. TensorRT-RTX engines need a "
                  "Triton TensorRT backend that runs TensorRT-RTX; the stock `tritonserver` containers run "
                  "enterprise TensorRT, for which engines are built on the serving GPU "
                  "(`resnetx export --engine tensorrt` there)."]
    return lines


def _perf(models: list[TritonModel]) -> list[str]:
    lines = ["```sh"]
    for x in models:
        if x.max_batch_size:
            batches = [b for b in x.bench_batches if b <= x.max_batch_size] or sorted({1, x.max_batch_size})
            lines += [f"perf_analyzer -m {x.name} -b {b} --concurrency-range 1:4 -i grpc -u localhost:8001"
                      for b in batches]
        else:
            lines.append(f"perf_analyzer -m {x.name} --concurrency-range 1:4 -i grpc -u localhost:8001")
    return [*lines, "```"]


def _normalise_steps(pre: Preprocess) -> list[str]:
    """Steps 3 and 4 of the README: channel order and scaling, then the mean (per channel or per pixel) and std."""
    order = "" if pre.channels == 1 else (" in BGR order (flip the decoded RGB)" if pre.channel_order == "bgr" else
                                          " in RGB order")
    scale = "keep 0-255 pixels" if pre.divide == 1.0 else f"divide the pixels by {pre.divide:g}"
    mean = (f"subtract the per-pixel mean image `{MeanImage.FILE}` (numpy, C x H x W)" if pre.per_pixel else
            f"subtract mean {list(pre.mean)}")
    mode = f" (Keras preprocess_input mode {pre.mode!r})" if pre.mode else ""
    return [f"3. channels{order}; {scale}{mode};", f"4. {mean} and divide by std {list(pre.std)}, per channel;"]


def repository_readme(m: Manifest, models: list[TritonModel], folder: Path) -> str:
    info, pre = m.model.info, m.model.info.preprocess
    gpu = any(x.kind == "KIND_GPU" for x in models)
    colour = "grayscale" if pre.channels == 1 else "RGB"
    measured = "the batch sizes `resnetx bench` measured" if any(x.bench_batches for x in models) else \
        "batch 1 and max_batch_size (`resnetx bench` was not run on the folder)"
    lines = [
        f"# Triton model repository: {info.arch}", "",
        f"Written by `resnetx triton` from `{folder}` (manifest of {m.created}). Every file in a `1/` folder is "
        "byte-identical to the artifact of the same name there (sha256 checked).", "",
        *_table(models), "",
        "## Serve", "", "```sh",
        f"docker run --rm {'--gpus all ' if gpu else ''}-p 8000:8000 -p 8001:8001 -p 8002:8002 "
        "-v $PWD:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\",
        "    tritonserver --model-repository=/models", "```", "",
        "or `tritonserver --model-repository .` where Triton is installed. Each model's `config.pbtxt` says its "
        "inputs, outputs, batching and instances.", "",
        f"On Jetson or in a video pipeline, `resnetx deepstream {folder}` writes a DeepStream nvinfer config of the "
        "same folder instead, and measures what nvinfer's preprocessing costs.", "",
        "## Preprocessing clients must apply", "",
        f"1. decode the image as {colour} ({pre.channels} channel{'s' if pre.channels > 1 else ''});",
        f"2. resize the shorter side to {pre.resize} (bilinear), center-crop {pre.image_size}x{pre.image_size};",
        *_normalise_steps(pre),
        f"5. lay out as NCHW float32: `{models[0].inputs[0].name}` of shape (batch, {pre.channels}, "
        f"{pre.image_size}, {pre.image_size})" + (
            f". The source model took NHWC (batch, {pre.image_size}, {pre.image_size}, {pre.channels}); the graphs "
            "here begin with its transpose, so send NCHW: `x.transpose(0, 3, 1, 2)` of an NHWC batch."
            if info.input_layout == "NHWC" else "."), "",
        f"The output `{models[0].outputs[0].name}` holds {info.num_classes} {info.output} per image"
        + (", in the order of `labels.txt`." if info.class_names else "."), "",
        "`client.py` does exactly this and asks the server (`pip install 'tritonclient[http]' pillow numpy`):", "",
        "```sh", f"python client.py IMAGE --model {models[0].name} --url localhost:8000", "```", "",
        "## Measure", "", f"`perf_analyzer` (Triton's SDK container) for each model at {measured}:", "",
        *_perf(models), "",
    ]
    if engines := _engines(models):
        lines += ["## Engines", "", *engines, ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- writing
def write_repository(opts: TritonOptions, *, on_model: Callable[[TritonModel], None] | None = None) -> TritonResult:
    """Write the repository to a temporary folder beside `opts.out`, then move it into place."""
    out = Path(opts.out)
    if out.exists() and not opts.force:
        raise BadInput(f"{out} exists; give --force to replace it, or another --out")
    if out.resolve() == Path(opts.folder).resolve() or Path(opts.folder).resolve() in out.resolve().parents:
        raise BadInput(f"--out {out} is inside the artifact folder; write the repository elsewhere")
    models, notes, audit = plan_repository(opts)
    with atomic_dir(out, force=opts.force) as tmp:
        for model in models:
            d = tmp / model.name
            for e in model.entries:
                copy_checked(Path(opts.folder) / e.file, d / "1" / e.file, e.sha256)
            atomic_write_text(d / "config.pbtxt", config_text(model))
            if model.labels:
                atomic_write_text(d / "labels.txt", "\n".join(audit.manifest.model.info.class_names or ()) + "\n")
            if on_model:
                on_model(model)
        atomic_write_text(tmp / "README.md", repository_readme(audit.manifest, models, opts.folder))
        if (mean := audit.manifest.model.info.preprocess.mean_image) is not None:  # client.py subtracts it
            atomic_write(tmp / mean.FILE, (Path(opts.folder) / mean.FILE).read_bytes())  # checked when read
        atomic_write_text(tmp / "client.py", client_script(audit.manifest, models))
    return TritonResult(out, models, notes)
