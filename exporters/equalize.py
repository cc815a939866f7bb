"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019) of an fp32 ONNX graph before int8.

For each Conv -> ReLU -> Conv chain whose middle tensors have no other reader, output channel i of the first conv
is divided by s_i and input channel i of the second multiplied by s_i, with s_i = sqrt(r1_i / r2_i) from the two
weight ranges: ReLU is positively homogeneous, so the graph computes the same function, and both layers end up
with ranges sqrt(r1_i * r2_i). A few channels carrying most of a tensor's range (which per-tensor int8 activations
and per-output-channel int8 weights both handle badly) are spread out before calibration sees them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporters.onnx import load_onnx
from resnetx.lazy import lazy_import

if TYPE_CHECKING:
    import onnx
else:
    onnx = lazy_import("onnx")

__all__ = ["equalize", "equalizable_pairs", "fp32_for_int8"]


def fp32_for_int8(src: Path, equalize_it: bool) -> onnx.ModelProto:
    """The fp32 graph int8 is calibrated on and made from: `src`, cross-layer equalized when asked."""
    model = load_onnx(src)
    if equalize_it:
        equalize(model)
    return model


def equalizable_pairs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(conv1, conv2) for each Conv -> Relu -> Conv whose middle tensors each have one reader (groups of 1)."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            readers[i].append(n)
    pairs = []
    for relu in (n for n in g.node if n.op_type == "Relu"):
        c1, after = producer.get(relu.input[0]), readers[relu.output[0]]
        if c1 is None or c1.op_type != "Conv" or len(readers[c1.output[0]]) != 1 or len(after) != 1:
            continue
        c2 = after[0]
        grouped = any(a.name == "group" and a.i != 1 for n in (c1, c2) for a in n.attribute)
        if c2.op_type != "Conv" or grouped or len(c1.input) < 3 or not {c1.input[1], c1.input[2], c2.input[1]} <= inits:
            continue
        pairs.append((c1, c2))
    return pairs


def equalize(model: onnx.ModelProto, rounds: int = 2) -> int:
    """Equalize the graph in place (twice over: a middle conv of a bottleneck is in two pairs); the number of
    pairs equalized. The same graph always gives the same result."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    pairs = equalizable_pairs(model)

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float64)

    for _ in range(rounds):
        for c1, c2 in pairs:
            w1, b1, w2 = arr(c1.input[1]), arr(c1.input[2]), arr(c2.input[1])
            r1 = np.abs(w1).reshape(len(w1), -1).max(1)
            r2 = np.abs(np.moveaxis(w2, 1, 0)).reshape(w2.shape[1], -1).max(1)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-30)), 1.0)
            w1 /= s.reshape(-1, *([1] * (w1.ndim - 1)))
            b1 /= s
            w2 *= s.reshape(1, -1, *([1] * (w2.ndim - 2)))
            for name, v in ((c1.input[1], w1), (c1.input[2], b1), (c2.input[1], w2)):
                inits[name].CopyFrom(numpy_helper.from_array(v.astype(np.float32), name))
    return len(pairs)
