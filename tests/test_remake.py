"""The one export line that re-makes a folder's artifacts: for info, verify's suggestion and engine rebuilds."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from pipeline.artifacts import Manifest, read_manifest
from pipeline.precisions import Precision
from pipeline.remake import remake_command
from tests.conftest import V1_FOLDER

V1_RTX = Path(__file__).with_name("data") / "v1_manifests" / "rtx_engines.json"
V1_STATIC = Path(__file__).with_name("data") / "v1_manifests" / "static_cpu_int8.json"


def _v1(path: Path) -> Manifest:
    return Manifest.from_dict(json.loads(path.read_text()))


def test_the_line_names_model_calibration_engines_and_kept_layers() -> None:
    m = _v1(V1_RTX)  # version-1 folders were calibrated without cross-layer equalization: the line says so
    assert remake_command(m, Path("artifacts/default"), tuple(m.graphs)) == (
        "resnetx export --model default --out artifacts/default --precision fp32,fp16,int8 --calib-data sample "
        "--calib-samples 512 --calib-method max --int8-target tensorrt --no-int8-equalize --engine rtx "
        "--batch-range 1,32,256")
    keep = remake_command(m, Path("my dir"), (Precision.int8,), add_keep=("layer2.0.conv1",))
    assert shlex.split(keep)[-2:] == ["--keep-fp32", "layer2.0.conv1"] and "'my dir'" in keep


def test_a_fixed_batch_cpu_recipe_folder_says_so() -> None:
    m = _v1(V1_STATIC)
    line = remake_command(m, Path("/tmp/v1/static"), tuple(m.graphs))
    assert line == ("resnetx export --model resnet20 --out /tmp/v1/static --precision fp32,fp16,int8 --static-batch 4 "
                    "--calib-data sample --calib-samples 64 --calib-method max --int8-target cpu --no-int8-equalize")


def test_the_engine_rebuild_needs_only_the_folder() -> None:
    """--engines-only builds from the folder's graphs: a folder copied to its GPU may lack the weights. The line
    names a flavour and a target the GPU at hand takes."""
    m = _v1(V1_RTX)
    assert remake_command(m, Path("/a/f"), (Precision.fp16,), engines_only=True, gpu_cc="8.6") == (
        "resnetx export --out /a/f --engines-only --engine rtx --precision fp16 --batch-range 1,32,256 "
        "--rtx-compute-capability SM86 --force")
    # TensorRT-RTX has no target for 9.0 (H100/H200): there the enterprise flavour builds it
    assert remake_command(m, Path("/a/f"), (Precision.fp16,), engines_only=True, gpu_cc="9.0") == (
        "resnetx export --out /a/f --engines-only --engine tensorrt --precision fp16 --batch-range 1,32,256 --force")
    no_engines = read_manifest(V1_FOLDER)
    assert remake_command(no_engines, Path("my dir"), (Precision.int8,), engines_only=True, gpu_cc="8.7") == (
        "resnetx export --out 'my dir' --engines-only --engine tensorrt --precision int8 --force")
