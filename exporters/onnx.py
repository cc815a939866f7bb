"""torch -> ONNX: export (torch.export or TorchScript), name nodes by module, check, compare."""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporters.sizes import dims_of
from resnetx.batching import batch_chunks
from resnetx.contract import INPUT_NAME, OUTPUT_NAME
from resnetx.errors import BadInput, CheckFailed, ExportFailed, ResnetxError, first_line
from resnetx.files import atomic_write, sha256_bytes
from resnetx.lazy import lazy_import

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn
else:
    onnx = lazy_import("onnx")
    torch = lazy_import("torch")

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "DEFAULT_OPSET",
    "Exporter",
    "OnnxArtifact",
    "export_onnx",
    "own_weights",
    "drop_unused_initializers",
    "check_onnx",
    "load_onnx",
    "save_onnx",
    "compare_with_torch",
    "compare_graphs",
    "run_cpu",
    "GraphInterface",
    "graph_interface",
    "import_onnx",
    "softmax_head",
    "drop_no_ops",
    "strip_softmax_head",
    "cpu_session",
    "graph_batch",
    "opset_of",
    "set_metadata",
    "quiet_converters",
]

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
_TWO_GB = 2**31 - 1


class Exporter(str, Enum):
    dynamo = "dynamo"  # torch.export (needs onnxscript)
    legacy = "legacy"  # TorchScript


@dataclass
class OnnxArtifact:
    """One ONNX file and what is known about it."""

    path: Path
    sha256: str
    precision: str
    opset: int
    size_bytes: int
    seconds: float
    static_batch: int | None = None  # the batch baked into the graph; None: dynamic
    details: dict[str, Any] = field(default_factory=dict)  # what the converter did, for the manifest


