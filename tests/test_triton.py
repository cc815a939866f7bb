"""resnetx triton: model repositories checked against Triton's own config schema and the graphs they serve."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.folder.manifest import read_manifest, write_manifest
from pipeline.make.export import ExportOptions, export
from pipeline.model.data import Preprocess, open_dataset
from pipeline.precisions import Precision
from pipeline.sources import ModelSpec
from resnetx.files import file_sha256
from resnetx.flavors import RTX_CCS, EngineChoice
from tests.conftest import copy_folder, needs_rtx

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'tritonclient[grpc]'")
text_format = pytest.importorskip("google.protobuf.text_format")
runner = CliRunner()
NUMPY = {mc.TYPE_FP32: np.float32, mc.TYPE_FP16: np.float16}


def _verified(folder: Path) -> Path:
    r = runner.invoke(app, ["verify", str(folder), "--samples", "64"])
    assert r.exit_code == 0, r.output
    return folder


@pytest.fixture(scope="module")
def engines_folder(default_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's fp32/fp16/int8 graphs and their TensorRT-RTX engines, verified."""
    if importlib.util.find_spec("tensorrt_rtx") is None:
        pytest.skip("tensorrt_rtx not installed")
    out = copy_folder(default_folder, tmp_path_factory.mktemp("tx") / "art")
    export(ExportOptions(out=out, engines_only=True, engine=EngineChoice.rtx))
    return _verified(out)


def _configs(repo: Path) -> dict[str, mc.ModelConfig]:
    """Every config.pbtxt parsed with Triton's ModelConfig schema (an unknown field or bad value raises)."""
    out = {}
    for f in sorted(repo.glob("*/config.pbtxt")):
        cfg = text_format.Parse(f.read_text(), mc.ModelConfig())
        assert cfg.name == f.parent.name
        out[cfg.name] = cfg
    assert out, f"no configs under {repo}"
    return out


