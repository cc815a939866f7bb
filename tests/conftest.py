"""Shared fixtures: real exports of small models, made once per test session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from pipeline.export import ExportOptions, export
from pipeline.models import ModelSpec
from pipeline.precisions import Precision

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