def load_onnx(path: Path, *, external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file with a one-line error when it is missing or not ONNX; without `external_data`, only the
    graph (enough to read its interface and metadata: weights kept beside a large graph are not read)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as e:
        raise BadInput(f"{path} is not a readable ONNX model ({type(e).__name__}); re-export it") from e


def check_onnx(model: onnx.ModelProto, *, where: str = "model", channels: int | None = None) -> onnx.ModelProto:
    """onnx.checker + strict shape inference + the resnetx I/O contract (input/logits, rank 4 -> 2)."""
    try:
        onnx.checker.check_model(model, full_check=False)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:
        first = first_line(e)
        raise BadInput(f"{where} fails the ONNX checker: {first}") from e
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise BadInput(
            f"{where} must have an input named '{INPUT_NAME}' and an output named '{OUTPUT_NAME}'; "
            f"it has inputs {list(inputs)} and outputs {list(outputs)}"
        )
    types = (inputs[INPUT_NAME].type.tensor_type.elem_type, outputs[OUTPUT_NAME].type.tensor_type.elem_type)
    if types != (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT):
        raise BadInput(f"{where}: '{INPUT_NAME}' and '{OUTPUT_NAME}' must be float32; got "
                       f"{onnx.TensorProto.DataType.Name(types[0])} and {onnx.TensorProto.DataType.Name(types[1])}")
    rank_in = len(inputs[INPUT_NAME].type.tensor_type.shape.dim)
    rank_out = len(outputs[OUTPUT_NAME].type.tensor_type.shape.dim)
    if rank_in != 4 or rank_out != 2:
        raise BadInput(f"{where}: '{INPUT_NAME}' must be rank 4 (NCHW) and '{OUTPUT_NAME}' rank 2; "
                       f"got {rank_in} and {rank_out}")
    if channels is not None:
        c = inputs[INPUT_NAME].type.tensor_type.shape.dim[1]
        if c.HasField("dim_value") and c.dim_value != channels:
            raise BadInput(f"{where} takes {c.dim_value} input channels; the model takes {channels}")
    return inferred


def save_onnx(model: onnx.ModelProto, dst: Path) -> tuple[str, int]:
    """Serialize with weights inside the file (external data only past 2 GB), atomically.

    Returns (sha256, size). The temporary file sits beside `dst` and is renamed at the end.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() < _TWO_GB:
        data = model.SerializeToString(deterministic=True)
        atomic_write(dst, data)
        return sha256_bytes(data), len(data)
    # > 2 GB: protobuf cannot hold it; weights go to DST.data beside it.
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=dst.name + ".data", size_threshold=1024)
    data = dst.read_bytes()
    return sha256_bytes(data), len(data) + (dst.parent / (dst.name + ".data")).stat().st_size


# --------------------------------------------------------------------------- node naming
def _module_of(node: onnx.NodeProto, initializers: set[str]) -> str | None:
    """The PyTorch module a node comes from, e.g. 'layer3.4.conv2', or None if unknown."""
    if node.op_type in ("Conv", "Gemm", "MatMul"):  # BN is folded into conv: the weight names it
        for name in node.input[1:2]:
            if name in initializers and name.endswith(".weight"):
                return name[: -len(".weight")]
    props = {p.key: p.value for p in node.metadata_props}
    scopes = props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            parts = [p for p in ast.literal_eval(scopes) if p]
        except (ValueError, SyntaxError):
            parts = []
        modules = parts[:-1]  # the last entry is the aten op's own name
        if modules:
            return modules[-1]
    if node.name.startswith("/"):  # TorchScript exporter: "/layer1/layer1.0/conv1/Conv"
        module = ""
        for part in [p for p in node.name.split("/") if p][:-1]:  # levels are full or relative names
            module = part if not module or part.startswith(module + ".") else f"{module}.{part}"
        return module or None
    return None


def name_nodes_by_module(model: onnx.ModelProto) -> dict[str, str]:
    """Rename nodes to their module path (unique), so reports and --keep-* options use those names.

    Returns {node name: module} for the graph.
    """
    inits = {i.name for i in model.graph.initializer}
    seen: Counter[str] = Counter()
    mapping: dict[str, str] = {}
    for node in model.graph.node:
        module = _module_of(node, inits) or "model"
        base = module if node.op_type in ("Conv", "Gemm", "MatMul") else f"{module}/{node.op_type.lower()}"
        seen[base] += 1
        node.name = base if seen[base] == 1 else f"{base}_{seen[base] - 1}"
        mapping[node.name] = module
    return mapping


# --------------------------------------------------------------------------- export
def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int, dynamic: bool) -> onnx.ModelProto:
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=65536)}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=shapes, opset_version=opset, verbose=False, optimize=True,
        )
    if program is None:
        raise ExportFailed("torch.onnx.export returned nothing")
    return program.model_proto


def _export_legacy(model: nn.Module, example: torch.Tensor, opset: int, dynamic: bool) -> onnx.ModelProto:
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), buf, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
        )
    return onnx.load_from_string(buf.getvalue())


def graph_batch(model: onnx.ModelProto) -> int | None:
    """The batch size fixed in the graph's input (a --static-batch export), or None when it is dynamic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") else None


def _trace(model: nn.Module, example: torch.Tensor, exporter: Exporter, opset: int, dynamic: bool) -> onnx.ModelProto:
    try:
        fn = _export_dynamo if exporter is Exporter.dynamo else _export_legacy
        return fn(model, example, opset, dynamic)
    except ResnetxError:
        raise
    except Exception as e:
        hint = " (try --exporter legacy)" if exporter is Exporter.dynamo else ""
        raise ExportFailed(f"ONNX export with the {exporter.value} exporter failed: {first_line(e)}{hint}") from e


def export_onnx(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    dst: Path,
    *,
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
    exporter: Exporter | str = Exporter.dynamo,
    metadata: dict[str, str] | None = None,
    check_inputs: np.ndarray | None = None,
    rtol_l2: float = 1e-5,
) -> OnnxArtifact:
    """Export `model` (eval mode) to ONNX at `dst`, check it, and compare it with PyTorch.

    `batch` None gives a dynamic batch dimension; a number bakes that batch into the graph. A graph that fails
    the checker or departs from PyTorch (rel. L2 > rtol_l2 on the check inputs) raises, and nothing is written.
    """
    exporter = Exporter(exporter)
    import onnxruntime as ort

    if not 13 <= opset <= _ort_max_opset():
        raise BadInput(f"--opset {opset} is outside what onnxruntime {ort.__version__} runs (13..{_ort_max_opset()})")
    if batch is not None and batch < 1:
        raise BadInput(f"--static-batch must be >= 1; got {batch}")
    model = model.eval()
    # a dynamic batch is traced at 2: torch.export would specialise a batch of 1 into the graph
    example = torch.randn(batch or 2, *input_shape, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    proto = _trace(model, example, exporter, opset, dynamic=batch is None)
    seconds = time.perf_counter() - start
    own_weights(proto)  # the exporter may share equal weights behind Identity nodes
    module_of = name_nodes_by_module(proto)
    _strip_noise(proto)
    proto.producer_name = "resnetx"
    for k, v in sorted((metadata or {}).items()):
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(v)))
    check_onnx(proto, where=f"exported {dst.name}")
    parity = compare_with_torch(proto, model, check_inputs if check_inputs is not None else example.numpy())
    if not parity["rel_l2"] <= rtol_l2:
        other = Exporter.legacy if exporter is Exporter.dynamo else Exporter.dynamo
        raise CheckFailed(f"exported ONNX departs from PyTorch: rel. L2 {parity['rel_l2']:.2e} > {rtol_l2:.0e} "
                          f"(max abs {parity['max_abs']:.2e}); try --exporter {other.value}")
    sha, size = save_onnx(proto, dst)
    return OnnxArtifact(
        path=Path(dst), sha256=sha, precision="fp32", opset=opset, size_bytes=size, seconds=seconds,
        static_batch=graph_batch(proto),
        details={"exporter": exporter.value, "parity": parity, "nodes": len(proto.graph.node),
                 "modules": len(set(module_of.values()))},
    )


