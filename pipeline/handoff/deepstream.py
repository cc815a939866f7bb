"""A verified artifact folder as a DeepStream `nvinfer` classifier (`resnetx deepstream DIR --out CFG_DIR`): the
config file, nvinfer's labels file, the files it names, a README, and what nvinfer's own preprocessing costs.

nvinfer computes y = net-scale-factor * (x - offsets) on 0..255 pixels, with one scale factor for every channel, and
scales the whole frame (or object crop) straight to the network's size: no resize-then-center-crop. resnetx knows the
model's preprocessing, so it maps it onto nvinfer's (offsets = 255 x mean, one factor from the per-channel stds),
runs the folder's graph on the verify data with both preprocessings reproduced in numpy, and reports the top-1
agreement and the accuracy each gives. With `fold=True` the copy of the graph absorbs the per-channel std into its
first convolution, so nvinfer's single factor is exact (only the crop remains).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.folder.audit import audit_folder, holdings, serving_gate
from pipeline.folder.manifest import EngineEntry, GraphEntry, Manifest
from pipeline.handoff.nvinfer import (
    LOGIT_THRESHOLD,
    NCHW,
    NETWORK_MODE,
    SCALING_FILTER_BILINEAR,
    DeepStreamOptions,
    DeepStreamPlan,
    Fidelity,
    Variant,
    color_format,
    nvinfer_inputs,
    nvinfer_mapping,
)
from pipeline.model.data import Preprocess, eval_indices, open_dataset
from pipeline.precisions import Precision
from resnetx.errors import BadInput
from resnetx.flavors import Flavor
from resnetx.gpus import KINDS
from resnetx.parity import logit_parity

__all__ = ["plan_deepstream", "config_text", "write_deepstream", "measure_fidelity"]

def _engine_for(m: Manifest, precision: Precision, kind: str | None) -> tuple[EngineEntry | None, str]:
    """The enterprise TensorRT engine of the precision that runs on the kind's GPU (nvinfer runs enterprise TensorRT:
    a TensorRT-RTX engine is never named), or None and why."""
    if kind is None:
        return None, "no --kind given: nvinfer builds the engine from onnx-file on the device at first run"
    cc = KINDS.get(kind) or next((e.compute_capability for e in m.engines.values() if e.gpu_kind == kind),
                                         None)
    if cc is None:
        raise BadInput(f"--kind {kind}: resnetx does not know its compute capability and no engine of the folder was "
                       "built on one; build one there (resnetx export --engines-only --engine tensorrt)")
    for e in m.engines_of(precision):
        if e.flavor is Flavor.tensorrt and e.target.runs_on(cc, kind) is None:
            return e, ""
    rtx = " (its TensorRT-RTX engines do not load in nvinfer, which runs enterprise TensorRT)" if any(
        e.flavor is Flavor.rtx for e in m.engines_of(precision)) else ""
    return None, (f"the folder has no enterprise TensorRT {precision.value} engine for a {kind} (compute {cc}){rtx}: "
                  "nvinfer builds it from onnx-file on the device at first run")


def _batch(opts: DeepStreamOptions, graph: GraphEntry, engine: EngineEntry | None) -> int:
    if graph.static_batch:
        if opts.batch not in (None, graph.static_batch):
            raise BadInput(f"--batch {opts.batch}: the graph takes exactly {graph.static_batch} images at a time")
        return graph.static_batch
    batch = opts.batch or (engine.profile[1] if engine else 1)
    if engine is not None and not engine.profile[0] <= batch <= engine.profile[2]:
        lo, _, hi = engine.profile
        raise BadInput(f"--batch {batch} is outside {engine.file}'s profile {lo}..{hi}; give a batch in it")
    return batch


def _props(plan_name: str, opts: DeepStreamOptions, m: Manifest, graph_file: str, engine: EngineEntry | None,
           batch: int, scale: float, offsets: tuple[float, ...]) -> dict[str, str]:
    info = m.model.info
    props = {"gpu-id": "0", "net-scale-factor": f"{scale:.9g}", "offsets": ";".join(f"{o:g}" for o in offsets),
             "model-color-format": str(color_format(info.preprocess)), "network-input-order": str(NCHW),
             "onnx-file": graph_file}
    if engine is not None:
        props["model-engine-file"] = engine.file
    props |= {"labelfile-path": f"labels_{plan_name}.txt", "infer-dims": f"{info.in_chans};{info.image_size};"
              f"{info.image_size}", "batch-size": str(batch), "network-mode": str(NETWORK_MODE[opts.precision]),
              "network-type": "1", "process-mode": "1" if opts.mode == "primary" else "2",
              "gie-unique-id": "1" if opts.mode == "primary" else "2", "output-blob-names": "logits",
              "classifier-threshold": f"{LOGIT_THRESHOLD:g}", "maintain-aspect-ratio": "0",
              "scaling-filter": str(SCALING_FILTER_BILINEAR)}
    if opts.mode == "secondary":
        props["operate-on-gie-id"] = "1"  # the primary detector's gie-unique-id
    return props


def config_text(props: dict[str, str], comment: str) -> str:
    """The nvinfer config file: a GKeyFile [property] group, lists ';'-separated."""
    return "".join(f"# {line}\n" for line in comment.splitlines()) + "[property]\n" + "".join(
        f"{k}={v}\n" for k, v in props.items())


def plan_deepstream(opts: DeepStreamOptions) -> DeepStreamPlan:
    """What the config says and names, refused for a tampered or unverified folder as `resnetx triton` refuses (the
    fidelity is measured by write_deepstream, once the folded graph exists)."""
    audit = audit_folder(opts.folder)
    m = audit.manifest
    graph = m.graphs.get(opts.precision)
    if graph is None:
        raise BadInput(f"{opts.folder} holds no {opts.precision.value} graph ({holdings(m)}); export it first")
    engine, why = _engine_for(m, opts.precision, opts.kind)
    notes: list[str] = []
    names = [graph.name] + ([engine.name] if engine else [])
    verdicts = serving_gate(audit, names, opts.allow_unverified, notes, "a DeepStream config")
    pre = m.model.info.preprocess
    if pre.per_pixel and not opts.fold:
        raise BadInput("the model subtracts a per-pixel mean image, which nvinfer's per-channel offsets cannot "
                       "express: give --fold-preprocessing (the config's graph then takes raw pixels and subtracts "
                       "the mean image itself)")
    scale, offsets, fold = nvinfer_mapping(pre) if not pre.per_pixel else (1.0, (0.0,) * pre.channels, ())
    name = m.model.info.arch
    graph_file = graph.file if not opts.fold else Path(graph.file).with_suffix(".folded.onnx").name
    props = _props(name, opts, m, graph_file, None if opts.fold else engine, _batch(opts, graph, engine), scale,
                   offsets)
    if opts.fold and engine is not None:
        why = ("the folded graph is not the one the folder's engines were built from: nvinfer builds its engine from "
               "onnx-file on the device at first run")
    return DeepStreamPlan(name, graph, None if opts.fold else engine, why, props, scale, offsets, fold, None, verdicts,
                          notes, m)


def _frames(opts: DeepStreamOptions, pre: Preprocess) -> tuple[object, np.ndarray]:
    """The verify data's images, as full frames: (dataset, indices), drawn as verify draws them."""
    ds = open_dataset(opts.data, split="test", data_dir=opts.data_dir, preprocess=None)
    return ds, eval_indices(ds, min(opts.samples, len(ds)), 0)