def _run_onnx(path: Path, cfg: mc.ModelConfig, batch: int) -> np.ndarray:
    """Feed the graph a request shaped as the config declares; its output must match the declared dims."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = cfg.input, cfg.output
    shape = [batch, *inp.dims] if cfg.max_batch_size else list(inp.dims)
    x = np.random.default_rng(0).standard_normal(shape).astype(NUMPY[inp.data_type])
    y = sess.run([out.name], {inp.name: x})[0]
    assert y.dtype == NUMPY[out.data_type]
    assert list(y.shape) == ([batch, *out.dims] if cfg.max_batch_size else list(out.dims))
    return y


def _write(folder: Path, repo: Path, *extra: str) -> object:
    return runner.invoke(app, ["triton", str(folder), "--out", str(repo), *extra])


@needs_rtx
def test_default_repository_parses_and_matches_graphs(engines_folder: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    r = _write(engines_folder, repo)
    assert r.exit_code == 0, r.output
    m = read_manifest(engines_folder)
    cfgs = _configs(repo)
    assert sorted(cfgs) == sorted(f"resnet20_{p}_{k}" for p in ("fp32", "fp16", "int8") for k in ("onnx", "trt"))
    for name, cfg in cfgs.items():
        precision = Precision(name.split("_")[1])
        assert cfg.max_batch_size == 256  # the engines' profile MAX; the ONNX models follow it
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
        assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
        labels = (repo / name / "labels.txt").read_text().splitlines()
        assert labels == list(m.model.info.class_names)
        assert cfg.output[0].label_filename == "labels.txt" and list(cfg.output[0].dims) == [len(labels)]
        assert list(cfg.input[0].dims) == [1, 28, 28] and cfg.input[0].name == "input"
        if cfg.platform == "onnxruntime_onnx":
            entry = m.graphs[precision]
            assert cfg.default_model_filename == entry.file
            for batch in (1, cfg.max_batch_size):
                assert _run_onnx(repo / name / "1" / entry.file, cfg, batch).shape[1] == len(labels)
        else:
            assert cfg.platform == "tensorrt_plan"
            entry = next(e for e in m.engines.values() if e.precision is precision)
            assert dict(cfg.cc_model_filenames) == {RTX_CCS[sm]: entry.file for sm in entry.compute_capabilities}
            assert cfg.parameters["tensorrt_rtx_version"].string_value == entry.trt_version
        copied = repo / name / "1" / entry.file
        assert file_sha256(copied) == entry.sha256 and copied.read_bytes() == (engines_folder / entry.file).read_bytes()
    readme = (repo / "README.md").read_text()
    assert "tritonserver --model-repository" in readme and "perf_analyzer -m resnet20_int8_trt -b 1 " in readme
    assert "subtract mean [0.2854] and divide by std [0.3526]" in readme
    assert "resnetx deepstream" in readme  # the edge hand-off, one line
    assert "not verified" in r.output and "TensorRT-RTX engines load only" in r.output


def test_fixed_batch_export_declares_the_batch(tmp_path: Path) -> None:
    folder = _verified(export(ExportOptions(model=ModelSpec("default"), out=tmp_path / "art", batch=4)).folder)
    repo = tmp_path / "repo"
    r = _write(folder, repo)
    assert r.exit_code == 0, r.output
    (cfg,) = _configs(repo).values()
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [4, 1, 28, 28] and list(cfg.output[0].dims) == [4, 10]
    _run_onnx(repo / cfg.name / "1" / "model.fp32.onnx", cfg, 4)
    assert "perf_analyzer -m resnet20_fp32_onnx --concurrency" in (repo / "README.md").read_text()
    client = _client(repo)
    assert client.CONFIG["models"][cfg.name]["fixed_batch"] == 4


@needs_rtx
def test_engines_only_folder(engines_folder: Path, tmp_path: Path) -> None:
    """A folder that holds engines and no graphs: the configs come from resnetx's input contract."""
    folder = copy_folder(engines_folder, tmp_path / "art")
    m = read_manifest(folder)
    dims = {p: list(_configs_of(engines_folder, tmp_path / "full")[f"resnet20_{p.value}_onnx"].input[0].dims)
            for p in m.graphs}
    for g in m.graphs.values():
        (folder / g.file).unlink()
    m.graphs = {}
    write_manifest(folder, m)
    repo = tmp_path / "repo"
    r = _write(folder, repo, "--max-batch", "32", "--instances", "2", "--queue-delay-us", "500")
    assert r.exit_code == 2 and "never been verified" in r.output  # engines verify on their GPU only
    r = _write(folder, repo, "--max-batch", "32", "--instances", "2", "--queue-delay-us", "500", "--allow-unverified")
    assert r.exit_code == 0, r.output
    cfgs = _configs(repo)
    assert sorted(cfgs) == ["resnet20_fp16_trt", "resnet20_fp32_trt", "resnet20_int8_trt"]
    for name, cfg in cfgs.items():
        assert cfg.max_batch_size == 32 and cfg.instance_group[0].count == 2
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
        assert list(cfg.input[0].dims) == dims[Precision(name.split("_")[1])]
        assert cfg.input[0].data_type == mc.TYPE_FP32 and list(cfg.output[0].dims) == [10]


def _configs_of(folder: Path, repo: Path) -> dict[str, mc.ModelConfig]:
    if not repo.exists():
        assert _write(folder, repo).exit_code == 0
    return _configs(repo)


