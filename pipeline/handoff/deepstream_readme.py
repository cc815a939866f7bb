"""The README of a DeepStream config folder, and the lines the command prints: how to run it, what the engine needs,
and what nvinfer's preprocessing costs against the model's own."""

from __future__ import annotations

from pipeline.handoff.nvinfer import FIDELITY_BAR, DeepStreamOptions, DeepStreamPlan, Fidelity, centre_roi
from resnetx.flavors import FLAVORS

__all__ = ["readme", "fidelity_lines"]


def _pct(v: float | None) -> str:
    return "n/a (no labels of the model's classes)" if v is None else f"{v:.2f}%"


VARIANT_WORDS = {
    "nvinfer": "nvinfer's preprocessing (one net-scale-factor, whole frame scaled)",
    "nvinfer+roi": "the same, on a centre ROI (nvdspreprocess)",
    "folded": "folded graph (--fold-preprocessing), whole frame scaled",
    "folded+roi": "folded graph on a centre ROI (nvdspreprocess)",
}


def _variant_line(f: Fidelity, name: str, deployed: str) -> str:
    v = f.variants[name]
    cost = f.cost(name)
    tail = "" if cost is None else f" ({0.0 - cost:+.2f} pt)"
    mark = "  <- this config" if name == deployed else ""
    return f"  {VARIANT_WORDS[name]}: top-1 agreement {100 * v.agreement:.2f}%, top-1 {_pct(v.top1)}{tail}{mark}"


def fidelity_lines(plan: DeepStreamPlan, opts: DeepStreamOptions) -> list[str]:
    """What nvinfer's preprocessing costs, in words, loudly past the bar, with the remedy and what it measured."""
    f: Fidelity = plan.fidelity
    pre = plan.manifest.model.info.preprocess
    deployed = "folded" if opts.fold else "nvinfer"
    lines = [f"preprocessing fidelity on {f.images} {f.data} images, {opts.precision.value} graph: top-1 "
             f"{_pct(f.top1_export)} with the export's own preprocessing; against it:"]
    lines += [_variant_line(f, name, deployed) for name in VARIANT_WORDS if name in f.variants]
    if f.fold_parity:
        parity = f.fold_parity
        lines.append(f"  folded graph vs the original on the same resized pixels: rel. L2 {parity['rel_l2']:.2e}, "
                     f"top-1 agreement {100 * parity['top1_agreement']:.2f}%")
    cost = f.cost(deployed)
    if cost is None or cost <= FIDELITY_BAR:
        return lines
    remedies = []
    if len(set(pre.std)) > 1 and not opts.fold:
        remedies.append("--fold-preprocessing (the first convolution absorbs the per-channel std, so nvinfer's "
                        "single net-scale-factor is exact)")
    if pre.resize != pre.image_size:
        remedies.append(f"the model was evaluated on a {pre.image_size} centre crop of a {pre.resize} resize, which "
                        "nvinfer does not do: put nvdspreprocess with a centre ROI in front (see README.md), or "
                        "feed object crops of that framing")
    measured = [n for n in ("nvinfer+roi", "folded+roi", "folded") if n in f.variants and f.cost(n) is not None]
    best = min(measured, key=lambda n: abs(f.cost(n)), default=None)
    if best is not None:
        remedies.append(f"measured: {VARIANT_WORDS[best]} gives top-1 {f.variants[best].top1:.2f}% "
                        f"({-f.cost(best):+.2f} pt)")
    lines.append(f"WARNING: this config's preprocessing costs {cost:.2f} points of top-1 (bar {FIDELITY_BAR}); "
                 + ("; ".join(remedies) or "no remedy resnetx knows"))
    return lines


def _engine_lines(plan: DeepStreamPlan) -> list[str]:
    e = plan.engine
    if e is None:
        return [f"No engine is named ({plan.engine_why}). The first run builds it (minutes) and nvinfer writes it "
                "beside onnx-file; name that file in model-engine-file to skip the build next time."]
    return [f"`{e.file}`: {FLAVORS[e.flavor].name} {e.trt_version}, built on a {e.gpu} (compute "
            f"{e.compute_capability}, {e.hardware_compat.value} compatibility), batch profile "
            f"{','.join(map(str, e.profile))}. It loads only in a DeepStream whose TensorRT is {e.trt_version}, on "
            "a GPU its compatibility level allows; elsewhere nvinfer rebuilds from onnx-file."]


