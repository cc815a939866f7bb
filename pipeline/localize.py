"""Which layer? The error of every layer of a graph against its fp32 baseline, named by PyTorch module."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.artifacts import GraphEntry, Manifest, checked_file
from pipeline.precisions import Precision, Tolerance
from pipeline.reference import Reference
from pipeline.remake import remake_command
from resnetx.batching import batch_chunks
from resnetx.contract import INPUT_NAME
from resnetx.errors import BadInput

__all__ = ["LayerError", "Localization", "localize", "layer_outputs"]

WEIGHTED = ("Conv", "Gemm", "MatMul")


@dataclass
class LayerError:
    layer: str
    op: str
    rel_l2: float


@dataclass
class Localization:
    baseline: str  # what the layers are compared with
    layer_tolerance: float
    first_divergent_layer: str | None  # the first layer beyond the bar
    module: str | None  # the PyTorch module of the layer to look at
    largest_jump_layer: str | None  # the weighted layer whose error grows most over the one before it
    suggestion: str | None  # the export line that keeps the layer to try in float
    by_depth: list[LayerError] = field(default_factory=list)
    seconds: float = 0.0
    revert_first: list[str] = field(default_factory=list)  # int8: what reverting recovers most, best first


def layer_outputs(model_bytes: bytes, x: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """Run a graph with every node's first output exposed: {node name: (op, value as fp32)}."""
    import onnx
    import onnxruntime as ort

    m = onnx.load_from_string(model_bytes)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {vi.name: vi for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    have = {o.name for o in m.graph.output}
    wanted: dict[str, tuple[str, str]] = {}
    for node in m.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast", "Constant") or not node.output:
            continue
        out = node.output[0]
        if out not in types and out not in have:
            continue
        wanted[node.name] = (node.op_type, out)
        if out not in have:
            m.graph.output.append(types[out])
            have.add(out)
    opts = ort.SessionOptions()
    # basic rewrites only (constant folding, no fusions), and every layer's value is a graph output
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    fixed = int(dim.dim_value) if dim.HasField("dim_value") else 0
    runs = [(sess.run(names, {INPUT_NAME: c}), n) for c, n in batch_chunks(x, fixed or len(x), pad_to=fixed)]
    values = {name: np.concatenate([out[k][:n] for out, n in runs]) for k, name in enumerate(names)}
    return {n: (op, values[out].astype(np.float32, copy=False)) for n, (op, out) in wanted.items() if out in values}


def _baseline(folder: Path, manifest: Manifest, entry: GraphEntry, reference: Reference) -> tuple[bytes, str]:
    """What each layer is compared with: the fp32 graph in the folder for fp16/int8 graphs, in the form the int8
    graph was made from (cross-layer equalized: its convs' channels are scaled, so the unequalized graph's tensors
    differ from the int8 graph's before any rounding); a fresh export of the PyTorch reference for the fp32 graph."""
    if entry.precision is not Precision.fp32:
        fp32 = manifest.graphs.get(Precision.fp32)
        if fp32 is None:
            raise BadInput("localisation needs model.fp32.onnx in the folder")
        path = checked_file(folder, fp32)
        cal = entry.calibration
        if entry.precision is Precision.int8 and cal is not None and cal.equalized:
            from exporters.equalize import fp32_for_int8

            return fp32_for_int8(path, True).SerializeToString(), "model.fp32.onnx, cross-layer equalized as int8 was"
        return path.read_bytes(), "model.fp32.onnx"
    if reference.source is None:
        raise BadInput(f"localising an fp32 graph compares it with what it was exported from: {reference.why_missing}")
    with tempfile.TemporaryDirectory() as tmp:
        return reference.source.baseline(entry.opset, Path(tmp)), f"{reference.name} source (made again)"


def _errors(base: dict[str, tuple[str, np.ndarray]], cand: dict[str, tuple[str, np.ndarray]]) -> list[LayerError]:
    layers = []
    for name, (op, b) in base.items():
        if name in cand and cand[name][1].shape == b.shape:
            c = cand[name][1]
            err = float(np.linalg.norm((c - b).astype(np.float64)) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))
            layers.append(LayerError(name, op, err if np.isfinite(err) else float("inf")))
    return layers


NO_ERROR = 1e-6  # a layer below this rel. L2 computes what fp32 does (a float stem, a kept layer)