@needs_rtx
def test_options_are_checked(engines_folder: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    r = _write(engines_folder, repo, "--max-batch", "512")
    assert r.exit_code == 2 and "above what the fp32 engine profile" in r.output and not repo.exists()
    r = _write(engines_folder, repo, "--device", "cpu", "--precision", "int8")
    assert r.exit_code == 0, r.output
    cfgs = _configs(repo)
    assert list(cfgs) == ["resnet20_int8_onnx"] and "left out" in r.output
    assert cfgs["resnet20_int8_onnx"].instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    r = _write(engines_folder, repo)
    assert r.exit_code == 2 and "--force" in r.output
    r = _write(engines_folder, repo, "--force", "--name", "fmnist")
    assert r.exit_code == 0 and sorted(p.name for p in repo.iterdir())[0] == "README.md"
    assert "fmnist_fp32_trt" in _configs(repo)
    assert not list(tmp_path.glob(".tmp-*")), "the replaced repository was left behind"


def test_tampered_folder_is_refused(default_folder: Path, tmp_path: Path) -> None:
    folder = _verified(copy_folder(default_folder, tmp_path / "art"))
    f = folder / "model.fp16.onnx"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    repo = tmp_path / "repo"
    r = _write(folder, repo, "--allow-unverified")
    assert r.exit_code == 2 and "sha256 audit" in r.output and "model.fp16.onnx (changed)" in r.output
    assert not repo.exists() and not list(tmp_path.glob(".tmp-*"))


def test_unverified_folder_is_refused(default_folder: Path, tmp_path: Path) -> None:
    from pipeline.folder.verdicts import VERDICTS, standing

    folder = copy_folder(default_folder, tmp_path / "art")
    (folder / VERDICTS).unlink(missing_ok=True)
    repo = tmp_path / "repo"
    r = _write(folder, repo)
    assert r.exit_code == 2 and "never been verified" in r.output and not repo.exists()
    _verified(folder)
    v = json.loads((folder / VERDICTS).read_text())
    v["verdicts"][-1]["passed"] = False  # the last row, int8, failed
    (folder / VERDICTS).write_text(json.dumps(v))
    r = _write(folder, repo)
    assert r.exit_code == 2 and "has a failing verdict for int8 (fail on 64 sample inputs" in r.output
    r = _write(folder, repo, "--allow-unverified")
    assert r.exit_code == 0 and "--allow-unverified" in r.output
    assert all(x.parameters is not None for x in _configs(repo).values())
    m = read_manifest(folder)  # exported again: other files, so the verdicts were about other artifacts
    m.graphs = {p: replace(g, sha256="0" * 64) for p, g in m.graphs.items()}
    assert standing(folder, m) == {}


def _client(repo: Path) -> object:
    spec = importlib.util.spec_from_file_location(f"client_{repo.name}", repo / "client.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_client_preprocesses_as_resnetx(default_folder: Path, tmp_path: Path) -> None:
    from PIL import Image

    repo = tmp_path / "repo"
    assert _write(default_folder, repo, "--allow-unverified", "--precision", "fp32").exit_code == 0
    client = _client(repo)
    info = read_manifest(default_folder).model.info
    sample = open_dataset("sample")
    images = sample.raw(np.arange(8))
    for i, img in enumerate(images):  # the bundled sample, at the model's size: resnetx's own preprocessing
        png = tmp_path / f"s{i}.png"
        Image.fromarray(img).save(png)  # 28x28 grayscale
        np.testing.assert_array_equal(client.preprocess(png), info.preprocess(img[None]))
    # another size and RGB: the image-folder path (decode, resize, crop), against a 3-channel preprocessing
    pre = Preprocess(image_size=32, resize=36, channels=3, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    rgb = np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8)
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(rgb).save(folder / "x.png")
    ds = open_dataset(f"imagefolder:{folder.parent}", preprocess=pre)
    ours = pre(ds.raw(np.arange(1)))
    np.testing.assert_array_equal(client.preprocess(folder / "x.png", pre.to_dict()), ours)
    assert client.top_k(np.array([0.0, 3.0, 1.0] + [0.0] * 7, np.float32), 1)[0][0] == "Trouser"


def test_client_without_a_server_fails_in_one_line(default_folder: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("tritonclient.http")
    from PIL import Image

    repo = tmp_path / "repo"
    assert _write(default_folder, repo, "--allow-unverified", "--precision", "fp32").exit_code == 0
    client = _client(repo)
    png = tmp_path / "x.png"
    Image.fromarray(open_dataset("sample").raw(np.arange(1))[0]).save(png)
    assert client.main([str(tmp_path / "missing.png")]) == 2
    assert client.main([str(png), "--url", "localhost:9"]) == 3  # nothing listens on port 9
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[-1].startswith("error: localhost:9 resnet20_fp32_onnx:")
