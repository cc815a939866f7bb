"""resnetx deepstream: the nvinfer config read back with nvinfer's own conventions, every key one nvinfer knows, the
files it names byte-identical, what is refused; nvinfer's preprocessing reproduced, its cost measured, the fold."""

from __future__ import annotations

import configparser
from pathlib import Path

import numpy as np
import pytest

from pipeline.folder.manifest import read_manifest
from pipeline.model.data import Preprocess
from resnetx.files import file_sha256
from tests.conftest import copy_folder, needs_rtx
from tests.test_cli import invoke

# The [property] keys of gst-nvinfer's config parser: the CONFIG_GROUP_INFER_* strings of DeepStream 6.x's
# sources/gst-plugins/gst-nvinfer/gstnvinfer_property_parser.h (read from the public mirror
# github.com/hiennguyen9874/deepstream-sources); the per-class "class-attrs-*" groups are not used by a classifier.
NVINFER_KEYS = {
    "parse-func", "gie-unique-id", "process-mode", "interval", "labelfile-path", "gpu-id",
    "secondary-reinfer-interval", "output-tensor-meta", "enable-dla", "use-dla-core", "batch-size",
    "tensor-meta-pool-size", "network-mode", "model-engine-file", "int8-calib-file", "workspace-size",
    "output-blob-names", "is-classifier", "network-type", "force-implicit-batch-dim", "infer-dims",
    "output-io-formats", "layer-device-precision", "model-color-format", "net-scale-factor", "offsets", "mean-file",
    "maintain-aspect-ratio", "symmetric-padding", "scaling-filter", "scaling-compute-hw", "network-input-order",
    "input-tensor-from-meta", "custom-lib-path", "parse-bbox-func-name", "parse-bbox-instance-mask-func-name",
    "engine-create-func-name", "parse-classifier-func-name", "custom-network-config", "model-file", "proto-file",
    "uff-file", "uff-input-order", "input-dims", "uff-input-dims", "uff-input-blob-name", "tlt-encoded-model",
    "tlt-model-key", "onnx-file", "num-detected-classes", "enable-dbscan", "cluster-mode", "classifier-type",
    "classifier-threshold", "classifier-async-mode", "segmentation-threshold", "segmentation-output-order",
    "output-instance-mask", "input-object-min-width", "input-object-min-height", "input-object-max-width",
    "input-object-max-height", "operate-on-gie-id", "operate-on-class-ids", "filter-out-class-ids",
}


def _config(out: Path) -> configparser.SectionProxy:
    """The config as a GKeyFile reader sees it: one [property] group, key=value, lists ';'-separated."""
    files = list(out.glob("config_infer_*.txt"))
    assert len(files) == 1, files
    cp = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=("#",))
    cp.optionxform = str  # keys are case-sensitive there
    cp.read(files[0])
    assert cp.sections() == ["property"]
    return cp["property"]


