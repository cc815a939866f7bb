"""pipeline/make/export.py end to end: manifest, cache by content hash, --force, kept artifacts, engines,
engines-only."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pipeline.folder.audit import audit_folder
from pipeline.folder.manifest import read_manifest
from pipeline.make.export import ExportOptions, export
from pipeline.model.zoo import build_model
from pipeline.precisions import Precision
from pipeline.sources import ModelSpec
from resnetx.errors import BadInput
from tests.conftest import copy_folder, needs_rtx

RTX = "rtx-sm80-sm86-sm89-sm120"  # the portable TensorRT-RTX target
ALL = (Precision.fp32, Precision.fp16, Precision.int8)
FP32, FP16, INT8 = ALL


def _shas(folder: Path) -> dict[str, str]:
    return {e.name: e.sha256 for e in read_manifest(folder).entries()}


def test_manifest_describes_everything(default_folder: Path) -> None:
    m = json.loads((default_folder / "manifest.json").read_text())
    assert m["version"] == 4
    assert m["model"]["arch"] == "resnet20" and m["model"]["weights"] == "default"
    assert m["model"]["preprocess"]["channels"] == 1 and len(m["model"]["state_sha256"]) == 64
    assert set(m["graphs"]) == {"fp32", "fp16", "int8"} and m["engines"] == {}
    for entry in m["graphs"].values():
        assert (default_folder / entry["file"]).is_file() and len(entry["sha256"]) == 64
    assert m["graphs"]["fp16"]["source_sha256"] == m["graphs"]["fp32"]["sha256"]
    calib = m["graphs"]["int8"]["calibration"]
    assert calib["dataset"] == "sample" and calib["samples"] == 256 and calib["method"] == "percentile"
    assert calib["recipe"] == "tensorrt" and (default_folder / calib["cache_file"]).is_file()
    assert calib["images"] == 256 and calib["split"] == "all images"  # the sample has one set of images
    assert {"torch", "onnx", "onnxruntime"} <= set(m["versions"])


def test_int8_is_checked_against_fp32_right_after_quantization(default_folder: Path) -> None:
    check = read_manifest(default_folder).graphs[INT8].check
    assert check.samples == 64 and check.top1_agree >= 0.9 and 0 < check.rel_l2 < 0.5


def test_int8_collapse_is_announced(tmp_path: Path) -> None:
    """Scales that clip everything (a collapse) are caught by export itself, before any verify."""
    from dataclasses import replace

    import numpy as np
    import onnx
    from onnx import numpy_helper

    from exporters.onnx import compare_graphs
    from pipeline.folder.manifest import GraphCheck
    from pipeline.make.graphs import int8_notices

    opts = ExportOptions(model=ModelSpec("default"), out=tmp_path / "f", precisions=ALL, calib_samples=64)
    r = export(opts)
    assert not any("agrees with fp32 on only" in n for n in r.notices)
    int8 = tmp_path / "f" / "model.int8.onnx"
    m = onnx.load(str(int8))
    for init in m.graph.initializer:  # shrink every activation scale 1000x: the ranges no longer fit the data
        if init.name.endswith("_scale") and init.dims == []:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) / 1000, init.name))
    onnx.save(m, str(tmp_path / "broken.onnx"))
    x = np.load("pipeline/assets/fashion_mnist_sample.npz")["images"][:64, None].astype(np.float32) / 255
    check = compare_graphs(tmp_path / "broken.onnx", tmp_path / "f" / "model.fp32.onnx", (x - 0.2854) / 0.3526)
    broken = replace(r.manifest.graphs[INT8], check=GraphCheck.from_dict(check))
    notice = [n for n in int8_notices(broken, opts, r.info) if "agrees with fp32 on only" in n]
    assert check["top1_agree"] < 0.97 and notice and "--localize" in notice[0]


def test_second_export_is_cached_and_byte_identical(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    r = export(ExportOptions(model=ModelSpec("default"), out=folder, precisions=ALL, calib_samples=256))
    assert [e.status for e in r.events] == ["cached"] * 4  # fp32, fp16, int8, the stored reference
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert before == after


def test_force_and_changed_options_rebuild(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    r = export(ExportOptions(model=ModelSpec("default"), out=folder, precisions=ALL, calib_samples=128))
    assert [e.status for e in r.events] == ["cached", "cached", "built", "cached"]  # only int8 depends on the count
    assert "percentile ranges from 128 images" in r.events[2].note
    # without --force, what was not asked for and still comes from the same fp32 graph stays
    r = export(ExportOptions(model=ModelSpec("default"), out=folder, precisions=(Precision.fp32,)))
    assert [(e.step, e.status) for e in r.events] == [("fp32", "cached"), ("fp16", "kept"), ("int8", "kept"),
                                                      ("reference", "cached")]
    assert set(_shas(folder)) == {"fp32", "fp16", "int8"}
    assert read_manifest(folder).calibration.samples == 128  # int8's calibration record went with it
    assert len(list(folder.glob("calib.tensorrt.percentile.*.json"))) == 1  # the 256-image ranges were replaced
    # --force: the folder holds exactly what this export made
    r = export(ExportOptions(model=ModelSpec("default"), out=folder, precisions=(Precision.fp32,), force=True))
    assert [(e.step, e.status) for e in r.events] == [("fp32", "built"), ("reference", "built")]
    assert set(_shas(folder)) == {"fp32"}


def test_an_int8_graph_from_cached_ranges_is_the_freshly_calibrated_one(default_folder: Path, tmp_path: Path) -> None:
    """Bias correction takes its inputs' sums from calibration's first pass; with the ranges read from the
    folder's cache it reads the calibration images itself, and the graph comes out the same."""
    folder = copy_folder(default_folder, tmp_path / "f")
    keep = ("layer2.0.conv1",)
    cache = folder / read_manifest(folder).calibration.cache_file
    written = cache.stat().st_mtime_ns
    r = export(ExportOptions(model=ModelSpec("default"), out=folder, precisions=ALL, calib_samples=256,
                             keep_fp32=keep))
    assert r.events[2].status == "built" and cache.stat().st_mtime_ns == written  # the ranges were read
    fresh = export(ExportOptions(model=ModelSpec("default"), out=tmp_path / "fresh", precisions=(FP32, INT8),
                                 calib_samples=256, keep_fp32=keep))
    assert _shas(folder)["int8"] == _shas(tmp_path / "fresh")["int8"] != _shas(default_folder)["int8"]
    assert fresh.manifest.graphs["int8"].details["bias_corrected"] > 10