def _top1(predicted: np.ndarray, labels: np.ndarray | None) -> float | None:
    return None if labels is None else 100.0 * float((predicted == labels).mean())


def _runs(pre: Preprocess, sess: object, folded: object | None) -> dict[str, tuple[object, float]]:
    """The variants measured: name -> (session, ROI fraction). A per-pixel mean is nvinfer's only folded."""
    roi = pre.image_size / pre.resize if pre.resize != pre.image_size else None
    runs = {} if pre.per_pixel else {"nvinfer": (sess, 1.0)}
    if roi is not None and not pre.per_pixel:
        runs["nvinfer+roi"] = (sess, roi)
    if folded is not None:
        runs["folded"] = (folded, 1.0)
        if roi is not None:
            runs["folded+roi"] = (folded, roi)
    return runs


def _exact(pre: Preprocess, x: np.ndarray, fold: tuple[float, ...]) -> np.ndarray:
    """What the folded graph's original computes on nvinfer's input `x`: x times the per-channel factor its first
    convolution absorbed, or (raw pixels) the whole preprocessing it put in front."""
    if pre.per_pixel:
        std = np.asarray(pre.std, np.float32).reshape(1, -1, 1, 1)
        return (x / np.float32(pre.divide) - pre.mean_image.array[None]) / std
    return x * np.asarray(fold, np.float32).reshape(1, -1, 1, 1)


