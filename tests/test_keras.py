"""Keras models as a source, with real Keras 3 on the torch backend: a functional CIFAR ResNet (softmax head, NHWC
input, the example's per-pixel mean) from .keras and .h5 through export (fp32/fp16/int8, TensorRT-RTX engines),
verify against Keras itself, predict against Keras's own preprocess_input pipeline (caffe/BGR, tf, mean image),
DeepStream's BGR offsets and folded mean image, and the inputs it refuses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="keras is not installed (pip install 'resnetx[keras]')")

from pipeline.folder.manifest import read_manifest  # noqa: E402
from tests.conftest import HAS_RTX  # noqa: E402
from tests.test_cli import invoke  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
R8 = Path(__file__).with_name("data") / "keras_r8"  # a CIFAR ResNet v1 of depth 8, trained on the bundled sample


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


@pytest.fixture(scope="module")
def r8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model as .keras and .h5, its mean image, its class names."""
    d = tmp_path_factory.mktemp("keras")
    for f in ("model.keras", "mean.npy", "classes.txt"):
        shutil.copy(R8 / f, d / f)
    keras.models.load_model(d / "model.keras", compile=False).save(d / "model.h5")
    return d


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ and val/ image folders of the bundled sample as the model takes it (32x32 RGB PNGs), and colour/: a
    few colour photos-to-be (random 40x40 RGB) for the channel-order checks."""
    from PIL import Image

    from pipeline.model.data import FASHION_MNIST_CLASSES, open_dataset
    from tests.keras_models import fashion_rgb32

    root = tmp_path_factory.mktemp("images")
    ds = open_dataset("sample")
    x, y = fashion_rgb32(ds.raw(np.arange(len(ds)))), ds.labels
    for split, idx in (("train", np.arange(0, 300)), ("val", np.arange(800, 1000))):
        for i in idx:
            d = root / split / f"{y[i]}_{FASHION_MNIST_CLASSES[y[i]].split('/')[0].replace(' ', '_')}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(d / f"{i:04d}.png")
    rng = np.random.default_rng(0)
    (root / "colour").mkdir()
    for i in range(6):  # smooth colour fields, so that the channels differ everywhere
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        Image.fromarray(base).resize((32, 32), Image.BILINEAR).save(root / "colour" / f"c{i}.png")
    return root


@pytest.fixture(scope="module")
def exported(r8: Path, folders: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keras-folder") / "r8"
    engines = ["--engine", "rtx", "--rtx-compute-capability", "SM86"] if HAS_RTX else []
    r = invoke("export", "--keras", r8 / "model.keras", "--mean-image", r8 / "mean.npy", "--class-names",
               r8 / "classes.txt", "--precision", "fp32,fp16,int8", "--calib-data",
               f"imagefolder:{folders / 'train'}", "--calib-samples", "256", "--out", out, *engines)
    assert r.exit_code == 0, r.output
    return out


def _keras_outputs(model_file: Path, files: list[Path], prep: str, mean: np.ndarray | None = None) -> np.ndarray:
    """Keras's own pipeline on image files: load_img, img_to_array, then preprocess_input's mode (or x / 255 - the
    mean image, as the CIFAR example), then predict."""
    from keras.applications.imagenet_utils import preprocess_input

    model = keras.models.load_model(model_file, compile=False)
    x = np.stack([keras.utils.img_to_array(keras.utils.load_img(f)) for f in files])
    x = x / 255.0 - mean if prep == "mean" else preprocess_input(x, mode=prep)
    return np.asarray(model.predict(x.astype(np.float32), verbose=0), np.float64)


def _predicted(folder: Path, files: list[Path], tmp: Path) -> np.ndarray:
    out = tmp / "p.json"
    r = invoke("predict", folder, *files, "--json", out)
    assert r.exit_code == 0, r.output
    records = json.loads(out.read_text())
    assert [rec["file"] for rec in records] == [str(f) for f in files]
    return np.array([rec["outputs"] for rec in records])


def test_a_keras_model_exports_verifies_and_is_its_own_reference(exported: Path, folders: Path, r8: Path) -> None:
    m = read_manifest(exported)
    info = m.model.info
    assert m.model.spec.format == "keras" and info.input_layout == "NHWC" and info.output == "probabilities"
    assert info.preprocess.mean_image is not None and (exported / "preprocess.mean_image.npy").is_file()
    assert set(m.graphs) >= {"fp32", "fp16", "int8"} and (not HAS_RTX or len(m.engines) == 3)
    r = invoke("verify", exported, "--data", f"imagefolder:{folders / 'val'}")
    assert r.exit_code == 0, r.output
    v = json.loads((exported / "reports" / "cpu" / "verify.json").read_text())
    assert v["reference"] == "keras-torch-fp32" and v["output"] == "probabilities" and v["labelled"]
    rows = {row["artifact"]: row for row in v["rows"]}
    assert rows["fp32"]["metrics"]["rel_l2"] <= 1e-5 and rows["int8"]["passed"]  # int8 within its bar
    assert rows["int8"]["metrics"]["top1"] is not None and "softmax head" in " ".join(r.output.split())
    info_out = " ".join(invoke("info", exported).output.split())
    assert "--keras" in info_out and "--mean-image" in info_out and "--class-names" in info_out


def test_the_remake_line_makes_the_same_fp32_graph(exported: Path, tmp_path: Path) -> None:
    from pipeline.folder.remake import remake_command
    from pipeline.precisions import Precision

    m = read_manifest(exported)
    import shlex

    line = shlex.split(remake_command(m, tmp_path / "again", (Precision.fp32,)).split(" && ")[0])
    assert line[:3] == ["resnetx", "export", "--keras"]
    r = invoke(*line[1:])
    assert r.exit_code == 0, r.output
    assert read_manifest(tmp_path / "again").graphs[Precision.fp32].sha256 == m.graphs[Precision.fp32].sha256


def test_the_h5_file_gives_the_keras_files_outputs(r8: Path, folders: Path, tmp_path: Path) -> None:
    r = invoke("export", "--keras", r8 / "model.h5", "--mean-image", r8 / "mean.npy", "--out", tmp_path / "h5")
    assert r.exit_code == 0, r.output
    files = sorted((folders / "colour").glob("*.png"))
    got = _predicted(tmp_path / "h5", files, tmp_path)
    assert _rel_l2(got, _keras_outputs(r8 / "model.keras", files, "mean", np.load(r8 / "mean.npy"))) <= 1e-5


@pytest.mark.parametrize("prep", ["caffe", "tf", "mean"])
def test_predict_gives_what_keras_own_pipeline_gives(prep: str, r8: Path, exported: Path, folders: Path,
                                                     tmp_path: Path) -> None:
    """The fp32 graph through predict on image files equals Keras's preprocess_input (or x / 255 - mean) and
    predict on the same files; declared with the other channel order, it does not."""
    files = sorted((folders / "colour").glob("*.png"))
    mean = np.load(r8 / "mean.npy")
    folder = exported
    if prep != "mean":
        folder = tmp_path / prep
        r = invoke("export", "--keras", r8 / "model.keras", "--preprocess", prep, "--out", folder)
        assert r.exit_code == 0, r.output
    want = _keras_outputs(r8 / "model.keras", files, prep, mean)
    assert _rel_l2(_predicted(folder, files, tmp_path), want) <= 1e-5
    right = ["--preprocess", prep] if prep != "mean" else ["--mean-image", r8 / "mean.npy"]
    wrong = ["--preprocess", "torch"] if prep == "caffe" else ["--channel-order", "bgr"] + (
        ["--mean-image", r8 / "mean.npy"] if prep == "mean" else ["--mean", "0.5", "--std", "0.5"])
    logits = {}  # a saturated softmax hides differences: the flag's effect is judged on the logits
    for name, flags in (("right", right), ("wrong", wrong)):
        r = invoke("export", "--keras", r8 / "model.keras", *flags, "--strip-softmax", "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
        logits[name] = _predicted(tmp_path / name, files, tmp_path)
    assert _rel_l2(logits["wrong"], logits["right"]) > 0.05  # the flag matters


def test_deepstream_gets_bgr_offsets_and_folds_a_mean_image(r8: Path, exported: Path, tmp_path: Path) -> None:
    from pipeline.handoff.deepstream import write_deepstream
    from pipeline.handoff.nvinfer import DeepStreamOptions

    caffe = tmp_path / "caffe"
    assert invoke("export", "--keras", r8 / "model.keras", "--preprocess", "caffe", "--out", caffe).exit_code == 0
    assert invoke("verify", caffe, "--samples", "64").exit_code == 0
    r = invoke("deepstream", caffe, "--precision", "fp32", "--out", tmp_path / "ds", "--samples", "32")
    assert r.exit_code == 0, r.output
    cfg = (tmp_path / "ds" / "config_infer_model.txt").read_text()
    assert "model-color-format=1\n" in cfg and "offsets=103.939;116.779;123.68\n" in cfg
    assert "net-scale-factor=1\n" in cfg and "network-input-order=0\n" in cfg
    assert invoke("verify", exported, "--samples", "64", "--precision", "fp32").exit_code == 0
    r = invoke("deepstream", exported, "--precision", "fp32", "--out", tmp_path / "ds2", "--samples", "32")
    assert r.exit_code == 2 and "per-pixel mean image" in r.output and not (tmp_path / "ds2").exists()
    plan = write_deepstream(DeepStreamOptions(folder=exported, out=tmp_path / "ds3", precision="fp32", fold=True,
                                              samples=32))
    assert plan.fidelity.fold_parity["rel_l2"] <= 1e-5 and plan.props["offsets"] == "0;0;0"
    assert plan.props["net-scale-factor"] == "1" and (tmp_path / "ds3" / "model.fp32.folded.onnx").is_file()


def test_strip_softmax_exports_the_logits(r8: Path, tmp_path: Path) -> None:
    r = invoke("export", "--keras", r8 / "model.keras", "--mean-image", r8 / "mean.npy", "--strip-softmax",
               "--out", tmp_path / "logits")
    assert r.exit_code == 0, r.output
    assert read_manifest(tmp_path / "logits").model.info.output == "logits"
    r = invoke("verify", tmp_path / "logits", "--samples", "64")
    assert r.exit_code == 0 and "softmax head" not in r.output, r.output
    model = keras.models.load_model(r8 / "model.keras", compile=False)
    model.layers[-1].activation = keras.activations.linear
    x = np.random.default_rng(1).random((4, 32, 32, 3)).astype(np.float32)
    from exporters.onnx import run_cpu

    got = run_cpu(tmp_path / "logits" / "model.fp32.onnx", np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    assert _rel_l2(got, model.predict(x, verbose=0)) <= 1e-5


def test_bad_keras_inputs_are_one_line_and_leave_nothing(r8: Path, folders: Path, exported: Path,
                                                         tmp_path: Path) -> None:
    fake = tmp_path / "not.keras"
    fake.write_bytes(b"PK\x03\x04 not a keras archive")
    r = invoke("export", "--keras", fake, "--mean-image", r8 / "mean.npy", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "Keras cannot load it" in r.output and not (tmp_path / "a").exists()
    r = invoke("export", "--keras", r8 / "classes.txt", "--mean", "0.5", "--std", "0.5", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "give a Keras model file" in r.output and not (tmp_path / "b").exists()
    a, b = keras.Input((32, 32, 3)), keras.Input((32, 32, 3))
    two = keras.Model([a, b], keras.layers.Dense(3, activation="softmax")(
        keras.layers.Flatten()(keras.layers.add([a, b]))))
    two.save(tmp_path / "two.keras")
    r = invoke("export", "--keras", tmp_path / "two.keras", "--mean", "0.5", "--std", "0.5", "--out", tmp_path / "c")
    assert r.exit_code == 2 and "one image input" in r.output and not (tmp_path / "c").exists()
    np.save(tmp_path / "mean28.npy", np.zeros((28, 28, 3), np.float32))
    r = invoke("export", "--keras", r8 / "model.keras", "--mean-image", tmp_path / "mean28.npy", "--out",
               tmp_path / "d")
    assert r.exit_code == 2 and "(32, 32, 3)" in r.output and not (tmp_path / "d").exists()
    r = invoke("export", "--keras", r8 / "model.keras", "--out", tmp_path / "e")
    assert r.exit_code == 2 and "records no preprocessing" in r.output and not (tmp_path / "e").exists()
    bad = tmp_path / "imgs"
    bad.mkdir()
    shutil.copy(sorted((folders / "colour").glob("*.png"))[0], bad / "a.png")
    (bad / "b.png").write_bytes(b"\x89PNG truncated")
    r = invoke("predict", exported, bad, "--json", tmp_path / "p.json")
    assert r.exit_code == 2 and "b.png" in r.output and "1 file(s) could not be decoded" in r.output, r.output
    assert [rec["file"] for rec in json.loads((tmp_path / "p.json").read_text())] == [str(bad / "a.png")]


def test_without_keras_exit_3_with_the_pip_line(r8: Path, tmp_path: Path) -> None:
    script = ("import sys; sys.modules['keras'] = None\n"
              "from typer.testing import CliRunner\nfrom pipeline.cli import app\n"
              "r = CliRunner().invoke(app, ['export', '--keras', sys.argv[1], '--preprocess', 'tf', '--out', "
              "sys.argv[2]])\nprint(r.exit_code, ' '.join(r.output.split()))\n")
    out = subprocess.run([sys.executable, "-c", script, str(r8 / "model.keras"), str(tmp_path / "f")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.startswith("3 ") and "pip install 'resnetx[keras]'" in out.stdout, out.stdout + out.stderr
    assert not (tmp_path / "f").exists()


@pytest.mark.slow
def test_keras_applications_resnet50_goes_through_onnx_and_keras_alike(folders: Path, tmp_path: Path) -> None:
    """keras.applications.ResNet50 (random weights: none can be downloaded here) exported by Keras itself: the Dense
    head is a MatMul + Add, the graph full of Casts and shape arithmetic; --onnx and --keras both make fp32, fp16
    and int8 graphs of it, and its fp32 graph gives Keras's own preprocess_input (caffe) + predict."""
    model = keras.applications.ResNet50(weights=None, classes=10, input_shape=(32, 32, 3))
    model.save(tmp_path / "r50.keras")
    model.export(str(tmp_path / "r50.onnx"), format="onnx", verbose=False,
                 input_signature=[keras.InputSpec(shape=(None, 32, 32, 3), dtype="float32")])
    common = ["--preprocess", "caffe", "--precision", "fp32,fp16,int8", "--calib-data",
              f"imagefolder:{folders / 'train'}", "--calib-samples", "64", "--reference-samples", "0"]
    for flag, src in (("--keras", "r50.keras"), ("--onnx", "r50.onnx")):
        r = invoke("export", flag, tmp_path / src, *common, "--out", tmp_path / flag[2:])
        assert r.exit_code == 0, r.output
        assert set(read_manifest(tmp_path / flag[2:]).graphs) == {"fp32", "fp16", "int8"}
    files = sorted((folders / "colour").glob("*.png"))
    want = _keras_outputs(tmp_path / "r50.keras", files, "caffe")
    for folder in ("keras", "onnx"):
        assert _rel_l2(_predicted(tmp_path / folder, files, tmp_path), want) <= 1e-5


