"""ONNX fp32 -> int8 with explicit Q/DQ: the layout per target, layers kept in float as groups, bias correction.

- `tensorrt` recipe: one symmetric int8 Q/DQ pair on each input of a quantized Conv/Gemm and residual Add (shared
  by every quantized consumer of the tensor), per-channel symmetric int8 weights, float biases. Nothing else is
  quantized: TensorRT fuses Conv+ReLU(+Add) around those pairs, and a pair on a conv's output before its ReLU
  would only add rounding.
- `cpu` recipe: onnxruntime's `quantize_static` layout (uint8 activations around every op, int32 biases), which
  its x86 kernels fuse into QLinearConv; the ranges are the same calibration's.
- A layer kept in float (--keep-fp32, the float ends) is a group: it reads the float tensor, and every Q/DQ pair
  whose only way on is into it (the pair before the ReLU that feeds it) goes too, so it sees no int8 error.
- Fast bias correction (as NNCF does): each quantized layer's bias absorbs the mean shift its quantization
  causes, measured per channel on calibration images with the fp32 graph's input to that layer.
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters.calibrate import InputSums, Ranges
from exporters.equalize import fp32_for_int8
from exporters.fp16 import layers_to_fp16
from exporters.onnx import (
    OnnxArtifact,
    check_onnx,
    cpu_session,
    drop_unused_initializers,
    graph_batch,
    opset_of,
    quiet_converters,
    save_onnx,
    set_metadata,
)
from exporters.sizes import activation_bytes
from resnetx.batching import batch_chunks
from resnetx.contract import INPUT_NAME
from resnetx.errors import BackendUnavailable, BadInput, first_line
from resnetx.lazy import lazy_import

if TYPE_CHECKING:
    import onnx
else:
    onnx = lazy_import("onnx")

__all__ = ["Int8Recipe", "Fallback", "RecipeLayout", "INT8_RECIPES", "INT8_GRAPH_REVISION", "quantize_int8",
           "int8_graph", "bias_shifts", "shifts_of", "apply_shifts", "quantized_layers", "end_layers", "keep_float",
           "revert_layers"]

CHUNK_BYTES = 256 << 20  # activations held at once while bias correction measures each layer
INT8_GRAPH_REVISION = 6  # bumped when quantize_int8 makes a different graph from the same inputs (export's cache key)
BIAS_SHIFT_LIMIT = 2.0  # bias correction leaves a layer whose bias it would move by this many times itself (NNCF's)
WEIGHTED = ("Conv", "Gemm")
# ops a kept layer's group extends through: they pass a value on without mixing it with another
PASS_THROUGH = ("Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Identity",
                "Squeeze", "Unsqueeze")


class Int8Recipe(str, Enum):
    """Which runtime an int8 graph is laid out for (`--int8-target`, the manifest's calibration `recipe`)."""

    tensorrt = "tensorrt"  # symmetric int8 activations, float bias: what TensorRT's parser and fusions take
    cpu = "cpu"  # uint8 activations, int32 bias: what onnxruntime's x86 int8 kernels accelerate


class Fallback(str, Enum):
    """What the layers kept out of int8 compute in: fp16 for the tensorrt recipe where accuracy allows (auto)."""

    auto = "auto"
    fp16 = "fp16"
    fp32 = "fp32"


@dataclass(frozen=True)
class RecipeLayout:
    """How the Q/DQ graph of one recipe is laid out."""

    activation: str  # "int8" (symmetric) or "uint8" (asymmetric)
    op_types: tuple[str, ...]  # the ops whose tensors get Q/DQ pairs (calibration covers their tensors)
    quantize_bias: bool
    reduce_range: bool = False  # cpu: 7-bit weights, onnxruntime's remedy for u8 x s8 saturation without VNNI


INT8_RECIPES = {
    Int8Recipe.tensorrt: RecipeLayout("int8", ("Conv", "Gemm", "Add"), False),
    Int8Recipe.cpu: RecipeLayout("uint8", ("Conv", "Gemm", "Add", "Relu", "Clip", "MaxPool", "GlobalAveragePool",
                                         "AveragePool", "Flatten"), True),
}


# --------------------------------------------------------------------------- graph helpers
def _consumers(g: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            out[i].append(n)
    return out


def _producers(g: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """tensor name -> the node that outputs it."""
    return {o: n for n in g.node for o in n.output}


def _is_dq(producer: dict[str, onnx.NodeProto], tensor: str) -> bool:
    """Whether the tensor comes out of a DequantizeLinear."""
    return getattr(producer.get(tensor), "op_type", "") == "DequantizeLinear"


def _array(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray:
    return onnx.numpy_helper.to_array(inits[name])


def end_layers(model: onnx.ModelProto) -> list[str]:
    """The first conv fed by the input and the last weighted layer producing the logits."""
    g = model.graph
    first = next((n.name for n in g.node if n.op_type == "Conv" and INPUT_NAME in n.input), None)
    last = next((n.name for n in reversed(g.node) if n.op_type in (*WEIGHTED, "MatMul")), None)
    return [n for n in (first, last) if n]


def revertible(model: onnx.ModelProto) -> list[str]:
    """What the accuracy search may keep out of int8: the int8 conv/gemm layers and the quantized residual adds."""
    producer = _producers(model.graph)
    adds = [n.name for n in model.graph.node if n.op_type == "Add" and any(_is_dq(producer, i) for i in n.input)]
    return _quantized(model.graph, producer) + adds


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """Conv/Gemm layers of a Q/DQ graph that take int8 weights (their weight comes through DequantizeLinear)."""
    return _quantized(model.graph, _producers(model.graph))


def _quantized(g: onnx.GraphProto, producer: dict[str, onnx.NodeProto]) -> list[str]:
    return [n.name for n in g.node if n.op_type in WEIGHTED and len(n.input) > 1 and _is_dq(producer, n.input[1])]


# --------------------------------------------------------------------------- the tensorrt layout
def _weight_dq(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], new: list) -> onnx.NodeProto:
    """Per-channel symmetric int8 weights: the initializers and the DequantizeLinear that feeds `node`."""
    from onnx import helper, numpy_helper

    w = _array(inits, node.input[1]).astype(np.float32)
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    axis = 0 if node.op_type == "Conv" or trans_b else 1
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=other)
    scale = (np.where(amax > 0, amax, 1.0) / 127.0).astype(np.float32)
    shape = [-1 if i == axis else 1 for i in range(w.ndim)]
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    base = node.input[1]
    new += [numpy_helper.from_array(q, f"{base}_quantized"), numpy_helper.from_array(scale, f"{base}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{base}_zero_point")]
    dq = helper.make_node("DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                          [f"{base}_dq"], name=f"{base}_DequantizeLinear", axis=axis)
    node.input[1] = dq.output[0]
    return dq


def _activation_qdq(t: str, ranges: Ranges, new: list) -> list[onnx.NodeProto]:
    from onnx import helper, numpy_helper

    if t not in ranges.ranges:
        raise BadInput(f"the calibration ranges have no range for tensor {t!r}: they were made for another graph; "
                       "re-export with --force")
    scale = np.float32(max(ranges.amax(t), 1e-8) / 127.0)
    new += [numpy_helper.from_array(np.array(scale), f"{t}_scale"),
            numpy_helper.from_array(np.array(0, np.int8), f"{t}_zero_point")]
    return [helper.make_node("QuantizeLinear", [t, f"{t}_scale", f"{t}_zero_point"], [f"{t}_q"],
                             name=f"{t}_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [f"{t}_q", f"{t}_scale", f"{t}_zero_point"], [f"{t}_dq"],
                             name=f"{t}_DequantizeLinear")]


def _tensorrt_inputs(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], floats: set[str]) -> tuple[int, ...]:
    """Which inputs of `node` the tensorrt layout quantizes: a Conv/Gemm's data (its weights an initializer), both
    of a residual Add of two float activations (neither an initializer; an Add of shape arithmetic is not one)."""
    if node.op_type in WEIGHTED and len(node.input) > 1 and node.input[1] in inits:
        return (0,)
    if node.op_type == "Add" and not any(t in inits for t in node.input) and all(t in floats for t in node.input):
        return (0, 1)
    return ()


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """The tensors of the graph whose inferred type is float32."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
            if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


def tensorrt_activations(model: onnx.ModelProto) -> set[str]:
    """The activation tensors the tensorrt layout puts Q/DQ pairs on (the only ones its calibration needs)."""
    inits = {i.name: i for i in model.graph.initializer}
    floats = _float_tensors(model)
    return {node.input[k] for node in model.graph.node for k in _tensorrt_inputs(node, inits, floats)}


def _place_tensorrt(model: onnx.ModelProto, ranges: Ranges, excluded: set[str]) -> onnx.ModelProto:
    """Q/DQ pairs on the inputs of quantized Conv/Gemm and residual Add, each emitted just before its first use."""
    q = onnx.ModelProto()
    q.CopyFrom(model)
    g = q.graph
    inits = {i.name: i for i in g.initializer}
    floats = _float_tensors(model)
    new_inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    pairs: dict[str, str] = {}  # float tensor -> its dequantized copy
    for node in list(g.node):
        read = () if node.name in excluded else _tensorrt_inputs(node, inits, floats)
        if read and node.op_type in WEIGHTED:
            nodes.append(_weight_dq(node, inits, new_inits))
        for k in read:
            t = node.input[k]
            if t not in pairs:
                nodes += _activation_qdq(t, ranges, new_inits)
                pairs[t] = f"{t}_dq"
            node.input[k] = pairs[t]
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    drop_unused_initializers(g)
    g.initializer.extend(new_inits)
    return q


# --------------------------------------------------------------------------- the cpu layout
def _place_ort(src: Path, ranges: Ranges, excluded: set[str], recipe: RecipeLayout) -> onnx.ModelProto:
    """onnxruntime's quantize_static with our ranges (handed over as its calibration cache)."""
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data
    except ImportError as e:
        raise BackendUnavailable("the cpu int8 recipe needs onnxruntime >= 1.32: pip install -U onnxruntime") from e
    data = {k: TensorData(lowest=np.array([lo], np.float32), highest=np.array([hi], np.float32))
            for k, (lo, hi) in ranges.ranges.items()}
    signed = recipe.activation == "int8"
    extra = {"ActivationSymmetric": signed, "WeightSymmetric": True, "QuantizeBias": recipe.quantize_bias}
    with tempfile.TemporaryDirectory(prefix="rx-quant-") as tmp, quiet_converters():
        cache, out = Path(tmp) / "ranges.json", Path(tmp) / "int8.onnx"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        try:
            quantize_static(str(src), str(out), None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(recipe.op_types), per_channel=True,
                            reduce_range=recipe.reduce_range,
                            activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            nodes_to_exclude=sorted(excluded), calibrate_method=CalibrationMethod.MinMax,
                            extra_options=extra, calibration_cache_path=str(cache))
        except (ValueError, RuntimeError, KeyError) as e:
            raise BadInput(f"int8 quantization failed: {first_line(e)}") from e
        return onnx.load(str(out))


# --------------------------------------------------------------------------- layers kept in float
def keep_float(model: onnx.ModelProto, excluded: set[str]) -> None:
    """Each excluded layer reads float tensors. Walking up from its data input, every activation Q/DQ pair is
    bypassed for it, and so are the pairs before a pass-through op (ReLU, pooling, flatten) that only it reads:
    a kept layer's output is the fp32 layer's output of the same float input. Pairs left unread are removed."""
    g = model.graph
    producer = _producers(g)
    for name in [n.name for n in g.node if n.name in excluded]:  # _bypass removes nodes: look each one up again
        node = next(n for n in g.node if n.name == name)
        for k in range(1 if node.op_type in WEIGHTED else len(node.input)):
            _bypass(model, producer, node, k)
    _drop_dead_qdq(g)


def revert_layers(q: onnx.ModelProto, fp32: onnx.ModelProto, names: Iterable[str]) -> None:
    """Layers of a placed int8 graph (before bias correction) put back in float, in place: their weights and
    biases from `fp32` (the graph it was placed from), their inputs through keep_float. What int8_graph makes with
    them excluded, without placing the graph again: the accuracy search's quick trials."""
    wanted = set(names)
    f_nodes = {n.name: n for n in fp32.graph.node}
    f_inits = {i.name: i for i in fp32.graph.initializer}
    producer = _producers(q.graph)
    taken = {i.name for i in q.graph.initializer} | set(producer)
    for node in q.graph.node:
        if node.name not in wanted or node.op_type not in WEIGHTED:
            continue
        f = f_nodes[node.name]
        for k in range(1, min(len(node.input), len(f.input))):
            dq = producer.get(node.input[k])
            if dq is None or dq.op_type != "DequantizeLinear" or f.input[k] not in f_inits:
                continue
            name = f.input[k] if f.input[k] not in taken else f"{f.input[k]}_float"  # quantize_static's DQ outputs
            if name not in taken:  # keep the float names
                q.graph.initializer.append(f_inits[f.input[k]])
                q.graph.initializer[-1].name = name
                taken.add(name)
            node.input[k] = name
    keep_float(q, wanted)
    drop_unused_initializers(q.graph)


def _bypass(model: onnx.ModelProto, producer: dict[str, onnx.NodeProto], node: onnx.NodeProto, k: int) -> None:
    while True:
        dq = producer.get(node.input[k])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":  # an activation's pair (weights have no Q node)
            node.input[k] = _float_of(model, producer, q)
            continue
        up = producer.get(node.input[k])
        if up is None or up.op_type not in PASS_THROUGH:
            return
        _drop_dead_qdq(model.graph)
        if _consumers(model.graph)[node.input[k]] != [node]:  # it feeds others too: they keep their int8 inputs
            return
        node, k = up, 0


def _float_of(model: onnx.ModelProto, producer: dict[str, onnx.NodeProto], q: onnx.NodeProto) -> str:
    """The float tensor a Q/DQ pair stands for. A uint8 pair with zero point 0 clips at 0: onnxruntime folds a
    ReLU into it (and drops the ReLU node), so its float stand-in is a ReLU of the pair's input."""
    inits = {i.name: i for i in model.graph.initializer}
    zp = _array(inits, q.input[2]) if len(q.input) > 2 and q.input[2] in inits else np.array(0, np.int8)
    if zp.dtype != np.uint8 or int(zp.ravel()[0]) != 0:
        return q.input[0]
    name = f"{q.input[0]}_relu"
    if name not in producer:
        from onnx import helper

        relu = helper.make_node("Relu", [q.input[0]], [name], name=f"{q.input[0]}/kept_relu")
        model.graph.node.insert(list(model.graph.node).index(q), relu)
        producer[name] = relu
    return name


def _drop_dead_qdq(g: onnx.GraphProto) -> None:
    outputs = {o.name for o in g.output}
    while True:  # DQ nodes nobody reads, then the Q nodes that fed only them
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            g.node.remove(n)


# --------------------------------------------------------------------------- bias correction
@dataclass(frozen=True)
class _Layer:
    """What it takes to compute what a quantized layer's weights' rounding takes from its output."""

    name: str
    input: str  # the float tensor it quantizes (the same name in the fp32 graph)
    op: str
    attrs: dict[str, Any]
    dw: np.ndarray  # the fp32 weights less the int8 ones, dequantized
    bias_shift: np.ndarray | float  # the int8 layer's bias minus the fp32 layer's (a corrected graph's shift)
    bias: np.ndarray | None  # the fp32 layer's bias


def _layers(fp32: onnx.ModelProto, q: onnx.ModelProto) -> list[_Layer]:
    shifts = shifts_of(fp32, q)
    qi = {i.name: i for i in q.graph.initializer}
    fi = {i.name: i for i in fp32.graph.initializer}
    fnodes = {n.name: n for n in fp32.graph.node}
    producer = _producers(q.graph)
    out = []
    for node in q.graph.node:
        if node.op_type not in WEIGHTED or len(node.input) < 2:  # Constant nodes have no inputs at all
            continue
        wdq, adq = producer.get(node.input[1]), producer.get(node.input[0])
        aq = producer.get(adq.input[0]) if adq is not None and adq.op_type == "DequantizeLinear" else None
        if node.op_type not in WEIGHTED or wdq is None or wdq.op_type != "DequantizeLinear" or aq is None \
                or aq.op_type != "QuantizeLinear" or node.name not in fnodes:
            continue
        axis = next((a.i for a in wdq.attribute if a.name == "axis"), 1)
        wi, ws, wz = (_array(qi, n).astype(np.float32) for n in wdq.input[:3])
        shape = [-1 if d == axis else 1 for d in range(wi.ndim)]
        w = _array(fi, fnodes[node.name].input[1]).astype(np.float32)
        out.append(_Layer(node.name, aq.input[0], node.op_type,
                          {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute},
                          w - (wi - wz.reshape(shape)) * ws.reshape(shape), shifts.get(node.name, 0.0),
                          _bias(fi, fnodes[node.name])))
    return out


def _bias(inits: dict[str, onnx.TensorProto], node: onnx.NodeProto) -> np.ndarray | None:
    return _array(inits, node.input[2]).astype(np.float32) if len(node.input) > 2 and node.input[2] in inits else None


def _apply_layer(layer: _Layer, x: Any, w: np.ndarray) -> Any:
    import torch
    import torch.nn.functional as F

    wt = torch.from_numpy(w)
    if layer.op == "Gemm":
        return x @ (wt.T if layer.attrs.get("transB", 0) else wt)
    pads = layer.attrs.get("pads", [0, 0, 0, 0])
    x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
    return F.conv2d(x, wt, stride=layer.attrs.get("strides", [1, 1]), dilation=layer.attrs.get("dilations", [1, 1]),
                    groups=layer.attrs.get("group", 1))


def bias_shifts(fp32_path: Path, q: onnx.ModelProto, images: np.ndarray | Iterable[np.ndarray] | None,
                batch: int = 64, equalize: bool = False, sums: InputSums | None = None) -> dict[str, np.ndarray]:
    """Per quantized layer, the per-channel mean of what its weights' rounding takes from its output, (W - Wq) x,
    on the fp32 graph's input to it (the equalized fp32 graph's, with `equalize`), less a corrected graph's shift.
    A layer whose shift would move any bias by BIAS_SHIFT_LIMIT times itself or more (or with no bias, or a zero
    one) keeps its bias, as NNCF's fast bias correction does. The activations' rounding and clipping are left out:
    on a trained ResNet-50 at 224, correcting their mean too took top-1 agreement with fp32 from 95% to 86%
    (docs/precision.md). A layer is linear in its input, so the mean comes from the inputs summed over the images:
    `sums`, where calibration took them of every layer's input, else a pass over `images` (an array, or batches
    of them read one at a time); then one image's worth of (W - Wq) x per layer."""
    import torch

    fp32 = fp32_for_int8(fp32_path, equalize)
    layers = _layers(fp32, q)
    if not layers:
        return {}
    wanted = sorted({la.input for la in layers})
    if sums is None or not sums.images or not set(wanted) <= set(sums.sums):
        if images is None:
            raise ValueError("bias correction needs images, or sums of every layer's input")
        sums = _input_sums(fp32, wanted, images, batch)
    shifts = {}
    with torch.inference_mode():
        for la in layers:
            diff = _apply_layer(la, torch.from_numpy(sums.sums[la.input][None]), la.dw.astype(np.float64))
            per_image = diff.sum([0] if diff.ndim == 2 else [0, 2, 3]) / (sums.images * diff[0, 0].numel())
            shift = (per_image.numpy() - np.asarray(la.bias_shift, np.float64)).astype(np.float32)
            if _shift_kept(shift, la.bias):
                shifts[la.name] = shift
    return shifts


def _input_sums(fp32: onnx.ModelProto, wanted: list[str], images: np.ndarray | Iterable[np.ndarray],
                batch: int) -> InputSums:
    """Each wanted tensor of the fp32 graph summed over `images`."""
    m = onnx.ModelProto()
    m.CopyFrom(fp32)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in wanted if t not in have)
    sess = cpu_session(m, optimize=False)  # as calibration's session: the same values, the same graph
    fixed = graph_batch(fp32)
    batch = max(1, min(batch, CHUNK_BYTES // max(activation_bytes(fp32, set(wanted)), 1)))  # bounded memory
    sums = InputSums()
    for b in [images] if isinstance(images, np.ndarray) else images:
        for x, n in batch_chunks(b, fixed or batch, pad_to=fixed or 0):
            sums.add(dict(zip(wanted, sess.run(wanted, {INPUT_NAME: x}), strict=True)), n)
    return sums


def _shift_kept(shift: np.ndarray, bias: np.ndarray | None) -> bool:
    return bias is not None and bool((bias != 0).all()) and float(np.abs(shift / bias).max()) < BIAS_SHIFT_LIMIT


def shifts_of(fp32: onnx.ModelProto, q: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The bias shifts a bias-corrected int8 graph carries: its layers' biases minus the fp32 graph's."""
    fi, qi = {i.name: i for i in fp32.graph.initializer}, {i.name: i for i in q.graph.initializer}
    fnodes = {n.name: n for n in fp32.graph.node}
    producer = _producers(q.graph)
    layers = set(_quantized(q.graph, producer))
    out = {}
    for node in q.graph.node:
        f = fnodes.get(node.name)
        if node.name not in layers or f is None or len(node.input) < 3:
            continue
        before = _array(fi, f.input[2]).astype(np.float64) if len(f.input) > 2 and f.input[2] in fi else 0.0
        if node.input[2] in qi:
            after = _array(qi, node.input[2]).astype(np.float64)
        elif (dq := producer.get(node.input[2])) is not None and dq.op_type == "DequantizeLinear":
            after = _array(qi, dq.input[0]).astype(np.float64) * _array(qi, dq.input[1])
        else:
            continue
        out[node.name] = (after - before).astype(np.float32)
    return out


def apply_shifts(q: onnx.ModelProto, shifts: dict[str, np.ndarray]) -> list[str]:
    """Add each layer's shift to its bias (a float bias, or an int32 one behind DequantizeLinear)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in q.graph.initializer}
    producer = _producers(q.graph)
    quantized = set(_quantized(q.graph, producer))  # a layer kept in float computes what fp32 does: no shift for it
    done = []
    for node in q.graph.node:
        if node.name not in shifts or node.name not in quantized:
            continue
        shift = shifts[node.name]
        if len(node.input) < 3 or not node.input[2]:
            name = f"{node.name}.bias_correction"
            q.graph.initializer.append(numpy_helper.from_array(shift.astype(np.float32), name))
            del node.input[2:]
            node.input.append(name)
        elif node.input[2] in inits:
            b = _array(inits, node.input[2])
            inits[node.input[2]].CopyFrom(numpy_helper.from_array((b + shift).astype(b.dtype), node.input[2]))
        elif (dq := producer.get(node.input[2])) is not None and dq.op_type == "DequantizeLinear":
            bi, bs = _array(inits, dq.input[0]), _array(inits, dq.input[1])
            fixed = np.round((bi * bs + shift) / bs).astype(np.int32)
            inits[dq.input[0]].CopyFrom(numpy_helper.from_array(fixed, dq.input[0]))
        else:
            continue
        done.append(node.name)
    return done


# --------------------------------------------------------------------------- int8
def int8_graph(src: Path, ranges: Ranges, *, recipe: Int8Recipe, exclude_nodes: Iterable[str] = (),
               quantize_ends: bool = False, equalize: bool = False,
               reduce_range: bool = False) -> tuple[onnx.ModelProto, set[str], list[str]]:
    """(the Q/DQ graph before bias correction, the layers kept in float, the float ends): in memory.
    reduce_range (cpu recipe): 7-bit weights, for CPUs without int8 dot-product instructions."""
    model = fp32_for_int8(src, equalize)
    ends = [] if quantize_ends else end_layers(model)
    excluded = set(exclude_nodes) | set(ends)
    if unknown := excluded - {n.name for n in model.graph.node}:
        raise BadInput(f"--keep-fp32 names unknown layer(s) {', '.join(sorted(unknown))}; "
                       "layer names are module paths such as layer3.1.conv2 (see resnetx verify --localize)")
    recipe = Int8Recipe(recipe)
    if recipe is Int8Recipe.tensorrt:
        q = _place_tensorrt(model, ranges, excluded)
    else:
        with tempfile.TemporaryDirectory(prefix="rx-eq-") as tmp:  # quantize_static reads a file
            onnx.save(model, str(Path(tmp) / "fp32.onnx"))
            q = _place_ort(Path(tmp) / "fp32.onnx", ranges, excluded,
                           replace(INT8_RECIPES[recipe], reduce_range=reduce_range))
    keep_float(q, excluded)
    return q, excluded, ends


def quantize_int8(
    src: Path,
    dst: Path,
    ranges: Ranges,
    *,
    recipe: Int8Recipe | str = Int8Recipe.tensorrt,
    exclude_nodes: Iterable[str] = (),
    quantize_ends: bool = False,
    correction_images: np.ndarray | Iterable[np.ndarray] | None = None,
    correction_sums: InputSums | None = None,
    shifts: dict[str, np.ndarray] | None = None,
    fallback: str = "fp32",
    equalize: bool = False,
    reduce_range: bool = False,
) -> OnnxArtifact:
    """The int8 Q/DQ graph of `src` from calibration `ranges`.

    Unless `quantize_ends`, the stem conv (1-3 input channels, little compute) and the classifier stay in float:
    quantizing them costs the most accuracy for the least speed. Bias correction uses `shifts` when given (from
    `bias_shifts`; the search computes them once), else measures them from `correction_sums` (calibration's sums
    of the layers' inputs) or on `correction_images`, else is skipped.
    fallback "fp16": the excluded layers (not the float ends) compute in fp16. `equalize`: cross-layer equalize the
    fp32 graph first (the ranges must come from calibrate(equalize=True)).
    """
    recipe = Int8Recipe(recipe)
    start = time.perf_counter()
    q, excluded, ends = int8_graph(src, ranges, recipe=recipe, exclude_nodes=exclude_nodes, quantize_ends=quantize_ends,
                                   equalize=equalize, reduce_range=reduce_range)
    r = INT8_RECIPES[recipe]
    if shifts is None and (correction_images is not None or correction_sums is not None):
        shifts = bias_shifts(Path(src), q, correction_images, equalize=equalize, sums=correction_sums)
    corrected = apply_shifts(q, shifts) if shifts else []
    half = layers_to_fp16(q, set(exclude_nodes) - set(ends)) if fallback == "fp16" else []
    set_metadata(q, {"resnetx.precision": "int8", "resnetx.int8_recipe": recipe.value,
                     "resnetx.calib_method": ranges.method.value})
    check_onnx(q, where=Path(dst).name)
    sha, size = save_onnx(q, dst)
    return OnnxArtifact(
        path=Path(dst), sha256=sha, precision="int8", opset=opset_of(q), size_bytes=size,
        seconds=time.perf_counter() - start, static_batch=graph_batch(q),
        details={"quantizer": "resnetx Q/DQ placement" if recipe is Int8Recipe.tensorrt else
                 "onnxruntime.quantization.quantize_static (QDQ)", "recipe": recipe.value,
                 "activation": r.activation,
                 "weights": "int8 per-channel symmetric" + (", 7-bit (reduce_range)" if reduce_range else ""),
                 "bias": "int32" if r.quantize_bias else "float", "method": ranges.method.value,
                 "calibration_images": ranges.images, "bias_corrected": len(corrected),
                 "qdq_pairs": [n.op_type for n in q.graph.node].count("QuantizeLinear"),
                 "int8_layers": quantized_layers(q), "revertible": revertible(q), "excluded_nodes": sorted(excluded),
                 "float_ends": ends,
                 "fp16_layers": half, "equalized": equalize},
    )
