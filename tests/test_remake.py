"""The one export line that re-makes a folder's artifacts: for info, verify's suggestion and engine rebuilds."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from pipeline.folder.manifest import Manifest, read_manifest
from pipeline.folder.remake import remake_command
from pipeline.precisions import Precision
from tests.conftest import V1_FOLDER

V1_RTX = Path(__file__).with_name("data") / "v1_manifests" / "rtx_engines.json"
V1_STATIC = Path(__file__).with_name("data") / "v1_manifests" / "static_cpu_int8.json"


def _v1(path: Path) -> Manifest:
    return Manifest.from_dict(json.loads(path.read_text()))


def test_the_line_names_model_calibration_engines_and_kept_layers() -> None:
    m = _v1(V1_RTX)  # version-1 folders were calibrated without cross-layer equalization: the line says so
    assert remake_command(m, Path("artifacts/default"), tuple(m.graphs)) == (
        "resnetx export --model default --out artifacts/default --precision fp32,fp16,int8 --calib-data sample "
        "--calib-samples 512 --calib-method max --int8-recipe tensorrt --no-int8-equalize && resnetx export "
        "--out artifacts/default --engines-only --engine rtx --precision fp32,fp16,int8 --batch-range 1,32,256")
    keep = remake_command(m, Path("my dir"), (Precision.int8,), add_keep=("layer2.0.conv1",))
    first = keep.split(" && ")[0]
    assert shlex.split(first)[-2:] == ["--keep-fp32", "layer2.0.conv1"] and "'my dir'" in keep


def test_a_fixed_batch_cpu_recipe_folder_says_so() -> None:
    m = _v1(V1_STATIC)
    line = remake_command(m, Path("/tmp/v1/static"), tuple(m.graphs))
    assert line == ("resnetx export --model resnet20 --out /tmp/v1/static --precision fp32,fp16,int8 --static-batch 4 "
                    "--calib-data sample --calib-samples 64 --calib-method max --int8-recipe cpu --no-int8-equalize")


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


def test_graphs_made_with_other_kept_layers_each_get_their_line(default_folder: Path, tmp_path: Path) -> None:
    """After following a `try:` line the int8 graph keeps a layer in float and the fp16 graph (kept from before)
    does not: one line cannot make both; the re-make is two lines joined by &&, and it gives the same bytes."""
    from pipeline.make.export import ExportOptions, export
    from pipeline.sources import ModelSpec
    from tests.conftest import copy_folder
    from tests.test_cli import invoke

    folder = copy_folder(default_folder, tmp_path / "f")
    export(ExportOptions(model=ModelSpec("default"), out=folder, precisions=(Precision.int8,), calib_samples=256,
                         keep_fp32=("layer1.1.conv1",)))  # what the try: line runs
    m = read_manifest(folder)
    assert m.graphs[Precision.fp16].keep_fp32 == () and m.graphs[Precision.int8].keep_fp32 == ("layer1.1.conv1",)
    line = remake_command(m, tmp_path / "again", tuple(m.graphs))
    first, second = line.split(" && ")
    assert "--precision fp32,fp16" in first and "--keep-fp32" not in first
    assert "--precision int8" in second and "--keep-fp32 layer1.1.conv1" in second
    for part in (first, second):
        assert invoke(*shlex.split(part)[1:], "--reference-samples", "0").exit_code == 0
    again = read_manifest(tmp_path / "again")
    assert {e.name: e.sha256 for e in again.entries()} == {e.name: e.sha256 for e in m.entries()}