def test_an_artifact_from_another_fp32_graph_is_not_kept(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    r = export(ExportOptions(model=ModelSpec("default"), out=folder, precisions=(Precision.fp32,),
                             exporter="legacy"))  # another exporter: another fp32 graph
    assert [e.status for e in r.events][0] == "built" and [e.name for e in r.manifest.entries()] == ["fp32"]


def test_repeat_export_gives_same_bytes_and_scales(default_folder: Path, tmp_path: Path) -> None:
    r = export(ExportOptions(model=ModelSpec("default"), out=tmp_path / "again", precisions=ALL, calib_samples=256))
    assert {e.name: e.sha256 for e in r.manifest.entries()} == _shas(default_folder)
    cache = r.manifest.calibration.cache_file
    text = (tmp_path / "again" / cache).read_text()
    assert text == (default_folder / cache).read_text()
    # onnxruntime writes ranges in set order, which changes with the hash seed: resnetx sorts them
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=1) + "\n"


def test_changed_checkpoint_invalidates_cache(tmp_path: Path) -> None:
    ckpt = tmp_path / "w.pth"
    torch.manual_seed(3)
    torch.save(build_model("resnet20", num_classes=10, in_chans=3).state_dict(), ckpt)
    opts = ExportOptions(model=ModelSpec("resnet20", weights=ckpt), out=tmp_path / "a", exporter="legacy")
    first = export(opts)
    assert export(opts).events[0].status == "cached"
    torch.manual_seed(4)
    torch.save(build_model("resnet20", num_classes=10, in_chans=3).state_dict(), ckpt)
    again = export(opts)
    assert [e.status for e in again.events] == ["built", "built"]  # new weights: new graph, new reference
    assert again.manifest.graphs[FP32].sha256 != first.manifest.graphs[FP32].sha256
    bare = export(replace(opts, out=tmp_path / "b", reference_samples=0))
    assert [e.step for e in bare.events] == ["fp32"] and not (tmp_path / "b" / "reports").exists()