# --------------------------------------------------------------------------- a user's ONNX file
@dataclass(frozen=True)
class GraphInterface:
    """What an ONNX file takes and gives, as found in it."""

    input_name: str
    output_name: str
    layout: str  # "NCHW" or "NHWC"
    chw: tuple[int, int, int]  # channels, height, width (NCHW order, whatever the file's layout)
    classes: int
    batch: int | None  # fixed in the file, or None when dynamic


def graph_interface(model: onnx.ModelProto, where: str) -> GraphInterface:
    """One float image input (NCHW, or NHWC said so) and one float logits output (N, classes), or a one-line
    error naming what was found."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    outputs = list(model.graph.output)
    found = (f"it has inputs {[(i.name, dims_of(i)) for i in inputs]} and outputs "
             f"{[(o.name, dims_of(o)) for o in outputs]}")
    if len(inputs) != 1 or len(outputs) != 1:
        raise BadInput(f"{where} must have one image input and one logits output; {found}")
    x, y = inputs[0], outputs[0]
    floats = (onnx.TensorProto.FLOAT,)
    dx, dy = dims_of(x), dims_of(y)
    if x.type.tensor_type.elem_type not in floats or y.type.tensor_type.elem_type not in floats:
        raise BadInput(f"{where}: the input and the output must be float32; {found}")
    if len(dx) != 4 or len(dy) != 2:
        raise BadInput(f"{where} must take one rank-4 image batch (N,C,H,W or N,H,W,C) and give rank-2 logits "
                       f"(N, classes); {found}")
    nhwc = dx[1] not in (1, 3, 4) and dx[3] in (1, 3, 4)
    c, h, w = (dx[3], dx[1], dx[2]) if nhwc else (dx[1], dx[2], dx[3])
    if c not in (1, 3, 4) or not h or not w or not dy[1]:
        raise BadInput(f"{where}: the input is not an image batch with 1, 3 or 4 channels and a fixed height and "
                       f"width, or the output has no fixed class count; {found}")
    if h != w:
        raise BadInput(f"{where} takes {h}x{w} images; resnetx handles square inputs (H = W) only")
    batch = dx[0] if dx[0] == dy[0] and dx[0] else None
    return GraphInterface(x.name, y.name, "NHWC" if nhwc else "NCHW", (c, h, w), dy[1], batch)


def _rename(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename one tensor everywhere: graph I/O, node inputs and outputs, value infos."""
    g = model.graph
    for v in [*g.input, *g.output, *g.value_info]:
        if v.name == old:
            v.name = new
    for n in g.node:
        n.input[:] = [new if t == old else t for t in n.input]
        n.output[:] = [new if t == old else t for t in n.output]


