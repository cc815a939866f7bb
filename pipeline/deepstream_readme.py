"""The README of a DeepStream config folder, and the lines the command prints: how to run it, what the engine needs,
and what nvinfer's preprocessing costs against the model's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from resnetx.flavors import FLAVORS

if TYPE_CHECKING:
    from pipeline.deepstream import DeepStreamOptions, DeepStreamPlan, Fidelity

__all__ = ["readme", "fidelity_lines"]


def _pct(v: float | None) -> str:
    return "n/a (no labels of the model's classes)" if v is None else f"{v:.2f}%"


def fidelity_lines(plan: DeepStreamPlan, opts: DeepStreamOptions) -> list[str]:
    """What nvinfer's preprocessing costs, in words, loudly past the bar, with the remedy."""
    from pipeline.deepstream import FIDELITY_BAR

    f: Fidelity = plan.fidelity
    pre = plan.manifest.model.info.preprocess
    lines = [f"preprocessing fidelity on {f.images} {f.data} images, {opts.precision.value} graph: top-1 agreement "
             f"{100 * f.agreement:.2f}% between nvinfer's preprocessing and the export's; top-1 {_pct(f.top1_export)} "
             f"with the export's, {_pct(f.top1_nvinfer)} with nvinfer's"]
    if f.folded_top1 is not None or f.folded_agreement is not None:
        lines.append(f"folded graph under nvinfer's preprocessing: top-1 agreement {100 * f.folded_agreement:.2f}% "
                     f"with the export's, top-1 {_pct(f.folded_top1)}; parity with the original graph on the same "
                     f"resized pixels: rel. L2 {f.fold_parity['rel_l2']:.2e}, top-1 agreement "
                     f"{100 * f.fold_parity['top1_agreement']:.2f}%")
    cost = f.cost
    if cost is not None and cost > FIDELITY_BAR:
        remedies = []
        if len(set(pre.std)) > 1 and not opts.fold:
            remedies.append("--fold-preprocessing (the first convolution absorbs the per-channel std, so nvinfer's "
                            "single net-scale-factor is exact)")
        if pre.resize != pre.image_size:
            remedies.append(f"the model was evaluated on a {pre.image_size} center crop of a {pre.resize} resize, "
                            "which nvinfer does not do: crop with nvdspreprocess (an ROI of the center) or feed "
                            "object crops of that aspect")
        lines.append(f"WARNING: nvinfer's preprocessing costs {cost:.2f} points of top-1 (bar {FIDELITY_BAR}); "
                     + ("; ".join(remedies) or "no remedy resnetx knows"))
    return lines


def _engine_lines(plan: DeepStreamPlan) -> list[str]:
    e = plan.engine
    if e is None:
        return [f"No engine is named: {plan.engine_why}. The first run builds it (minutes) and nvinfer writes it "
                "beside onnx-file; name that file in model-engine-file to skip the build next time."]
    return [f"`{e.file}`: {FLAVORS[e.flavor].name} {e.trt_version}, built on a {e.gpu} (compute "
            f"{e.compute_capability}, {e.hardware_compat.value} compatibility), batch profile "
            f"{','.join(map(str, e.profile))}. It loads only in a DeepStream whose TensorRT is {e.trt_version}, on "
            "a GPU its compatibility level allows; elsewhere nvinfer rebuilds from onnx-file."]


def readme(plan: DeepStreamPlan, opts: DeepStreamOptions) -> str:
    p, info = plan.props, plan.manifest.model.info
    pre = info.preprocess
    cfg = f"config_infer_{plan.name}.txt"
    verified = "; ".join(f"{n}: {v.words}" for n, v in plan.verdicts.items()) or "not verified (--allow-unverified)"
    lines = [
        f"# DeepStream nvinfer classifier: {plan.name}", "",
        f"Written by `resnetx deepstream` from `{opts.folder}`. `{p['onnx-file']}`"
        + (" is the folder's graph, byte-identical (sha256 checked)" if not opts.fold else
           " is the folder's graph with its first convolution scaled per input channel (--fold-preprocessing)")
        + f"; `{p['labelfile-path']}` holds the {info.num_classes} classes in logits order, ';'-separated on one "
        "line (nvinfer's format for a classifier's output layer).", "",
        f"Verified: {verified}.", "",
        "## Run", "", "```sh",
        "gst-launch-1.0 filesrc location=video.mp4 ! qtdemux ! h264parse ! nvv4l2decoder ! m.sink_0 \\",
        "    nvstreammux name=m batch-size=1 width=1280 height=720 ! \\",
        f"    nvinfer config-file-path={cfg} ! nvvideoconvert ! nvdsosd ! fakesink", "```", "",
        f"or in a deepstream-app config: `[{'primary-gie' if opts.mode == 'primary' else 'secondary-gie0'}]` with "
        f"`enable=1` and `config-file={cfg}`"
        + ("" if opts.mode == "primary" else "; it classifies the objects of the detector whose gie-unique-id is "
           "`operate-on-gie-id` (1 here: change it to your detector's)") + ".", "",
        "## Engine", "", *_engine_lines(plan), "",
        "int8: the graph carries explicit Q/DQ pairs, so TensorRT takes its ranges from the graph: no "
        "`int8-calib-file` is written or needed." if opts.precision.value == "int8" else
        f"network-mode {p['network-mode']} ({opts.precision.value}).", "",
        "## Preprocessing", "",
        f"The model was evaluated on: resize the shorter side to {pre.resize}, center-crop {pre.image_size}, "
        f"x/255, minus mean {list(pre.mean)}, divided by std {list(pre.std)}. nvinfer does: scale the whole frame "
        f"(or object) to {pre.image_size}x{pre.image_size} (bilinear, scaling-filter=1, aspect ratio not kept), then "
        f"net-scale-factor {p['net-scale-factor']} x (x - offsets {p['offsets']}): offsets are 255 x mean, and the "
        "one factor is the mean of 1/(255 std) over the channels.", "",
        *[f"- {line}" for line in fidelity_lines(plan, opts)], "",
        f"The graph gives logits, not probabilities: `classifier-threshold={p['classifier-threshold']}` keeps its "
        "top class always. To report only confident results, threshold on the logit scale.", "",
    ]
    return "\n".join(lines)