@needs_rtx
def test_engines_in_manifest(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    r = export(ExportOptions(model=ModelSpec("default"), out=folder, precisions=ALL, calib_samples=256, engine="rtx",
                             batch_range=(1, 16, 128)))
    from pipeline.cli.tables import engine_target
    from resnetx.flavors import Flavor

    engines = {e.name: e for e in r.manifest.engines.values()}
    assert set(engines) == {f"{p}.{RTX}" for p in ("fp32", "fp16", "int8")}
    e = engines[f"int8.{RTX}"]
    assert e.profile == (1, 16, 128) and e.flavor is Flavor.rtx and e.trt_version
    assert e.source_sha256 == r.manifest.graphs[INT8].sha256
    assert e.compute_capabilities == ("SM80", "SM86", "SM89", "SM120") and e.seconds > 0
    assert (folder / f"model.int8.{RTX}.engine").stat().st_size == e.size_bytes
    assert e.network.int8_compute_layers == 20 and e.network.compute_layers == 22  # stem and classifier stay float
    audit = {row.entry.name: row for row in audit_folder(folder).rows}  # what `resnetx info DIR` prints
    assert audit[f"int8.{RTX}"].source == "model.int8.onnx" and audit[f"int8.{RTX}"].status == "ok"
    target = engine_target(audit[f"int8.{RTX}"].entry)
    assert target.startswith("TensorRT-RTX ") and "SM86" in target and target.endswith("20/22 conv/matmul in int8")
    assert audit["fp32"].source == "PyTorch model"


@needs_rtx
def test_cpu_recipe_with_engines_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="use --int8-recipe tensorrt"):
        export(ExportOptions(model=ModelSpec("default"), out=tmp_path / "x", precisions=ALL, int8_recipe="cpu",
                             engine="rtx"))
    with pytest.raises(BadInput, match="use --int8-recipe tensorrt"):  # auto: refused once it finds a flavour
        export(ExportOptions(model=ModelSpec("default"), out=tmp_path / "x", precisions=ALL, int8_recipe="cpu",
                             engine="auto"))
    assert not (tmp_path / "x").exists()


def test_out_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadInput, match="is a file"):
        export(ExportOptions(out=tmp_path / "f"))


def test_static_batch_end_to_end(tmp_path: Path) -> None:
    """--static-batch 4: every graph takes 4 images, calibration and the checks chunk to 4, engines are
    built for 4..4, verify (with localisation) passes, bench times batch 4 and says why batch 1 did not run."""
    import importlib.util

    from pipeline.check.bench import BenchOptions, bench
    from pipeline.check.verify import VerifyOptions, verify

    rtx = importlib.util.find_spec("tensorrt_rtx") is not None
    out = tmp_path / "s"
    with pytest.raises(BadInput, match="does not fit a graph exported with the fixed batch 4"):
        export(ExportOptions(model=ModelSpec("default"), out=out, precisions=ALL, batch=4, engine="rtx",
                             batch_range=(1, 8, 64)))
    assert not out.exists()  # refused before any work
    said: list[str] = []
    r = export(ExportOptions(model=ModelSpec("default"), out=out, precisions=ALL, calib_samples=66, batch=4,
                             engine="rtx" if rtx else "none", reference_samples=70), on_progress=said.append)
    assert "reference: fp32 logits (torch-cpu-fp32), 70/70 inputs" in said  # long steps say how far they are
    m = r.manifest
    assert m.calibration.images == 66  # 17 batches of 4, the last padded: the padding is not counted
    assert {m.graphs[p].static_batch for p in ALL} == {4} == {audit_folder(out).static_batch}
    assert m.graphs[INT8].check.top1_agree >= 0.9
    engines = list(m.engines.values())
    assert all(e.profile == (4, 4, 4) for e in engines) and len(engines) == (3 if rtx else 0)
    v = verify(VerifyOptions(folder=out, samples=70, localize=True))
    assert v.passed and all(row.localization and not row.localization_error for row in v.rows)
    b = bench(BenchOptions(folder=out, runtimes=("ort",), precisions=("fp32",), batches=(1, 4), iters=3,
                           warmup=0, warmup_seconds=0.0, min_seconds=0.0, accuracy_samples=50))
    rows = {row.batch: row for row in b.rows}
    assert rows[4].latency_ms and rows[4].accuracy_top1 > 80
    assert rows[1].latency_ms is None and "outside the range 4..4" in rows[1].error