def own_weights(model: onnx.ModelProto) -> None:
    """Identity nodes of an initializer become initializers of their own: exporters deduplicate equal weights
    (zero-initialised convs, tied layers) behind Identity, and a layer whose weight is not an initializer is one
    that int8 placement and fp16 conversion cannot see."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    keep = []
    for n in g.node:
        if n.op_type == "Identity" and n.input and n.input[0] in inits:
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[n.input[0]]), n.output[0]))
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    drop_unused_initializers(g)


def drop_unused_initializers(g: onnx.GraphProto) -> None:
    """Remove the initializers no node reads and no graph output names, keeping the others' order."""
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)


def drop_no_ops(model: onnx.ModelProto) -> int:
    """Remove the nodes that compute their input unchanged: Identity, and Cast to the type the tensor already has
    (torch's TorchScript exporter leaves dozens in a Keras graph, and fp16 conversion trips over them). Exact: their
    readers read the input instead. A node whose output is a graph output stays. Returns how many went."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types |= {i.name: i.data_type for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    alias: dict[str, str] = {}
    kept = []
    for n in model.graph.node:
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        same = n.op_type == "Cast" and n.input and types.get(n.input[0]) == to and to
        if (n.op_type == "Identity" or same) and n.output[0] not in outputs:
            alias[n.output[0]] = n.input[0]
        else:
            kept.append(n)

    def source(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    for n in kept:
        n.input[:] = [source(i) for i in n.input]
    gone = len(model.graph.node) - len(kept)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return gone


def softmax_head(model: onnx.ModelProto) -> onnx.NodeProto | None:
    """The Softmax node whose output is the graph's output (directly, or through Identity or Cast nodes): the model
    outputs probabilities, not logits. None when it does not end in one."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(model.graph.output[0].name) if model.graph.output else None
    while node is not None and node.op_type in ("Identity", "Cast") and node.input:
        node = producer.get(node.input[0])
    return node if node is not None and node.op_type == "Softmax" else None


def strip_softmax_head(model: onnx.ModelProto) -> bool:
    """Make a graph that ends in a softmax give the softmax's input (logits) instead: the Softmax node becomes an
    Identity. False when there is no softmax head."""
    node = softmax_head(model)
    if node is None:
        return False
    node.op_type = "Identity"
    node.name = node.name or "resnetx/stripped_softmax"
    del node.attribute[:]
    return True


def import_onnx(src: Path, dst: Path, *, metadata: dict[str, str] | None = None,
                strip_softmax: bool = False) -> OnnxArtifact:
    """A user's ONNX file (external data included) as resnetx's fp32 graph: checked, its input and output renamed
    to `input`/`logits`, an NHWC input put behind a Transpose so the graph takes NCHW, a softmax head made an
    Identity when asked, `metadata` added. The same file always gives the same bytes."""
    from onnx import helper

    model = load_onnx(src)
    if strip_softmax and not strip_softmax_head(model):
        raise BadInput(f"--strip-softmax: {Path(src).name} does not end in a softmax")
    try:
        onnx.checker.check_model(model, full_check=False)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - the checker's many error types
        raise BadInput(f"{Path(src).name} fails the ONNX checker: {first_line(e)}") from e
    io_ = graph_interface(model, Path(src).name)
    dropped = drop_no_ops(model)
    del model.graph.value_info[:]  # inferred again by check_onnx; the renamed tensors' old entries go
    own_weights(model)
    _rename(model, io_.output_name, OUTPUT_NAME)
    if io_.layout == "NHWC":
        _rename(model, io_.input_name, "input_nhwc")
        x = model.graph.input[0]
        x.name = INPUT_NAME
        c, h, w = io_.chw
        dims = x.type.tensor_type.shape.dim
        for d, v in zip(dims[1:], (c, h, w), strict=True):
            d.dim_value = v
        model.graph.node.insert(0, helper.make_node("Transpose", [INPUT_NAME], ["input_nhwc"],
                                                    name="resnetx/nchw_to_nhwc", perm=[0, 2, 3, 1]))
    else:
        _rename(model, io_.input_name, INPUT_NAME)
    set_metadata(model, metadata or {})
    check_onnx(model, where=f"{Path(src).name} as resnetx's fp32 graph")
    sha, size = save_onnx(model, dst)
    return OnnxArtifact(Path(dst), sha, "fp32", opset_of(model), size, 0.0, static_batch=io_.batch,
                        details={"source_input": io_.input_name, "source_output": io_.output_name,
                                 "source_layout": io_.layout, "nodes": len(model.graph.node),
                                 **({"no_ops_dropped": dropped} if dropped else {}),
                                 **({"softmax": "stripped"} if strip_softmax else {})})


