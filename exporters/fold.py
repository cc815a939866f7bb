"""Copies of a graph that take what a serving pipeline gives them: the first convolution absorbing a per-channel input
scale (DeepStream's nvinfer computes one net-scale-factor * (x - offsets)), or the whole preprocessing put in front
of the graph, a per-pixel mean image included (which nvinfer's per-channel offsets cannot express)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporters.onnx import (
    OnnxArtifact,
    check_onnx,
    graph_batch,
    load_onnx,
    opset_of,
    own_weights,
    save_onnx,
    set_metadata,
)
from resnetx.contract import INPUT_NAME
from resnetx.errors import BadInput
from resnetx.lazy import lazy_import

if TYPE_CHECKING:
    import onnx
else:
    onnx = lazy_import("onnx")

__all__ = ["fold_input_scale", "first_conv", "fold_preprocessing"]


def first_conv(model: onnx.ModelProto) -> onnx.NodeProto:
    """The convolution that reads the input (directly, or through a layout Transpose or an fp16 graph's Cast), with
    its weight an initializer: the layer that can absorb a scale of each input channel."""
    readers = [n for n in model.graph.node if INPUT_NAME in n.input]
    node = readers[0] if len(readers) == 1 else None
    while node is not None and node.op_type in ("Transpose", "Cast"):
        readers = [n for n in model.graph.node if node.output[0] in n.input]
        node = readers[0] if len(readers) == 1 else None
    inits = {i.name for i in model.graph.initializer}
    if node is None or node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        raise BadInput("the graph's input does not go straight into one convolution with its own weights (an int8 "
                       "graph that quantizes its stem, or another first layer): it cannot fold a per-channel scale")
    return node


def fold_input_scale(src: Path, dst: Path, scale: tuple[float, ...]) -> OnnxArtifact:
    """`src` with its first convolution's weights multiplied by `scale[c]` along input channel c: fed x, the copy
    computes what `src` computes fed x * scale (zero padding stays zero, so borders are exact too)."""
    from onnx import numpy_helper

    model = load_onnx(src)
    own_weights(model)
    conv = first_conv(model)
    init = next(i for i in model.graph.initializer if i.name == conv.input[1])
    w = numpy_helper.to_array(init)
    groups = next((a.i for a in conv.attribute if a.name == "group"), 1)
    if groups != 1 or w.shape[1] != len(scale):
        raise BadInput(f"the first convolution takes {w.shape[1]} input channel(s) in {groups} group(s); the scale "
                       f"has {len(scale)} value(s)")
    folded = (w.astype(np.float64) * np.asarray(scale, np.float64).reshape(1, -1, 1, 1)).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(folded, init.name))
    set_metadata(model, {"resnetx.folded_input_scale": ",".join(f"{s:.9g}" for s in scale)})
    check_onnx(model, where=Path(dst).name)
    sha, size = save_onnx(model, dst)
    return OnnxArtifact(Path(dst), sha, "folded", opset_of(model), size, 0.0, static_batch=graph_batch(model),
                        details={"folded_into": conv.name, "scale": list(scale)})


def fold_preprocessing(src: Path, dst: Path, divide: float, mean: np.ndarray, std: tuple[float, ...]) -> OnnxArtifact:
    """`src` behind nodes that compute its input from raw pixels (0-255, the model's channel order, NCHW): x / divide
    less `mean` (a per-pixel (C, H, W) mean image, or one value per channel), over `std` per channel. Fed raw
    pixels, the copy computes what `src` computes fed the preprocessed ones."""
    from onnx import helper, numpy_helper

    model = load_onnx(src)
    own_weights(model)
    g = model.graph
    x = g.input[0]
    if x.name != INPUT_NAME:
        raise BadInput(f"{Path(src).name} takes {x.name!r}, not resnetx's {INPUT_NAME!r}: fold resnetx's graphs")
    c = x.type.tensor_type.shape.dim[1].dim_value
    m = np.asarray(mean, np.float32)
    m = m.reshape(1, *m.shape) if m.ndim == 3 else m.reshape(1, -1, 1, 1)
    if m.shape[1] != c or len(std) != c:
        raise BadInput(f"the graph takes {c} channel(s); the mean has {m.shape[1]} and the std {len(std)}")
    inner = "resnetx/normalised"
    for node in g.node:
        node.input[:] = [inner if i == INPUT_NAME else i for i in node.input]
    consts = {"resnetx/divide": np.asarray(divide, np.float32), "resnetx/mean": m,
              "resnetx/std": np.asarray(std, np.float32).reshape(1, -1, 1, 1)}
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    front = [helper.make_node("Div", [INPUT_NAME, "resnetx/divide"], ["resnetx/scaled"], name="resnetx/divide"),
             helper.make_node("Sub", ["resnetx/scaled", "resnetx/mean"], ["resnetx/centred"], name="resnetx/mean"),
             helper.make_node("Div", ["resnetx/centred", "resnetx/std"], [inner], name="resnetx/std")]
    for k, node in enumerate(front):
        g.node.insert(k, node)
    what = "a per-pixel mean image" if m.shape[2] > 1 else "a mean per channel"
    set_metadata(model, {"resnetx.folded_preprocessing": f"x / {divide:g}, less {what}, over std"})
    check_onnx(model, where=Path(dst).name)
    sha, size = save_onnx(model, dst)
    return OnnxArtifact(Path(dst), sha, "folded", opset_of(model), size, 0.0, static_batch=graph_batch(model),
                        details={"folded": "preprocessing", "divide": divide, "std": list(std)})
