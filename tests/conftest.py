"""Shared fixtures: real exports of small models, made once per test session."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from pipeline.export import ExportOptions, export
from pipeline.models import ModelSpec
from pipeline.precisions import Precision

os.environ.pop("COLUMNS", None)  # captured CLI output is 180 columns wide, whatever terminal ran pytest
HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx not installed (pip install 'resnetx[tensorrt-rtx]')")
needs_fashion = pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="session")
def default_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped default model exported at fp32, fp16 and int8 (tensorrt recipe), no engines."""
    out = tmp_path_factory.mktemp("default")
    export(ExportOptions(model=ModelSpec("default"), out=out,
                         precisions=(Precision.fp32, Precision.fp16, Precision.int8), calib_samples=256))
    return out


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init 3-channel CIFAR ResNet-20 at 32x32, fp32 only: a model with no trained weights."""
    out = tmp_path_factory.mktemp("small")
    export(ExportOptions(model=ModelSpec("resnet20"), out=out, exporter="legacy"))
    return out


def copy_folder(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def tamper_weight(folder: Path, name: str, fn, rehash: bool = True) -> None:
    """Change one initializer of the fp32 graph; optionally re-hash so only parity can catch it."""
    import onnx
    from onnx import numpy_helper

    from pipeline.artifacts import read_manifest, write_manifest
    from pipeline.models import file_sha256

    path = folder / "model.fp32.onnx"
    m = onnx.load(str(path))
    init = next(i for i in m.graph.initializer if i.name == name)
    w = numpy_helper.to_array(init).copy()
    fn(w)
    init.CopyFrom(numpy_helper.from_array(w, name))
    onnx.save(m, str(path))
    if rehash:
        man = read_manifest(folder)
        man.artifacts["fp32"]["sha256"] = file_sha256(path)
        write_manifest(folder, man)
