"""torch -> ONNX: both exporters, dynamic batch, node names, checks, metadata, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporters.onnx import check_onnx, export_onnx, load_onnx
from pipeline.model.resnet import IMAGENET_ARCHS
from pipeline.model.zoo import load_model
from pipeline.sources import ModelSpec
from resnetx.errors import BadInput


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


BIG = {"resnet101", "resnet152", "wide_resnet50_2"}


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in BIG else a
                                  for a in [*IMAGENET_ARCHS, "resnet56", "preact_resnet29"]])
def test_every_arch_exports_small(tmp_path: Path, arch: str) -> None:
    model, info = load_model(ModelSpec(arch, num_classes=10, image_size=32))
    a = export_onnx(model, info.input_shape, tmp_path / "m.onnx", exporter="legacy")
    assert a.details["parity"]["rel_l2"] <= 1e-5
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = _run(a.path, x)  # batch 3 although exported with batch 2: the batch is dynamic
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= 1e-5


@pytest.mark.parametrize("arch", ["resnet20", "resnet18"])
def test_dynamo_export(tmp_path: Path, arch: str) -> None:
    model, info = load_model(ModelSpec(arch, num_classes=10, image_size=32))
    a = export_onnx(model, info.input_shape, tmp_path / "m.onnx", metadata={"resnetx.arch": arch})
    m = onnx.load(str(a.path))
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert {p.key: p.value for p in m.metadata_props}["resnetx.arch"] == arch
    assert not any(d.data_location == onnx.TensorProto.EXTERNAL for d in m.graph.initializer)
    names = {n.name for n in m.graph.node}
    assert {"conv1", "layer1.0.conv1", "layer2.0.downsample.0", "fc"} <= names  # module paths
    x = np.random.default_rng(1).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.linalg.norm(_run(a.path, x) - ref) / np.linalg.norm(ref) <= 1e-5


def test_export_is_deterministic(tmp_path: Path) -> None:
    model, info = load_model(ModelSpec("resnet20"))
    a = export_onnx(model, info.input_shape, tmp_path / "a.onnx")
    b = export_onnx(model, info.input_shape, tmp_path / "b.onnx")
    assert a.sha256 == b.sha256


def test_export_model_in_train_mode_is_exported_in_eval(tmp_path: Path) -> None:
    model, info = load_model(ModelSpec("resnet20"))
    model.train()
    a = export_onnx(model, info.input_shape, tmp_path / "m.onnx", exporter="legacy")
    assert a.details["parity"]["rel_l2"] <= 1e-5
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(a.path)).graph.node}


def test_bad_opset(tmp_path: Path) -> None:
    model, info = load_model(ModelSpec("resnet20"))
    with pytest.raises(BadInput, match="--opset 7"):
        export_onnx(model, info.input_shape, tmp_path / "m.onnx", opset=7)
    assert not (tmp_path / "m.onnx").exists()


def test_check_onnx_io_contract(tmp_path: Path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18)])
    with pytest.raises(BadInput, match="input named 'input'"):
        check_onnx(m)
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 3])
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["input"], ["logits"])], "g", [x], [y])
    with pytest.raises(BadInput, match="rank 4"):
        check_onnx(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18)]))


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 10])
def test_corrupt_onnx(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(BadInput):
        check_onnx(load_onnx(p), where="bad.onnx")


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_static_batch_export(tmp_path: Path, exporter: str) -> None:
    from exporters.onnx import compare_graphs, graph_batch
    from resnetx.batching import batch_chunks

    model, info = load_model(ModelSpec("resnet20"))
    a = export_onnx(model, info.input_shape, tmp_path / "s.onnx", exporter=exporter, batch=3)
    assert graph_batch(load_onnx(a.path)) == 3 == a.static_batch
    x = np.random.default_rng(1).standard_normal((7, 3, 32, 32)).astype(np.float32)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        _run(a.path, x[:2])  # the graph takes exactly 3 images
    chunks = list(batch_chunks(x, 3, pad_to=3))
    assert [len(c) for c, _ in chunks] == [3, 3, 3] and [n for _, n in chunks] == [3, 3, 1]
    assert np.array_equal(chunks[-1][0][1:], np.repeat(x[-1:], 2, 0))  # the tail is padded with copies
    d = export_onnx(model, info.input_shape, tmp_path / "d.onnx", exporter=exporter)
    assert graph_batch(load_onnx(d.path)) is None
    check = compare_graphs(a.path, d.path, x)  # 7 images through a batch-3 graph: chunked and padded
    assert check["samples"] == 7 and check["rel_l2"] < 1e-5