@pytest.fixture(scope="module")
def verified(default_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = copy_folder(default_folder, tmp_path_factory.mktemp("ds") / "f")
    assert invoke("verify", folder, "--samples", "64").exit_code == 0
    return folder


@pytest.mark.parametrize("precision", ["fp16", "int8", "fp32"])
def test_the_config_is_nvinfers_and_names_what_was_built(verified: Path, tmp_path: Path, precision: str) -> None:
    out = tmp_path / "ds"
    r = invoke("deepstream", verified, "--out", out, "--precision", precision, "--samples", "64")
    assert r.exit_code == 0, r.output
    p = _config(out)
    assert set(p) <= NVINFER_KEYS, set(p) - NVINFER_KEYS
    m = read_manifest(verified)
    info, graph = m.model.info, m.graphs[next(g for g in m.graphs if g.value == precision)]
    assert p["network-type"] == "1" and p["network-mode"] == str({"fp32": 0, "int8": 1, "fp16": 2}[precision])
    assert p["infer-dims"] == f"{info.in_chans};{info.image_size};{info.image_size}" and p["batch-size"] == "1"
    assert p["model-color-format"] == "2" and p["output-blob-names"] == "logits"  # 1 channel: GRAY
    assert [float(v) for v in p["offsets"].split(";")] == pytest.approx([255 * v for v in info.preprocess.mean])
    assert float(p["net-scale-factor"]) == pytest.approx(1 / (255 * info.preprocess.std[0]))
    assert (out / p["onnx-file"]).read_bytes() == (verified / graph.file).read_bytes()
    assert file_sha256(out / p["onnx-file"]) == graph.sha256 and "model-engine-file" not in p
    labels = (out / p["labelfile-path"]).read_text().splitlines()
    assert len(labels) == 1 and labels[0].split(";") == list(info.class_names)  # one output layer, logits order
    readme = (out / "README.md").read_text()
    assert "gst-launch-1.0" in readme and "nvinfer config-file-path=config_infer_" in readme
    assert ("no `int8-calib-file`" in readme) == (precision == "int8")
    assert "nvinfer builds the engine from onnx-file on the device" in readme


def test_the_default_model_loses_nothing_to_nvinfers_preprocessing(verified: Path, tmp_path: Path) -> None:
    r = invoke("deepstream", verified, "--out", tmp_path / "ds", "--samples", "200")
    text = " ".join(r.output.split())
    configured = "nvinfer's preprocessing (one net-scale-factor, whole frame scaled): top-1 agreement 100.00%"
    assert r.exit_code == 0 and configured in text and "<- this config" in text
    assert "WARNING" not in text


def test_a_centre_roi_keeps_what_resize_then_crop_keeps() -> None:
    from pipeline.handoff.nvinfer import centre_roi, nvinfer_inputs

    assert centre_roi(720, 1280, 32 / 36) == (320, 40, 640, 640)
    assert centre_roi(224, 224, 224 / 256) == (14, 14, 196, 196)
    frame = np.zeros((1, 40, 40), np.uint8)
    frame[:, 10:30, 10:30] = 200  # a bright centre square: the ROI sees nothing else
    x = nvinfer_inputs(frame, 8, 1, (0.0,), 1.0, roi=0.5)
    assert x.shape == (1, 1, 8, 8) and np.all(x == 200.0)


def test_nvinfers_preprocessing_is_reproduced() -> None:
    """y = net-scale-factor * (x - offsets) after a straight bilinear resize; 28x28 gray at its own size: exact."""
    from pipeline.handoff.nvinfer import nvinfer_inputs

    pre = Preprocess(28, 28, 1, (0.2854,), (0.3526,))
    frames = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    nv = nvinfer_inputs(frames, 28, 1, (255 * 0.2854,), 1 / (255 * 0.3526))
    assert np.allclose(nv, pre(frames), atol=1e-5)
    rgb = nvinfer_inputs(frames[:, :14, :14], 28, 3, (0.0, 0.0, 0.0), 1.0)
    assert rgb.shape == (4, 3, 28, 28) and np.array_equal(rgb[:, 0], rgb[:, 2])  # gray fed to an RGB model


def test_nvinfers_bilinear_scaler_matches_onnxruntimes_resize() -> None:
    """The scaling itself, against an implementation outside the project: ONNX Resize (linear, half_pixel, the
    pixel-centre convention of NvBufSurfTransform's bilinear filter) run by onnxruntime, down- and up-scaling."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from pipeline.handoff.nvinfer import nvinfer_inputs

    frames = np.random.default_rng(1).integers(0, 256, (2, 57, 43, 3), dtype=np.uint8)
    for size in (28, 96):
        sizes = np.array([2, 3, size, size], np.int64)
        node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                                coordinate_transformation_mode="half_pixel")
        graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [onnx.numpy_helper.from_array(sizes, "sizes")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        (want,) = sess.run(None, {"x": frames.transpose(0, 3, 1, 2).astype(np.float32)})
        got = nvinfer_inputs(frames, size, 3, (0.0, 0.0, 0.0), 1.0)
        assert np.abs(got - want).max() < 1e-3, size


def test_an_unverified_tampered_or_engine_less_kind_is_handled(default_folder: Path, verified: Path,
                                                                tmp_path: Path) -> None:
    r = invoke("deepstream", default_folder, "--out", tmp_path / "a")  # the session's folder was never verified
    assert r.exit_code == 2 and "never been verified" in r.output and not (tmp_path / "a").exists()
    bad = copy_folder(verified, tmp_path / "bad")
    with open(bad / "model.fp16.onnx", "ab") as f:
        f.write(b"\0")
    r = invoke("deepstream", bad, "--out", tmp_path / "b", "--allow-unverified")
    assert r.exit_code == 2 and "sha256 audit" in r.output and not (tmp_path / "b").exists()
    r = invoke("deepstream", verified, "--out", tmp_path / "c", "--kind", "L4", "--samples", "32")
    assert r.exit_code == 0 and "no enterprise TensorRT fp16 engine for a L4" in " ".join(r.output.split())
    r = invoke("deepstream", verified, "--out", verified / "inside")
    assert r.exit_code == 2 and "inside the artifact folder" in r.output


def test_folding_makes_one_scale_factor_exact(tmp_path: Path) -> None:
    """A 3-channel model with ImageNet's per-channel std: nvinfer's single factor departs; the folded copy under
    nvinfer's preprocessing computes what the original computes on the same resized pixels."""
    from pipeline.handoff.deepstream import write_deepstream
    from pipeline.handoff.nvinfer import DeepStreamOptions
    from pipeline.make.export import ExportOptions, export
    from pipeline.sources import ModelSpec

    folder = tmp_path / "inet"
    export(ExportOptions(model=ModelSpec("resnet20", in_chans=3, image_size=32, mean=(0.485, 0.456, 0.406),
                                         std=(0.229, 0.224, 0.225), resize=36), out=folder, exporter="legacy",
                         reference_samples=64))
    assert invoke("verify", folder, "--samples", "64").exit_code == 0
    plain = invoke("deepstream", folder, "--out", tmp_path / "plain", "--precision", "fp32", "--samples", "64")
    assert plain.exit_code == 0, plain.output
    plan = write_deepstream(DeepStreamOptions(folder=folder, out=tmp_path / "fold", precision="fp32", fold=True,
                                              samples=64))
    p = _config(tmp_path / "fold")
    assert p["onnx-file"] == "model.fp32.folded.onnx" and p["model-color-format"] == "0"
    assert len(p["offsets"].split(";")) == 3
    assert plan.fidelity.fold_parity["rel_l2"] < 1e-5  # the fold is exact: only the resize (no crop) remains
    assert plan.fidelity.fold_parity["top1_agreement"] == 1.0
    assert "folded+roi" in plan.fidelity.variants  # the crop's remedy (a centre ROI), measured
    assert "roi-params-src-0=320;40;640;640" in (tmp_path / "fold" / "README.md").read_text()
    import onnx

    g = onnx.load(str(tmp_path / "fold" / p["onnx-file"]))
    assert {m.key: m.value for m in g.metadata_props}["resnetx.folded_input_scale"].count(",") == 2


@needs_rtx
def test_the_folded_graph_builds_with_tensorrt_rtx(verified: Path, tmp_path: Path) -> None:
    from exporters.fold import fold_input_scale
    from exporters.tensorrt import build_engine

    folded = fold_input_scale(verified / "model.fp16.onnx", tmp_path / "f.onnx", (1.1,))
    e = build_engine(folded.path, tmp_path / "f.engine", flavor="rtx", precision="fp16", input_chw=(1, 28, 28),
                     profile=(1, 8, 32), compute_capabilities=("SM89",))
    assert e.size_bytes > 100_000 and e.network["fp16_compute_layers"] == e.network["compute_layers"]