def measure_fidelity(opts: DeepStreamOptions, m: Manifest, graph: GraphEntry, scale: float,
                     offsets: tuple[float, ...], fold: tuple[float, ...], fold_path: Path | None) -> Fidelity:
    """The graph on the same frames preprocessed the export's way and nvinfer's ways (and the folded graph under
    nvinfer's, when there is one): top-1 agreement, and accuracy where the data has the model's labels."""
    from exporters.onnx import cpu_session, run_cpu

    info = m.model.info
    pre = info.preprocess
    ds, idx = _frames(opts, pre)
    sess = cpu_session(Path(opts.folder) / graph.file)
    runs = _runs(pre, sess, cpu_session(fold_path) if fold_path is not None else None)
    out: dict[str, list[np.ndarray]] = {name: [] for name in [*runs, "export", "exact"]}
    bgr = pre.channels == 3 and pre.channel_order == "bgr"
    for i in range(0, len(idx), 32):
        frames = [ds.frame(int(j)) for j in idx[i : i + 32]]
        out["export"].append(run_cpu(sess, np.concatenate([pre(f[None]) for f in frames])))
        for name, (session, roi) in runs.items():
            x = np.concatenate([nvinfer_inputs(f[None], pre.image_size, pre.channels, offsets, scale, roi, bgr)
                                for f in frames])
            out[name].append(run_cpu(session, x))
            if name == "folded":  # what the folded graph computes, fed to the original graph
                out["exact"].append(run_cpu(sess, _exact(pre, x, fold)))
    labels = ds.labels[idx].astype(np.int64) if ds.labels is not None and len(ds.class_names or ()) == \
        info.num_classes else None
    logits = {name: np.concatenate(v) for name, v in out.items() if v}
    ex = logits.pop("export").argmax(1)
    exact = logits.pop("exact", None)
    f = Fidelity(ds.name, len(idx), _top1(ex, labels),
                 {name: Variant(float((ex == v.argmax(1)).mean()), _top1(v.argmax(1), labels))
                  for name, v in logits.items()})
    if exact is not None:
        agreement, rel = logit_parity(logits["folded"], exact)
        f.fold_parity = {"rel_l2": rel, "top1_agreement": agreement}
    return f


def _labels_file(m: Manifest) -> str:
    """nvinfer's labels file for a classifier: one line per output layer, its classes ';'-separated in logits order
    (one line here: the graph has one output)."""
    info = m.model.info
    names = info.class_names or tuple(f"class{i}" for i in range(info.num_classes))
    return ";".join(names) + "\n"


def write_deepstream(opts: DeepStreamOptions) -> DeepStreamPlan:
    """The config folder, written beside `opts.out` and moved into place (nothing half-written is ever left)."""
    from exporters.fold import fold_input_scale, fold_preprocessing
    from pipeline.handoff.deepstream_readme import readme
    from resnetx.files import atomic_dir, atomic_write_text, copy_checked

    out, folder = Path(opts.out), Path(opts.folder)
    if out.resolve() == folder.resolve() or folder.resolve() in out.resolve().parents:
        raise BadInput(f"--out {out} is inside the artifact folder; write the config elsewhere")
    plan = plan_deepstream(opts)
    with atomic_dir(out, force=opts.force) as tmp:
        onnx_file = plan.props["onnx-file"]
        pre = plan.manifest.model.info.preprocess
        if opts.fold and pre.per_pixel:  # the whole preprocessing in front of the graph: it takes raw pixels
            fold_preprocessing(folder / plan.graph.file, tmp / onnx_file, pre.divide, pre.mean_image.array, pre.std)
        elif opts.fold:
            fold_input_scale(folder / plan.graph.file, tmp / onnx_file, plan.fold_scale)
        else:
            copy_checked(folder / plan.graph.file, tmp / onnx_file, plan.graph.sha256)
        if plan.engine is not None:
            copy_checked(folder / plan.engine.file, tmp / plan.engine.file, plan.engine.sha256)
        plan.fidelity = measure_fidelity(opts, plan.manifest, plan.graph, plan.scale, plan.offsets, plan.fold_scale,
                                         tmp / onnx_file if opts.fold else None)
        atomic_write_text(tmp / plan.props["labelfile-path"], _labels_file(plan.manifest))
        comment = (f"nvinfer classifier config written by resnetx deepstream from {folder} "
                   f"(manifest of {plan.manifest.created}); see README.md")
        atomic_write_text(tmp / f"config_infer_{plan.name}.txt", config_text(plan.props, comment))
        atomic_write_text(tmp / "README.md", readme(plan, opts))
    return plan
