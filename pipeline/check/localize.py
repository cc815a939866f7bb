"""Which layer? The error of every layer of a graph against its fp32 baseline, named by PyTorch module."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.check.reference import Reference
from pipeline.folder.manifest import GraphEntry, Manifest, checked_file
from pipeline.folder.remake import remake_command
from pipeline.precisions import Precision, Tolerance
from resnetx.batching import batch_chunks
from resnetx.contract import INPUT_NAME
from resnetx.errors import BadInput

__all__ = ["LayerError", "Localization", "Judging", "localize", "layer_outputs"]

LAYER_OPS = ("Conv", "Gemm", "MatMul")  # the layers localisation reports (with residual Adds)


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
    suggestion_measured: str | None = None  # what the suggestion gave when it was tried, in words


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
    runs = [(sess.run(names, {INPUT_NAME: c}), n, len(c)) for c, n in batch_chunks(x, fixed or len(x), pad_to=fixed)]
    # a layer's value is per image; shapes, scalars and other graph bookkeeping (a Keras graph's) are not compared
    batched = [k for k in range(len(names)) if all(out[k].ndim and out[k].shape[0] == size for out, _, size in runs)]
    values = {names[k]: np.concatenate([out[k][:n] for out, n, _ in runs]) for k in batched}
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
    for layer in (la for la in layers if la.op in LAYER_OPS):
        if not np.isfinite(layer.rel_l2):
            return jump or layer
        if prev > NO_ERROR and layer.rel_l2 > NO_ERROR and layer.rel_l2 / prev > best:
            best, jump = layer.rel_l2 / prev, layer
        prev = max(prev, layer.rel_l2)
    return jump


@dataclass(frozen=True)
class Judging:
    """What verify judges an artifact on, for measuring a fix before it is suggested: its real inputs (read a chunk
    at a time), the reference's outputs on them, their labels where there are, the bar."""

    chunks: Callable[[], Iterator[np.ndarray]]  # every input verify compares: the real images, then the extreme ones
    reference: np.ndarray  # the reference's outputs on those inputs
    n_real: int  # how many are real images (agreement is judged on those)
    labels: np.ndarray | None  # of the first real images
    tolerance: Tolerance
    data: str  # what verify read them from (--data), labelled: what an accuracy search may be judged on


def localize(folder: Path, manifest: Manifest, entry: GraphEntry, reference: Reference, x: np.ndarray,
             tol: Tolerance, rank_inputs: np.ndarray | None = None, passed: bool = False,
             judging: Judging | None = None) -> Localization:
    """First layer whose output departs from the fp32 baseline, by the module it comes from (layers are matched
    by name: module paths); for int8, the layers whose reverting recovers most, ranked on `rank_inputs`, and (with
    `judging`, for a failing int8 graph) the fewest of them that bring it within its bar, measured on what verify
    judges before the line that makes it is suggested. An artifact that `passed` with no layer past the bar gets no
    suggestion: there is nothing to fix."""
    baseline, what = _baseline(folder, manifest, entry, reference)
    layers = _errors(layer_outputs(baseline, x), layer_outputs((folder / entry.file).read_bytes(), x))
    if not layers:
        raise BadInput("no layer names are shared by the two graphs; re-export both with resnetx")
    bar = tol.rel_l2 if tol.rel_l2 is not None else 0.05
    first = next((layer for layer in layers if not layer.rel_l2 <= bar), None)
    jump = _largest_jump(layers)
    culprit = first if first is not None else jump
    ranked: list[str] = []
    if entry.precision is Precision.int8:
        ranked = _revert_first(folder, manifest, entry, x if rank_inputs is None else rank_inputs, layers)
    keep = ranked[0] if ranked else jump.layer.split("/")[0] if jump else None
    suggestion, measured = None, None
    if keep and entry.precision is not Precision.fp32 and not (passed and first is None):
        suggestion = remake_command(manifest, folder, (entry.precision,), add_keep=(keep,))
    if ranked and not passed and judging is not None:
        suggestion, measured = _fix(folder, manifest, entry, ranked, judging)
    return Localization(what, bar, first.layer if first else None, culprit.layer.split("/")[0] if culprit else None,
                        jump.layer if jump else None, suggestion,
                        [la for la in layers if la.op in (*LAYER_OPS, "Add")], revert_first=ranked[:5],
                        suggestion_measured=measured)


MAX_RANKED = 12  # layers ranked by trial graphs; more candidates are preselected by their error growth
RANKED_ON = 128  # images each trial graph is ranked on, of verify's inputs: few layers are ranked, so more images


def _trials(folder: Path, manifest: Manifest, entry: GraphEntry) -> Callable[[tuple[str, ...], Path], Path] | None:
    """A maker of the int8 graph with some more layers kept out of int8, as the export that makes it with those
    layers in --keep-fp32 would (the folder's calibration ranges, the same bias shifts, fallback and layout); None
    when the folder's calibration ranges are not there."""
    from exporters.calibrate import Ranges
    from exporters.equalize import fp32_for_int8
    from exporters.onnx import load_onnx
    from exporters.quantize import quantize_int8, shifts_of
    from pipeline.machine import needs_reduce_range

    cal, fp32 = entry.calibration, manifest.graphs.get(Precision.fp32)
    ranges = Ranges.load(folder / cal.cache_file) if cal is not None else None
    if ranges is None or fp32 is None:
        return None
    src = folder / fp32.file
    shifts = shifts_of(fp32_for_int8(src, cal.equalized), load_onnx(folder / entry.file))
    # laid out for the CPU the graph was made for, as it was: 7-bit weights where that CPU had no int8 dot product
    rr = cal.recipe == "cpu" and cal.isa is not None and needs_reduce_range(cal.isa)

    def make(layers: tuple[str, ...], path: Path) -> Path:
        quantize_int8(src, path, ranges, recipe=cal.recipe, exclude_nodes=(*entry.keep_fp32, *layers),
                      quantize_ends=entry.quantize_ends, shifts=shifts, fallback=entry.fallback,
                      equalize=cal.equalized, reduce_range=rr)
        return path

    return make