def test_calibrating_on_the_bundled_sample_is_flagged_for_other_models(default_folder: Path, tmp_path: Path) -> None:
    """The sample is Fashion-MNIST: fine for the default model, unrepresentative for an ImageNet or CIFAR one."""
    flag = "calibrated on the bundled sample"
    r = export(ExportOptions(model=ModelSpec("resnet20"), out=tmp_path / "r20", exporter="legacy",
                             precisions=(Precision.fp32, Precision.int8), calib_samples=64, reference_samples=0))
    assert any(flag in n and "--calib-data imagefolder:DIR" in n for n in r.notices), r.notices
    again = export(ExportOptions(model=ModelSpec("default"), out=copy_folder(default_folder, tmp_path / "d"),
                                 precisions=ALL, calib_samples=256))
    assert not any(flag in n for n in again.notices)
    synthetic = export(ExportOptions(model=ModelSpec("resnet20"), out=tmp_path / "r20", exporter="legacy",
                                     precisions=(Precision.fp32, Precision.int8), calib_data="synthetic",
                                     calib_samples=64, reference_samples=0))
    assert not any(flag in n for n in synthetic.notices) and any("synthetic noise" in n for n in synthetic.notices)


@needs_rtx
def test_engines_only_builds_from_the_folder_without_the_weights(default_folder: Path, tmp_path: Path) -> None:
    """A folder copied to its target GPU, the checkpoint left behind: engines are built there from the graphs
    the manifest pins, and the rebuild command the TensorRT runner prints runs as printed."""
    import shlex
    from dataclasses import replace

    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.folder.manifest import write_manifest
    from pipeline.folder.remake import remake_command

    def cli(*args: object) -> object:
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)

    folder = copy_folder(default_folder, tmp_path / "f")
    m = read_manifest(folder)
    spec = replace(m.model.spec, arch="resnet20", weights=Path("/elsewhere/resnet20.pth"))  # not on this machine
    m.model = replace(m.model, spec=spec)
    write_manifest(folder, m)
    graphs = _shas(folder)
    r = cli("export", "--out", folder, "--engines-only", "--engine", "rtx", "--precision", "fp16,int8",
            "--rtx-compute-capability", "SM86")
    assert r.exit_code == 0, r.output
    after = read_manifest(folder)
    assert set(_shas(folder)) == {"fp32", "fp16", "int8", "fp16.rtx-sm86", "int8.rtx-sm86"}  # fp32 asked for nothing
    assert {k: v for k, v in _shas(folder).items() if k in graphs} == graphs  # the graphs are untouched
    for p in ("fp16", "int8"):
        e = after.entry(f"{p}.rtx-sm86")
        assert e.source_sha256 == graphs[p] and e.compute_capabilities == ("SM86",)
    assert audit_folder(folder).intact
    before = (folder / "manifest.json").read_bytes()
    again = cli("export", "--out", folder, "--engines-only", "--engine", "rtx", "--precision", "fp16,int8",
                "--rtx-compute-capability", "SM86")
    assert again.output.count("cached") == 2 and (folder / "manifest.json").read_bytes() == before
    cmd = remake_command(after, folder, (INT8,), engines_only=True, gpu_cc="8.9")
    r = CliRunner().invoke(app, shlex.split(cmd)[1:], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert read_manifest(folder).entry("int8.rtx-sm89").compute_capabilities == ("SM89",)  # added, for the GPU
    assert read_manifest(folder).entry("int8.rtx-sm86").compute_capabilities == ("SM86",)  # the others stay

    for args, code, msg in (
        (["--weights", "w.pth"], 2, "--weights would change those graphs"),
        (["--precision", "int8", "--batch-range", "1,2"], 2, "MIN,OPT,MAX"),
    ):
        r = cli("export", "--out", folder, "--engines-only", "--engine", "rtx", *args)
        assert r.exit_code == code and msg in r.output, r.output
    fp32_only = tmp_path / "g"
    export(ExportOptions(out=fp32_only, reference_samples=0))
    r = cli("export", "--out", fp32_only, "--engines-only", "--engine", "rtx", "--precision", "int8")
    assert r.exit_code == 2 and "holds no int8 ONNX graph" in r.output, r.output
    cpu_recipe = tmp_path / "c"
    export(ExportOptions(out=cpu_recipe, precisions=(FP32, INT8), int8_recipe="cpu", calib_samples=64,
                         reference_samples=0))
    r = cli("export", "--out", cpu_recipe, "--engines-only", "--engine", "rtx")
    assert r.exit_code == 2 and "cpu recipe" in r.output and "model.fp32.rtx" not in r.output, r.output
    with open(folder / "model.fp16.onnx", "ab") as f:  # an engine from a changed graph would lie about its source
        f.write(b"\0")
    r = cli("export", "--out", folder, "--engines-only", "--engine", "rtx", "--precision", "fp16", "--force")
    assert r.exit_code == 1 and "changed after export" in r.output, r.output


@needs_rtx
def test_engines_only_failure_keeps_the_manifest_and_the_engines_before_it(default_folder: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the model the folder cannot be exported again there: a failed engine build must not take the
    manifest with it (export removes it first), and the engines built before it stay listed."""
    import exporters.tensorrt as trt_exporter
    from resnetx.errors import ResnetxError

    folder = copy_folder(default_folder, tmp_path / "f")
    real = trt_exporter.build_engine

    def int8_fails(*args, **kwargs):
        if kwargs["precision"] == "int8":
            raise ResnetxError("rtx failed to build an engine from model.int8.onnx: out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(trt_exporter, "build_engine", int8_fails)
    with pytest.raises(ResnetxError, match="out of memory"):
        export(ExportOptions(out=folder, engine="rtx", rtx_compute_capabilities=("SM89",), engines_only=True))
    assert set(_shas(folder)) == {"fp32", "fp16", "int8", "fp32.rtx-sm89", "fp16.rtx-sm89"}
    assert audit_folder(folder).intact and not (folder / "model.int8.rtx-sm89.engine").exists()


@needs_rtx
def test_an_engine_of_a_replaced_graph_is_removed(rtx_folder: Path, tmp_path: Path) -> None:
    """int8 exported again without --engine: the int8 engine, built from the old graph, goes with a notice."""
    folder = copy_folder(rtx_folder, tmp_path / "f")
    r = export(ExportOptions(model=ModelSpec("default"), out=folder, precisions=(Precision.int8,), calib_samples=256,
                             keep_fp32=("layer2.0.conv1",)))
    assert not (folder / f"model.int8.{RTX}.engine").exists() and f"int8.{RTX}" not in _shas(folder)
    assert any(n.startswith(f"removed model.int8.{RTX}.engine:") for n in r.notices), r.notices
    assert f"fp16.{RTX}" in _shas(folder)  # its graph is kept, and so is its engine
    assert audit_folder(folder).stale == [] and audit_folder(folder).intact


def test_bad_image_folders_fail_before_any_work(tmp_path: Path) -> None:
    """Checked before the fp32 export: a folder of empty class folders, and undecodable images all named at
    once; nothing is left behind in a folder the export would have created."""
    from tests.test_cli import invoke

    empty = tmp_path / "empty"
    for c in ("a", "b"):
        (empty / c).mkdir(parents=True)
    out = tmp_path / "out"
    r = invoke("export", "--precision", "fp32,int8", "--calib-data", f"imagefolder:{empty}", "--out", out)
    assert r.exit_code == 2 and "has class folders but no .jpg/.png images" in r.output, r.output
    assert not out.exists()
    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (28, 28)).save(broken / "a" / "good.png")
    for i in range(3):
        (broken / "a" / f"bad{i}.png").write_bytes(b"\x89PNG not really")
    r = invoke("export", "--precision", "fp32,int8", "--calib-data", f"imagefolder:{broken}", "--out", out)
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "3 image(s) do not open as images" in text and "bad2.png" in text, r.output
    assert not out.exists()


def test_engines_only_refuses_what_would_change_the_graphs(default_folder: Path, tmp_path: Path) -> None:
    from tests.test_cli import invoke

    folder = copy_folder(default_folder, tmp_path / "f")
    for flag, value in (("--calib-samples", "64"), ("--calib-method", "max"), ("--opset", "17"),
                        ("--int8-recipe", "cpu"), ("--mean", "0.5")):
        r = invoke("export", "--out", folder, "--engines-only", "--engine", "rtx", flag, value)
        assert r.exit_code == 2 and f"{flag} would change those graphs" in r.output, (flag, r.output)
    for flag, value in (("--workspace-mb", "512"), ("--opt-level", "2"), ("--rtx-compute-capability", "SM89"),
                        ("--batch-range", "1,8,64")):
        r = invoke("export", "--out", tmp_path / "g", flag, value)
        assert r.exit_code == 2 and f"{flag} only shape TensorRT engines" in r.output, (flag, r.output)
    assert not (tmp_path / "g").exists()
