"""What a graph costs per image, from its inferred shapes: FLOPs (bench's TFLOP/s column) and activation bytes
(what sizes calibration's and bias correction's chunks, so that their memory stays bounded)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from resnetx.lazy import lazy_import

if TYPE_CHECKING:
    import onnx
else:
    onnx = lazy_import("onnx")

log = logging.getLogger(__name__)


def dims_of(vi: onnx.ValueInfoProto) -> list[int | None]:
    """A tensor's dims, None where not a fixed number."""
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def graph_gflops(model: onnx.ModelProto) -> float:
    """FLOPs per image (2 x the multiply-adds of Conv, Gemm and MatMul), from the graph's inferred shapes."""
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: dims_of(v) for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    weights |= {n.output[0]: tuple(numpy_helper.to_array(n.attribute[0].t).shape) for n in model.graph.node
                if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR}
    macs = 0
    for n in model.graph.node:
        out, w = shapes.get(n.output[0]), weights.get(n.input[1]) if len(n.input) > 1 else None
        if n.op_type == "Conv" and out and w and all(out[1:]):
            macs += int(np.prod(out[1:])) * int(np.prod(w[1:]))
        elif n.op_type in ("Gemm", "MatMul") and out and w and len(w) == 2 and all(out[1:]):
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            macs += int(np.prod(out[1:])) * int(w[1] if trans_b else w[0])
    return 2 * macs / 1e9


def activation_bytes(model: onnx.ModelProto, names: set[str] | None = None) -> int:
    """Bytes of one image's float activations (all, or those named), from the graph's inferred shapes: what sizes
    the chunks calibration and bias correction run at, so that their memory stays bounded. Where onnx's inference
    stops (a Keras graph's Pad takes its pads from shape arithmetic), onnxruntime's symbolic inference carries on; a
    tensor still of unknown size counts as the largest known one (an over-estimate: smaller chunks, never more
    memory)."""
    sizes = _tensor_sizes(onnx.shape_inference.infer_shapes(model), names)
    if any(v is None for v in sizes.values()):
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            sizes = _tensor_sizes(SymbolicShapeInference.infer_shapes(model, auto_merge=True), names)
        except Exception as e:  # noqa: BLE001 - its many failures leave the over-estimate below
            log.debug("symbolic shape inference failed (%s); unknown tensors counted at the largest size", e)
    largest = max((v for v in sizes.values() if v is not None), default=0)
    return sum(largest if v is None else v for v in sizes.values())


def _tensor_sizes(inferred: onnx.ModelProto, names: set[str] | None) -> dict[str, int | None]:
    """Bytes per image of each float tensor (those named, else every inferred one); None where a dim is unknown."""
    out: dict[str, int | None] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        if names is not None and vi.name not in names:
            continue
        t = vi.type.tensor_type
        dims = [d.dim_value for d in t.shape.dim[1:]]
        out[vi.name] = 4 * int(np.prod(dims)) if t.HasField("shape") and all(d > 0 for d in dims) else None
    for name in names or ():
        out.setdefault(name, None)  # named but never inferred
    return out
