"""Shared fixtures: real exports of small models, made once per test session."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.make.export import ExportOptions, export
from pipeline.model.zoo import load_model
from pipeline.precisions import Precision
from pipeline.sources import ModelSpec

os.environ.pop("COLUMNS", None)  # captured CLI output is 180 columns wide, whatever terminal ran pytest
HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx not installed (pip install 'resnetx[tensorrt-rtx]')")
needs_fashion = pytest.mark.skipif(not FASHION_DIR.is_dir(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="session")
def default_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped default model exported at fp32, fp16 and int8 (tensorrt recipe), no engines."""
    out = tmp_path_factory.mktemp("default")
    export(ExportOptions(model=ModelSpec("default"), out=out,
                         precisions=(Precision.fp32, Precision.fp16, Precision.int8), calib_samples=256))
    return out


@pytest.fixture(scope="session")
def rtx_folder(default_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """default_folder plus TensorRT-RTX engines of its three graphs, built ahead of time here on the CPU."""
    if not HAS_RTX:
        pytest.skip("tensorrt_rtx not installed (pip install 'resnetx[tensorrt-rtx]')")
    out = copy_folder(default_folder, tmp_path_factory.mktemp("rtx") / "f")
    export(ExportOptions(out=out, engines_only=True, engine="rtx"))
    return out


@pytest.fixture(scope="session")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's fp32, fp16 and int8 (tensorrt recipe) graphs, made by the exporters alone: the
    exporters' tests stand on the exporters, not on the pipeline that chains them."""
    from exporters.calibrate import calibrate
    from exporters.fp16 import to_fp16
    from exporters.onnx import export_onnx
    from exporters.quantize import quantize_int8

    out = tmp_path_factory.mktemp("graphs")
    model, info = load_model(ModelSpec("default"))
    fp32 = export_onnx(model, info.input_shape, out / "model.fp32.onnx").path
    to_fp16(fp32, out / "model.fp16.onnx")
    ranges = calibrate(fp32, sample_batches(256))
    ranges.save(out / "ranges.json")
    quantize_int8(fp32, out / "model.int8.onnx", ranges)
    return out


def sample_batches(n: int, batch: int = 64):  # noqa: ANN201
    """The first n images of the bundled sample, preprocessed as the default model wants them."""
    from pipeline.model.data import iter_batches, open_dataset

    _, info = load_model(ModelSpec("default"))
    return (b.x for b in iter_batches(open_dataset("sample"), info.preprocess, batch, limit=n))


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 3-channel CIFAR ResNet-20 at 32x32, fp32 only: a model with no trained weights."""
    out = tmp_path_factory.mktemp("small")
    export(ExportOptions(model=ModelSpec("resnet20"), out=out, exporter="legacy"))
    return out


def class_ordered_folder(root: Path, classes: int = 10, per_class: int = 6) -> Path:
    """An image folder of random 28x28 grey PNGs, `per_class` in each of `classes` folders: read in class order,
    as a validation folder is."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(root / f"c{k}" / f"{i}.png")
    return root


V1_FOLDER = Path(__file__).with_name("data") / "v1_default"  # exported by resnetx at 6530291: manifest version 1


def copy_folder(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def tamper_weight(folder: Path, name: str, fn, rehash: bool = True) -> None:
    """Change one initializer of the fp32 graph; optionally re-hash so only parity can catch it."""
    from dataclasses import replace

    import onnx
    from onnx import numpy_helper

    from pipeline.folder.manifest import read_manifest, write_manifest
    from pipeline.precisions import Precision
    from resnetx.files import file_sha256

    path = folder / "model.fp32.onnx"
    m = onnx.load(str(path))
    init = next(i for i in m.graph.initializer if i.name == name)
    w = numpy_helper.to_array(init).copy()
    fn(w)
    init.CopyFrom(numpy_helper.from_array(w, name))
    onnx.save(m, str(path))
    if rehash:
        man = read_manifest(folder)
        man.graphs[Precision.fp32] = replace(man.graphs[Precision.fp32], sha256=file_sha256(path))
        write_manifest(folder, man)


def save_safetensors(path: Path, model: torch.nn.Module, meta: dict) -> None:
    """The model's weights as .safetensors, resnetx's metadata (preprocessing, class names) in its header, as timm and
    the hubs publish checkpoints."""
    import json

    from safetensors.torch import save

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path.write_bytes(save(state, metadata={"resnetx": json.dumps(meta)}))


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 array as an idx file (MNIST's format; gzipped when the name ends in .gz): a dataset fixture."""
    import gzip

    a = np.ascontiguousarray(array, dtype=np.uint8)
    head = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(head + a.tobytes())