def test_the_triton_client_applies_the_input_contract(r8: Path, exported: Path, folders: Path,
                                                      tmp_path: Path) -> None:
    """The repository's client.py preprocesses an image as the manifest says (here: x / 255 less the per-pixel mean
    image shipped beside it; a caffe model: BGR, raw pixels less the means), and its README says the models take NCHW
    where the Keras model took NHWC, and give probabilities."""
    import importlib.util

    from pipeline.model.data import decode_image

    caffe = tmp_path / "caffe"
    assert invoke("export", "--keras", r8 / "model.keras", "--preprocess", "caffe", "--out", caffe).exit_code == 0
    files = sorted((folders / "colour").glob("*.png"))
    for folder in (exported, caffe):
        assert invoke("verify", folder, "--samples", "64", "--precision", "fp32").exit_code == 0
        repo = tmp_path / f"repo-{folder.name}"
        r = invoke("triton", folder, "--out", repo, "--precision", "fp32", "--device", "cpu")
        assert r.exit_code == 0, r.output
        spec = importlib.util.spec_from_file_location(f"client_{folder.name}", repo / "client.py")
        client = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(client)
        pre = read_manifest(folder).model.info.preprocess
        want = pre(np.stack([decode_image(f, pre) for f in files]))
        got = np.concatenate([client.preprocess(f) for f in files])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        readme = " ".join((repo / "README.md").read_text().split())
        assert "x.transpose(0, 3, 1, 2)" in readme and "probabilities per image" in readme
    assert (tmp_path / f"repo-{exported.name}" / "preprocess.mean_image.npy").is_file()