def _largest_jump(layers: list[LayerError]) -> LayerError | None:
    """The weighted layer whose error grows most over the largest error before it. A layer after layers with no
    error (the first quantized one after a float stem) has no ratio: its error rising from zero says nothing
    about which layer to keep."""
    jump, prev, best = None, 0.0, 0.0
    for layer in (la for la in layers if la.op in WEIGHTED):
        if not np.isfinite(layer.rel_l2):
            return jump or layer
        if prev > NO_ERROR and layer.rel_l2 > NO_ERROR and layer.rel_l2 / prev > best:
            best, jump = layer.rel_l2 / prev, layer
        prev = max(prev, layer.rel_l2)
    return jump


def localize(folder: Path, manifest: Manifest, entry: GraphEntry, reference: Reference, x: np.ndarray,
             tol: Tolerance, rank_inputs: np.ndarray | None = None, passed: bool = False) -> Localization:
    """First layer whose output departs from the fp32 baseline, by the module it comes from (layers are matched
    by name: module paths); for int8, the layers whose reverting recovers most, ranked on `rank_inputs`. An
    artifact that `passed` with no layer past the bar gets no suggestion: there is nothing to fix."""
    baseline, what = _baseline(folder, manifest, entry, reference)
    layers = _errors(layer_outputs(baseline, x), layer_outputs((folder / entry.file).read_bytes(), x))
    if not layers:
        raise BadInput("no layer names are shared by the two graphs; re-export both with resnetx")
    bar = tol.rel_l2 if tol.rel_l2 is not None else 0.05
    first = next((layer for layer in layers if not layer.rel_l2 <= bar), None)
    jump = _largest_jump(layers)
    culprit = first if first is not None else jump
    ranked = []
    if entry.precision is Precision.int8:
        ranked = _revert_first(folder, manifest, entry, x if rank_inputs is None else rank_inputs, layers)
    keep = ranked[0] if ranked else jump.layer.split("/")[0] if jump else None
    suggestion = None
    if keep and entry.precision is not Precision.fp32 and not (passed and first is None):
        suggestion = remake_command(manifest, folder, (entry.precision,), add_keep=(keep,))
    return Localization(what, bar, first.layer if first else None, culprit.layer.split("/")[0] if culprit else None,
                        jump.layer if jump else None, suggestion,
                        [la for la in layers if la.op in (*WEIGHTED, "Add")], revert_first=ranked[:5])


MAX_RANKED = 12  # layers ranked by trial graphs; more candidates are preselected by their error growth
RANKED_ON = 128  # images each trial graph is ranked on, of verify's inputs: few layers are ranked, so more images


def _revert_first(folder: Path, manifest: Manifest, entry: GraphEntry, x: np.ndarray,
                  layers: list[LayerError]) -> list[str]:
    """The int8 layers, the one whose reverting recovers most first: the ranking the accuracy search uses, made
    from the folder's calibration ranges (none when they are not in the folder)."""
    from exporters.calibrate import Ranges
    from exporters.equalize import fp32_for_int8
    from exporters.onnx import load_onnx
    from exporters.quantize import quantize_int8, quantized_layers, shifts_of
    from pipeline.machine import needs_reduce_range
    from pipeline.search import Logits, rank_layers

    cal, fp32 = entry.calibration, manifest.graphs.get(Precision.fp32)
    ranges = Ranges.load(folder / cal.cache_file) if cal is not None else None
    if ranges is None or fp32 is None:
        return []
    src, q = folder / fp32.file, load_onnx(folder / entry.file)
    errors = {la.layer: la.rel_l2 for la in layers}
    candidates = sorted(quantized_layers(q), key=lambda n: -errors.get(n, 0.0))[:MAX_RANKED]
    shifts = shifts_of(fp32_for_int8(src, cal.equalized), q)
    # laid out for the CPU the graph was made for, as it was: 7-bit weights where that CPU had no int8 dot product
    rr = cal.recipe == "cpu" and cal.isa is not None and needs_reduce_range(cal.isa)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trial.onnx"

        def without(layer: str) -> Path:
            quantize_int8(src, path, ranges, recipe=cal.recipe, exclude_nodes=(*entry.keep_fp32, layer),
                          quantize_ends=entry.quantize_ends, shifts=shifts, fallback=entry.fallback,
                          equalize=cal.equalized, reduce_range=rr)
            return path

        logits = Logits(x)
        return rank_layers(candidates, without, logits, logits.of(src), logits.of(folder / entry.file),
                           images=RANKED_ON)