def _ort_max_opset() -> int:
    # The newest opset onnxruntime 1.2x/1.3x implements for every op a ResNet uses.
    return min(onnx.defs.onnx_opset_version(), 23)


def _strip_noise(proto: onnx.ModelProto) -> None:
    """Drop per-node stack traces and FX dumps: they hold local paths and make bytes machine-specific."""
    keep = {"pkg.torch.onnx.name_scopes"}
    for node in proto.graph.node:
        props = [p for p in node.metadata_props if p.key in keep]
        del node.metadata_props[:]
        node.metadata_props.extend(props)
    for vi in list(proto.graph.value_info):
        del vi.metadata_props[:]


def cpu_session(model: onnx.ModelProto | Path, fuse_qdq: bool = True, threads: int = 0, optimize: bool = True) -> Any:
    """An onnxruntime CPU session of the graph (a file, or a model in memory), quiet. fuse_qdq=False: Q/DQ pairs
    run as they are, around float kernels, instead of being fused into int8 kernels: what an int8 graph computes up
    to rounding (a top-1 answer in a few thousand differs), and faster on x86 for signed int8 activations, which
    its int8 kernels run slowly. threads: its intra-op threads (0: onnxruntime's choice, one per core).
    optimize=False: no graph optimizations (what onnxruntime's calibrators run: slower, and the values of the
    graph's own kernels, last bits included)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not fuse_qdq:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run_cpu(model: onnx.ModelProto | Path | Any, x: np.ndarray, batch: int = 16) -> np.ndarray:
    """The graph's logits for x on onnxruntime's CPU provider (a graph, or a session of `cpu_session`), in chunks
    of `batch` (16: onnxruntime CPU is fastest per image at small batches) or of the graph's fixed batch."""
    sess = model if hasattr(model, "get_inputs") else cpu_session(model)
    dim = sess.get_inputs()[0].shape[0]
    fixed = dim if isinstance(dim, int) else 0
    return np.concatenate([sess.run([OUTPUT_NAME], {INPUT_NAME: c})[0][:n]
                           for c, n in batch_chunks(x, fixed or batch, pad_to=fixed)])


def compare_with_torch(proto: onnx.ModelProto, model: nn.Module, x: np.ndarray) -> dict[str, float]:
    """Run the graph in onnxruntime CPU and the model in PyTorch on x; error metrics."""
    got = run_cpu(proto, x)
    with torch.no_grad():
        ref = model(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
    return _errors(got, ref)


def compare_graphs(candidate: Path, reference: Path, x: np.ndarray) -> dict[str, float]:
    """Run two ONNX files in onnxruntime CPU on x; the candidate's error metrics against the reference."""
    return _errors(run_cpu(Path(candidate), x), run_cpu(Path(reference), x))


def _errors(got: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    diff = (got.astype(np.float64) - ref.astype(np.float64))
    denom = float(np.linalg.norm(ref.astype(np.float64))) or 1.0
    return {
        "max_abs": float(np.abs(diff).max()),
        "rel_l2": float(np.linalg.norm(diff) / denom),
        "top1_agree": float((got.argmax(1) == ref.argmax(1)).mean()),
        "samples": int(len(ref)),
    }


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for k, v in values.items():
        if k in existing:
            existing[k].value = v
        else:
            model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))


@contextlib.contextmanager
def quiet_converters() -> Iterator[None]:
    """The converters warn through `warnings` and the root logger; keep that out of the user's terminal."""
    import warnings

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # calibrators print
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


with contextlib.suppress(Exception):  # keep torch's exporter quiet about optional torchvision ops
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
