"""fp16 and int8 graphs: I/O types, Q/DQ layout per recipe, calibration cache, exclusions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from exporters.quantize import quantize_int8, to_fp16
from resnetx.errors import BadInput
from tests.conftest import sample_batches


def _calib(folder: Path, n: int = 128):  # noqa: ANN202
    return sample_batches(n)


def _io_types(m: onnx.ModelProto) -> tuple[int, int]:
    return m.graph.input[0].type.tensor_type.elem_type, m.graph.output[0].type.tensor_type.elem_type


def test_fp16_keeps_fp32_io_and_halves_size(graphs: Path, tmp_path: Path) -> None:
    a = to_fp16(graphs / "model.fp32.onnx", tmp_path / "m16.onnx")
    m = onnx.load(str(a.path))
    assert _io_types(m) == (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT)
    conv_w = [i for i in m.graph.initializer if i.name.endswith("conv1.weight")]
    assert conv_w and all(i.data_type == onnx.TensorProto.FLOAT16 for i in conv_w)
    assert a.size_bytes < 0.6 * (graphs / "model.fp32.onnx").stat().st_size


def test_fp16_keep_fp32_layer(graphs: Path, tmp_path: Path) -> None:
    a = to_fp16(graphs / "model.fp32.onnx", tmp_path / "m16.onnx", keep_fp32_nodes=["layer3.2.conv2"])
    m = onnx.load(str(a.path))
    node = next(n for n in m.graph.node if n.name == "layer3.2.conv2")
    w = next(i for i in m.graph.initializer if i.name == node.input[1])
    assert w.data_type == onnx.TensorProto.FLOAT
    with pytest.raises(BadInput, match="unknown layer"):
        to_fp16(graphs / "model.fp32.onnx", tmp_path / "x.onnx", keep_fp32_nodes=["layer9.conv"])


def test_fp16_keeps_out_of_range_weights_in_fp32(graphs: Path, tmp_path: Path) -> None:
    m = onnx.load(str(graphs / "model.fp32.onnx"))
    init = next(i for i in m.graph.initializer if i.name == "fc.weight")
    w = numpy_helper.to_array(init).copy()
    w[0, 0] = 1e6  # beyond fp16's 65504
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(m, str(tmp_path / "big.onnx"))
    a = to_fp16(tmp_path / "big.onnx", tmp_path / "big16.onnx")
    assert a.details["overflow_nodes"] == ["fc"]
    x = next(_calib(graphs, 8))
    out = ort.InferenceSession(str(a.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.isfinite(out).all()


@pytest.mark.parametrize("recipe", ["tensorrt", "cpu"])
def test_int8_recipes(graphs: Path, tmp_path: Path, recipe: str) -> None:
    cache = tmp_path / "calib.json"
    a = quantize_int8(graphs / "model.fp32.onnx", tmp_path / "q.onnx", _calib(graphs),
                      recipe=recipe, cache=cache)
    m = onnx.load(str(a.path))
    qs = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dqs = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert qs and dqs and a.details["calibration_images"] == 128
    inits = {i.name: i for i in m.graph.initializer}
    zp_types = {inits[q.input[2]].data_type for q in qs if len(q.input) > 2 and q.input[2] in inits}
    if recipe == "tensorrt":
        assert zp_types == {onnx.TensorProto.INT8}  # symmetric int8 activations
        assert not any(inits[d.input[0]].data_type == onnx.TensorProto.INT32 for d in dqs if d.input[0] in inits)
        adds = [n for n in m.graph.node if n.op_type == "Add"]
        producers = {o: n.op_type for n in m.graph.node for o in n.output}
        assert any(producers.get(i) == "DequantizeLinear" for n in adds for i in n.input)  # residual add in int8
    else:
        assert onnx.TensorProto.UINT8 in zp_types
        assert any(inits[d.input[0]].data_type == onnx.TensorProto.INT32 for d in dqs if d.input[0] in inits)
    assert cache.is_file()
    # second run: ranges come from the cache, no data needed, same graph
    b = quantize_int8(graphs / "model.fp32.onnx", tmp_path / "q2.onnx", None, recipe=recipe, cache=cache)
    assert b.details["calibration_cache_hit"] and b.sha256 == a.sha256


def _fed_by_dq(m: onnx.ModelProto, node_name: str) -> bool:
    """Whether the layer's weight is quantized (its weight input comes through DequantizeLinear)."""
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    node = next(n for n in m.graph.node if n.name == node_name)
    return producers.get(node.input[1]) == "DequantizeLinear"


@pytest.mark.parametrize("recipe", ["tensorrt", "cpu"])
def test_int8_exclusions_and_float_ends(graphs: Path, tmp_path: Path, recipe: str) -> None:
    src = graphs / "model.fp32.onnx"
    a = quantize_int8(src, tmp_path / "q.onnx", _calib(graphs, 64), exclude_nodes=["layer2.0.conv1"],
                      recipe=recipe)
    m = onnx.load(str(a.path))
    assert a.details["float_ends"] == ["conv1", "fc"]
    assert not _fed_by_dq(m, "conv1") and not _fed_by_dq(m, "fc") and not _fed_by_dq(m, "layer2.0.conv1")
    assert _fed_by_dq(m, "layer2.0.conv2")
    # a kept layer reads the float tensor, not the int8-rounded copy made for its input's other consumers
    # (layer2.0.conv1 shares its input with the quantized downsample conv), and no Q/DQ pair is left unread
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    for name in ("layer2.0.conv1", "fc"):
        node = next(n for n in m.graph.node if n.name == name)
        assert producers.get(node.input[0]) != "DequantizeLinear", (name, node.input[0])
    read = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    assert all(o in read for n in m.graph.node if n.op_type.endswith("QuantizeLinear") for o in n.output)
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    assert np.isfinite(ort.InferenceSession(str(a.path)).run(None, {"input": x})[0]).all()
    b = quantize_int8(src, tmp_path / "q2.onnx", _calib(graphs, 64), quantize_ends=True)
    assert _fed_by_dq(onnx.load(str(b.path)), "conv1") and b.details["float_ends"] == []
    with pytest.raises(BadInput, match="unknown layer"):
        quantize_int8(src, tmp_path / "x.onnx", _calib(graphs, 64), exclude_nodes=["nope"])


def test_int8_needs_data(graphs: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="calibration data"):
        quantize_int8(graphs / "model.fp32.onnx", tmp_path / "q.onnx", None)
    with pytest.raises(BadInput, match="saw no images"):
        quantize_int8(graphs / "model.fp32.onnx", tmp_path / "q.onnx", iter([]))
    assert not (tmp_path / "q.onnx").exists()


def test_int8_reports_calibration_progress(graphs: Path, tmp_path: Path) -> None:
    seen: list[int] = []
    quantize_int8(graphs / "model.fp32.onnx", tmp_path / "q.onnx", _calib(graphs, 128),
                  on_images=seen.append)
    assert seen == [64, 128]