MUX_WIDTH, MUX_HEIGHT = 1280, 720  # the nvstreammux size of the README's pipeline


def _roi_lines(plan: DeepStreamPlan, opts: DeepStreamOptions) -> list[str]:
    """How to give nvinfer the centre crop the model was evaluated on: an nvdspreprocess ROI."""
    pre = plan.manifest.model.info.preprocess
    if pre.resize == pre.image_size:
        return []
    left, top, w, h = centre_roi(MUX_HEIGHT, MUX_WIDTH, pre.image_size / pre.resize)
    return ["### Centre crop", "",
            f"The model saw the centre {pre.image_size}/{pre.resize} of each image's shorter side. In primary mode, "
            "put `nvdspreprocess` before nvinfer with a centre ROI and let nvinfer take its tensor "
            "(`input-tensor-from-meta=1` in the config above); for the "
            f"{MUX_WIDTH}x{MUX_HEIGHT} streams of the pipeline above, the ROI (left;top;width;height) is:", "",
            "```ini", "[group-0]", "src-ids=0", "process-on-roi=1", f"roi-params-src-0={left};{top};{w};{h}", "```",
            "",
            "The centre ROI lines above measure that crop (its nvdspreprocess custom library must "
            "apply the same net-scale-factor and offsets). In secondary mode, have the detector's boxes framed the "
            "way the training crops were.", ""]


def _preprocessing_text(plan: DeepStreamPlan, opts: DeepStreamOptions) -> str:
    """What the model was evaluated on, and what nvinfer does with this config."""
    p, pre = plan.props, plan.manifest.model.info.preprocess
    order = {"0": "RGB", "1": "BGR", "2": "grey"}[p["model-color-format"]]
    model = (f"resize the shorter side to {pre.resize}, center-crop {pre.image_size}, {pre.words()}"
             + ("" if pre.channels == 1 else f" (channels in {pre.channel_order.upper()} order)"))
    nvinfer = (f"scale the whole frame (or object) to {pre.image_size}x{pre.image_size} (bilinear, scaling-filter=1, "
               f"aspect ratio not kept), {order} (model-color-format {p['model-color-format']}), NCHW "
               f"(network-input-order {p['network-input-order']}), then net-scale-factor {p['net-scale-factor']} x "
               f"(x - offsets {p['offsets']})")
    if pre.per_pixel:
        how = ("The per-pixel mean image cannot be nvinfer offsets, so the graph here takes raw pixels (net-scale-"
               "factor 1, no offsets) and divides, subtracts the mean image and divides by the std itself "
               "(--fold-preprocessing).")
    else:
        how = (f"Offsets are {pre.divide:g} x mean in the model's channel order, and the one factor is the mean of "
               f"1/({pre.divide:g} std) over the channels"
               + (" (the folded graph's first convolution absorbs the per-channel rest)." if opts.fold else "."))
    return f"The model was evaluated on: {model}. nvinfer does: {nvinfer}. {how}"


def readme(plan: DeepStreamPlan, opts: DeepStreamOptions) -> str:
    p, info = plan.props, plan.manifest.model.info
    cfg = f"config_infer_{plan.name}.txt"
    verified = "; ".join(f"{n}: {v.words}" for n, v in plan.verdicts.items()) or "not verified (--allow-unverified)"
    lines = [
        f"# DeepStream nvinfer classifier: {plan.name}", "",
        f"Written by `resnetx deepstream` from `{opts.folder}`. `{p['onnx-file']}`"
        + (" is the folder's graph, byte-identical (sha256 checked)" if not opts.fold else
           " is the folder's graph with its preprocessing folded in (--fold-preprocessing)")
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
        "## Preprocessing", "", _preprocessing_text(plan, opts), "",
        "```", *fidelity_lines(plan, opts), "```", "",
        *_roi_lines(plan, opts),
        (f"The graph gives logits, not probabilities: `classifier-threshold={p['classifier-threshold']}` keeps its "
         "top class always. To report only confident results, threshold on the logit scale." if info.output == "logits"
         else "The graph gives probabilities (the model ends in a softmax): `classifier-threshold` is on [0, 1]; "
         f"{p['classifier-threshold']} keeps the top class always."), "",
    ]
    return "\n".join(lines)