def _revert_first(folder: Path, manifest: Manifest, entry: GraphEntry, x: np.ndarray,
                  layers: list[LayerError]) -> list[str]:
    """The int8 layers and residual adds, the one whose reverting recovers most first: the ranking the accuracy
    search uses, made from the folder's calibration ranges (none when they are not in the folder)."""
    from exporters.onnx import load_onnx
    from exporters.quantize import revertible
    from pipeline.make.ranking import Logits, rank_layers

    make, fp32 = _trials(folder, manifest, entry), manifest.graphs.get(Precision.fp32)
    if make is None or fp32 is None:
        return []
    errors = {la.layer: la.rel_l2 for la in layers}
    candidates = sorted(revertible(load_onnx(folder / entry.file)), key=lambda n: -errors.get(n, 0.0))
    with tempfile.TemporaryDirectory() as tmp:
        logits = Logits(x)
        return rank_layers(candidates[:MAX_RANKED], lambda layer: make((layer,), Path(tmp) / "trial.onnx"), logits,
                           logits.of(folder / fp32.file), logits.of(folder / entry.file), images=RANKED_ON)


def _judged(graph: Path, j: Judging) -> tuple[list[str], str]:
    """What verify would say of an int8 graph: the reasons it fails its bar (none: it passes), and its numbers."""
    from exporters.onnx import cpu_session, run_cpu

    sess = cpu_session(graph)
    got = np.concatenate([run_cpu(sess, c, batch=64) for c in j.chunks()])
    ref = j.reference
    agree = float((got[: j.n_real].argmax(1) == ref[: j.n_real].argmax(1)).mean())
    fails = []
    if j.tolerance.top1_agreement is not None and agree < j.tolerance.top1_agreement:
        fails.append("agreement")
    words = f"top-1 agreement {100 * agree:.2f}%"
    if j.tolerance.rel_l2 is not None:
        rel = float(np.linalg.norm(got.astype(np.float64) - ref) / max(np.linalg.norm(ref.astype(np.float64)), 1e-30))
        words += f", rel. L2 {rel:.2e}"
        if rel > j.tolerance.rel_l2:
            fails.append("rel_l2")
    if j.labels is not None:
        n = len(j.labels)
        drop = 100.0 * float((ref[:n].argmax(1) == j.labels).mean() - (got[:n].argmax(1) == j.labels).mean())
        words += f", accuracy drop {drop:.2f} points"
        if j.tolerance.accuracy_drop is not None and drop > j.tolerance.accuracy_drop:
            fails.append("accuracy")
    return fails, words


def _fix(folder: Path, manifest: Manifest, entry: GraphEntry, ranked: list[str],
         j: Judging) -> tuple[str | None, str]:
    """The export line that brings the int8 graph within its bar, and what it gave when measured: the fewest of the
    first-ranked layers kept out of int8 that pass (1, 2, 4, ... of them, then halved back), each graph made as that
    line makes it and judged on verify's inputs; where none does, the accuracy search's line with the bar's budget."""
    make = _trials(folder, manifest, entry)
    tol = j.tolerance
    bar = (f"bar: top-1 agreement {100 * (tol.top1_agreement or 0):.0f}%"
           + (f", rel. L2 {tol.rel_l2:g}" if tol.rel_l2 is not None else "")
           + (f", drop {tol.accuracy_drop:g} points" if j.labels is not None and tol.accuracy_drop is not None else ""))
    if make is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trial.onnx"
            tried: dict[int, tuple[list[str], str]] = {}
            sizes = [k for k in (1, 2, 4, 8) if k < len(ranked)] + [len(ranked)]
            passing = next((k for k in sizes if not tried.setdefault(k, _judged(make(tuple(ranked[:k]), path), j))[0]),
                           None)
            if passing is not None:
                lo = max((k for k in sizes if k < passing), default=0)
                while passing - lo > 1:  # halve back to the fewest that pass
                    mid = (lo + passing) // 2
                    if tried.setdefault(mid, _judged(make(tuple(ranked[:mid]), path), j))[0]:
                        lo = mid
                    else:
                        passing = mid
                kept = tuple(ranked[:passing])
                line = remake_command(manifest, folder, (entry.precision,), add_keep=kept)
                return line, (f"measured before printing: keeping {', '.join(kept)} out of int8 gives "
                              f"{tried[passing][1]} on verify's inputs ({bar})")
            worst, why = tried[len(ranked)][1], tried[len(ranked)][0]
    else:
        worst, why = "not measured (the folder's calibration ranges are not there)", []
    if "rel_l2" in why:  # the search judges accuracy: it cannot meet an element-wise bar either
        return None, (f"keeping the {len(ranked)} first-ranked layers out of int8 gives {worst} ({bar}): no layer "
                      "kept in float brings its rel. L2 under the bar, which int8 is not judged by unless asked "
                      "(--rtol-l2): judge it on agreement and accuracy, or keep more of it in fp16 (--precision fp16)")
    budget = tol.accuracy_drop if tol.accuracy_drop is not None else 0.5
    cal = entry.calibration
    judge = j.data if j.labels is not None and (cal is None or j.data != cal.dataset) else None
    line = remake_command(manifest, folder, (entry.precision,), search=(budget, judge))
    return line, (f"keeping the {len(ranked)} first-ranked layers out of int8 gives {worst} ({bar}): the accuracy "
                  f"search (--max-accuracy-drop {budget:g}) measures which layers to keep instead")
