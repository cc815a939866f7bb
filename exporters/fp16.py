"""ONNX fp32 -> fp16: fp16 weights and compute, fp32 input/logits, named ops and layers kept in fp32."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporters.onnx import (
    OnnxArtifact,
    check_onnx,
    drop_unused_initializers,
    graph_batch,
    load_onnx,
    opset_of,
    quiet_converters,
    save_onnx,
    set_metadata,
)
from resnetx.errors import BackendUnavailable, BadInput
from resnetx.lazy import lazy_import

if TYPE_CHECKING:
    import onnx
else:
    onnx = lazy_import("onnx")

__all__ = ["FP16_MAX", "DEFAULT_FP16_BLOCK_OPS", "to_fp16", "layers_to_fp16"]

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
# Ops whose fp16 form loses too much or has no fp16 kernel on common runtimes; ResNets have
# none of the first kind, but user graphs may (Softmax over many classes, reductions).
DEFAULT_FP16_BLOCK_OPS = ("Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceL2", "Exp", "Log", "Pow", "Sqrt")


def to_fp16(
    src: Path,
    dst: Path,
    *,
    keep_fp32_ops: Iterable[str] = DEFAULT_FP16_BLOCK_OPS,
    keep_fp32_nodes: Iterable[str] = (),
) -> OnnxArtifact:
    """fp16 weights and compute; `input`/`logits` stay fp32; named ops/nodes stay fp32.

    Weights outside the fp16 range would become Inf: nodes that own such weights are kept in
    fp32 and listed in the result, never clamped silently.
    """
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise BackendUnavailable("fp16 conversion needs onnxconverter-common: pip install onnxconverter-common") from e
    start = time.perf_counter()
    model = load_onnx(src)
    nodes = set(keep_fp32_nodes)
    unknown = nodes - {n.name for n in model.graph.node}
    if unknown:
        raise BadInput(f"--keep-fp32 names unknown layer(s) {', '.join(sorted(unknown))}; "
                       "layer names are module paths such as layer3.1.conv2 (see resnetx verify --localize)")
    overflow = _nodes_with_large_weights(model, FP16_MAX)
    if overflow:
        log.warning("keeping %d node(s) in fp32 whose weights exceed the fp16 range: %s", len(overflow),
                    ", ".join(overflow))
    nodes |= set(overflow)
    originals = {i.name: i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    originals = {k: onnx.TensorProto.FromString(v.SerializeToString()) for k, v in originals.items()}
    with quiet_converters():
        fp16 = float16.convert_float_to_float16(
            model, keep_io_types=True, disable_shape_infer=False,
            op_block_list=list(keep_fp32_ops), node_block_list=sorted(nodes),
            min_positive_val=5.96e-8, max_finite_val=FP16_MAX,  # the real fp16 range, not 1e4
        )
    _restore_fp32_weights(fp16, originals)
    _drop_round_trip_casts(fp16)
    set_metadata(fp16, {"resnetx.precision": "fp16"})
    check_onnx(fp16, where=Path(dst).name)
    sha, size = save_onnx(fp16, dst)
    return OnnxArtifact(
        path=Path(dst), sha256=sha, precision="fp16", opset=opset_of(fp16), size_bytes=size,
        seconds=time.perf_counter() - start, static_batch=graph_batch(fp16),
        details={"converter": "onnxconverter-common float16", "keep_fp32_ops": list(keep_fp32_ops),
                 "keep_fp32_nodes": sorted(nodes), "overflow_nodes": overflow},
    )


def _restore_fp32_weights(model: onnx.ModelProto, originals: dict[str, onnx.TensorProto]) -> None:
    """The converter stores even blocked nodes' weights in fp16 and casts them back up, which
    loses precision and turns out-of-range values into Inf. Put the fp32 weights back for them."""
    inits = {i.name: i for i in model.graph.initializer}
    consumers: Counter[str] = Counter(name for n in model.graph.node for name in n.input)
    drop = []
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        src = node.input[0] if node.op_type == "Cast" and node.input else None
        if to != onnx.TensorProto.FLOAT or src not in originals or src not in inits or consumers[src] != 1:
            continue
        inits[src].CopyFrom(originals[src])
        for other in model.graph.node:
            for k, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[k] = src
        drop.append(node)
    for node in drop:
        model.graph.node.remove(node)
    stale = {n for node in drop for n in (*node.output, node.input[0])}  # typed fp16 by the converter
    kept_vi = [vi for vi in model.graph.value_info if vi.name not in stale]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_vi)


def _drop_round_trip_casts(model: onnx.ModelProto) -> None:
    """fp32 -> Cast(fp16) -> Cast(fp32) only loses range (a kept-fp32 last layer feeding fp32
    logits would overflow): let the fp32 value through unchanged."""
    def to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}
    drop = []
    for a in model.graph.node:
        if to(a) == onnx.TensorProto.FLOAT16 and a.output and a.output[0] in graph_outputs:
            # the converter's keep_io_types misses outputs of blocked last nodes: they stay fp32
            next(at for at in a.attribute if at.name == "to").i = onnx.TensorProto.FLOAT
            out = next(o for o in model.graph.output if o.name == a.output[0])
            out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
            continue
        users = consumers.get(a.output[0], []) if a.output else []
        if to(a) != onnx.TensorProto.FLOAT16 or a.output[0] in graph_outputs or len(users) != 1:
            continue
        b = users[0]
        if to(b) != onnx.TensorProto.FLOAT:
            continue
        b.op_type = "Identity"
        del b.attribute[:]
        b.input[0] = a.input[0]
        drop.append(a)
    for a in drop:
        model.graph.node.remove(a)


def _nodes_with_large_weights(model: onnx.ModelProto, limit: float) -> list[str]:
    big = {
        init.name for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT and onnx.numpy_helper.to_array(init).size
        and float(np.abs(onnx.numpy_helper.to_array(init)).max()) > limit
    }
    return [n.name for n in model.graph.node if big & set(n.input)]


# --------------------------------------------------------------------------- fp16 fallback
def layers_to_fp16(q: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    """Float layers of an int8 graph computed in fp16: weights and bias stored fp16, the input cast down and the
    output cast back up (TensorRT runs them as fp16 layers; elsewhere the graph stays int8)."""
    from onnx import TensorProto, helper, numpy_helper

    wanted = set(names)
    inits = {i.name: i for i in q.graph.initializer}
    nodes, done = [], []
    for node in q.graph.node:
        if node.name not in wanted or node.op_type not in ("Conv", "Gemm") or node.input[1] not in inits:
            nodes.append(node)
            continue
        for k in range(1, len(node.input)):
            name = node.input[k]
            if name in inits:
                weights = numpy_helper.to_array(inits[name]).astype(np.float16)
                half = numpy_helper.from_array(weights, f"{name}_fp16")
                q.graph.initializer.append(half)
                node.input[k] = half.name
        x, y = node.input[0], node.output[0]
        nodes.append(helper.make_node("Cast", [x], [f"{node.name}_in_fp16"], name=f"{node.name}/cast_in",
                                      to=TensorProto.FLOAT16))
        node.input[0], node.output[0] = f"{node.name}_in_fp16", f"{node.name}_out_fp16"
        nodes += [node, helper.make_node("Cast", [node.output[0]], [y], name=f"{node.name}/cast_out",
                                         to=TensorProto.FLOAT)]
        done.append(node.name)
    del q.graph.node[:]
    q.graph.node.extend(nodes)
    drop_unused_initializers(q.graph)
    del q.graph.value_info[:]  # stale types of the rewired tensors; checkers infer them again
    return done