def test_calibration_memory_is_sized_on_a_keras_graph_onnx_cannot_infer(exported: Path) -> None:
    """A Keras graph takes its Pad sizes from shape arithmetic, where onnx's shape inference stops: the activation
    bytes that bound calibration's chunks must still count those tensors (uncounted, a ResNet-50 at 224 calibrated
    all 128 images at once: 22 GB)."""
    import onnx
    import onnxruntime as ort

    from exporters.sizes import activation_bytes

    model = onnx.load(str(exported / "model.fp32.onnx"))
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.HasField("shape")
             and all(d.dim_value > 0 for d in vi.type.tensor_type.shape.dim[1:])}
    floats = {vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    unknown = {o for n in model.graph.node for o in n.output if o and o not in known} & (
        floats | {o for n in model.graph.node if n.op_type in ("Conv", "Relu", "Add", "Pad") for o in n.output})
    assert len(unknown) > 10  # the case this guards: most of the graph
    for name in sorted(unknown):
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.zeros((1, *[d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]), np.float32)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {model.graph.input[0].name: x}),
                    strict=True))
    measured = sum(outs[n].nbytes for n in unknown if outs[n].dtype == np.float32)
    assert activation_bytes(onnx.load(str(exported / "model.fp32.onnx")), unknown) >= measured > 0


def test_localisation_reads_a_keras_graph_with_shape_bookkeeping(exported: Path, folders: Path) -> None:
    """A Keras graph computes its Flatten from Shape -> Gather (a 0-d tensor): localisation compares per-image
    layer values only, so verify --localize names layers of it instead of failing on the scalar."""
    from pipeline.check.localize import layer_outputs

    fp32 = (exported / "model.fp32.onnx").read_bytes()
    assert "Gather" in {n.op_type for n in __import__("onnx").load_from_string(fp32).graph.node}
    x = np.random.default_rng(0).random((5, 3, 32, 32), np.float32)
    values = layer_outputs(fp32, x)
    assert values and all(v.shape[0] == 5 for _, v in values.values())
    assert {"Conv", "Add"} <= {op for op, _ in values.values()}
    r = invoke("verify", exported, "--data", f"imagefolder:{folders / 'val'}", "--localize", "--precision", "int8",
               "--samples", "64")
    assert r.exit_code in (0, 1), r.output
    assert "error by depth" in r.output and "/Conv" in r.output
