"""Real TensorRT-RTX engine builds on this CPU-only machine (fp32, fp16, int8 graphs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from exporters.tensorrt import build_engine
from resnetx.errors import BackendUnavailable, BadInput
from resnetx.flavors import import_flavor
from tests.conftest import needs_rtx


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_rtx_builds_each_precision(graphs: Path, tmp_path: Path, precision: str) -> None:
    e = build_engine(graphs / f"model.{precision}.onnx", tmp_path / "m.engine", flavor="rtx",
                     precision=precision, input_chw=(1, 28, 28), profile=(1, 16, 64),
                     compute_capabilities=("SM86", "SM89"))
    assert e.path.stat().st_size == e.size_bytes > 10_000
    assert e.target.compute_capabilities == ("SM86", "SM89") and e.strongly_typed
    assert e.tf32 is (precision != "fp32")  # TensorRT turns TF32 on by default: fp32 means fp32
    assert e.target.profile == (1, 16, 64) and e.target.trt_version
    net = e.network  # what the network computes in, checked before the build
    assert net["compute_layers"] == 22
    assert net["fp16_compute_layers"] == (22 if precision == "fp16" else 0)
    assert net["int8_compute_layers"] == (20 if precision == "int8" else 0)  # stem conv and fc stay float


@needs_rtx
@pytest.mark.parametrize("graph,asked", [("fp32", "fp16"), ("fp32", "int8"), ("fp16", "fp32")])
def test_engine_of_the_wrong_precision_is_refused(graphs: Path, tmp_path: Path, graph: str, asked: str) -> None:
    with pytest.raises(BadInput, match=f"would not build a {asked} engine"):
        build_engine(graphs / f"model.{graph}.onnx", tmp_path / "x.engine", flavor="rtx", precision=asked,
                     input_chw=(1, 28, 28))
    assert not (tmp_path / "x.engine").exists()


@needs_rtx
def test_fp16_engine_smaller_than_fp32(graphs: Path, tmp_path: Path) -> None:
    kw = dict(flavor="rtx", input_chw=(1, 28, 28), profile=(1, 16, 64))
    e32 = build_engine(graphs / "model.fp32.onnx", tmp_path / "a.engine", precision="fp32", **kw)
    e16 = build_engine(graphs / "model.fp16.onnx", tmp_path / "b.engine", precision="fp16", **kw)
    assert e16.size_bytes < 0.8 * e32.size_bytes  # it really is an fp16 engine, not fp32 twice


@needs_rtx
def test_int32_bias_graph_is_rejected_clearly(graphs: Path, tmp_path: Path) -> None:
    from exporters.quantize import quantize_int8
    from tests.test_exporters_quantize import _ranges

    q = quantize_int8(graphs / "model.fp32.onnx", tmp_path / "cpu.onnx", _ranges(graphs, "cpu", 64), recipe="cpu")
    with pytest.raises(BadInput, match="cannot parse cpu.onnx"):
        build_engine(q.path, tmp_path / "x.engine", flavor="rtx", precision="int8", input_chw=(1, 28, 28))
    assert not (tmp_path / "x.engine").exists()


@needs_rtx
def test_bad_options(graphs: Path, tmp_path: Path) -> None:
    src = graphs / "model.fp32.onnx"
    with pytest.raises(BadInput, match="1 <= MIN <= OPT <= MAX"):
        build_engine(src, tmp_path / "x.engine", flavor="rtx", precision="fp32", input_chw=(1, 28, 28),
                     profile=(8, 1, 64))
    with pytest.raises(BadInput, match="unknown compute capability SM90"):
        build_engine(src, tmp_path / "x.engine", flavor="rtx", precision="fp32", input_chw=(1, 28, 28),
                     compute_capabilities=("SM90",))


@needs_rtx
@pytest.mark.slow
def test_rtx_resnet50_all_precisions(tmp_path: Path) -> None:
    from pipeline.make.export import ExportOptions, export
    from pipeline.precisions import Precision
    from pipeline.sources import ModelSpec

    r = export(ExportOptions(model=ModelSpec("resnet50", image_size=64, num_classes=10), out=tmp_path / "r50",
                             precisions=(Precision.fp32, Precision.fp16, Precision.int8), engine="rtx",
                             calib_samples=64, exporter="legacy"))
    engines = {e.name: e for e in r.manifest.engines.values()}
    names = {e.precision.value: e for e in engines.values()}
    assert len(engines) == 3 and set(names) == {"fp32", "fp16", "int8"}
    assert names["fp16"].size_bytes < 0.8 * names["fp32"].size_bytes


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="enterprise TensorRT is installed")
def test_missing_flavor_says_what_to_install() -> None:
    with pytest.raises(BackendUnavailable, match="pip install tensorrt-cu13"):
        import_flavor("tensorrt")
    with pytest.raises(BadInput, match="unknown engine flavor"):
        import_flavor("onnx")
