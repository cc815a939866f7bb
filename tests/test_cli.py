"""The CLI end to end through typer's CliRunner: outputs, files and exit codes (0/1/2/3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import copy_folder, needs_rtx

runner = CliRunner()


def invoke(*args: str) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_help_and_version() -> None:
    r = invoke("--help")
    assert r.exit_code == 0 and "export" in r.output and "verify" in r.output and "bench" in r.output
    assert invoke("--version").exit_code == 0


def test_global_flags_go_after_the_command_too() -> None:
    """Errors say "--debug shows the traceback": appending it to the command that failed must work."""
    import subprocess
    import sys

    from pipeline.cli import hoist_global_flags

    assert hoist_global_flags(["verify", "d", "--debug", "-q"]) == ["--debug", "-q", "verify", "d"]
    assert hoist_global_flags(["verify", "--", "--debug"]) == ["verify", "--", "--debug"]
    cmd = [sys.executable, "-m", "pipeline.cli", "verify", "/nonexistent/folder"]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert debug.returncode == 2 and "Traceback" in debug.stderr, debug.stderr


def test_export_verify_bench_default(tmp_path: Path) -> None:
    out = tmp_path / "a"
    r = invoke("export", "--out", out, "--precision", "fp32,fp16", "--exporter", "legacy")
    assert r.exit_code == 0, r.output
    assert "model.fp16.onnx" in r.output and (out / "manifest.json").is_file()
    r = invoke("verify", out, "--samples", "64")
    assert r.exit_code == 0, r.output
    assert "pass" in r.output and (out / "reports" / "cpu" / "verify.json").is_file()
    r = invoke("bench", out, "--batch", "1,2", "--iters", "3", "--warmup", "1", "--min-seconds", "0", "--threads", "1")
    assert r.exit_code == 0, r.output
    rows = json.loads((out / "reports" / "cpu" / "bench.json").read_text())["rows"]
    assert {row["batch"] for row in rows} == {1, 2} and "ort-cpu-fp16" in r.output


def test_verify_fails_with_exit_1(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    with open(folder / "model.int8.onnx", "ab") as f:
        f.write(b"x")
    r = invoke("verify", folder, "--samples", "16", "--precision", "int8")
    assert r.exit_code == 1 and "fails its audit" in r.output


@pytest.mark.parametrize("args,msg", [
    (["export", "--model", "resnet19"], "6n+2"),
    (["export", "--model", "vgg"], "unknown model 'vgg'"),
    (["export", "--precision", "fp8"], "unknown precision fp8"),
    (["export", "--model", "resnet20", "--weights", "/nonexistent.pth"], "does not exist"),
    (["verify", "/nonexistent/folder"], "does not exist"),
    (["bench", "/nonexistent/folder"], "does not exist"),
    (["export", "--batch-range", "1,2"], "MIN,OPT,MAX"),
])
def test_bad_input_is_exit_2_one_line(args: list[str], msg: str, tmp_path: Path) -> None:
    r = invoke(*args, *(["--out", tmp_path / "o"] if args[0] == "export" else []))
    assert r.exit_code == 2, r.output
    assert msg in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_corrupt_onnx_behind_a_matching_hash_is_exit_2(default_folder: Path, tmp_path: Path) -> None:
    """The sha check cannot catch a file truncated before the manifest was re-hashed: loading must."""
    from dataclasses import replace

    from pipeline.folder.manifest import read_manifest, write_manifest
    from pipeline.precisions import Precision
    from resnetx.files import file_sha256

    folder = copy_folder(default_folder, tmp_path / "f")
    onnx_file = folder / "model.fp16.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:5000])
    m = read_manifest(folder)
    m.graphs[Precision.fp16] = replace(m.graphs[Precision.fp16], sha256=file_sha256(onnx_file))
    write_manifest(folder, m)
    for cmd in (["verify", folder, "--samples", "16"], ["bench", folder, "--batch", "1", "--iters", "2"]):
        r = invoke(*cmd, "--precision", "fp16")
        assert r.exit_code == 2, r.output
        assert "cannot load model.fp16.onnx" in r.output and "resnetx export --force" in r.output


def test_incomplete_folder_is_reported(tmp_path: Path) -> None:
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "model.fp32.onnx").write_bytes(b"half")
    r = invoke("verify", tmp_path / "f")
    assert r.exit_code == 2 and "an export into it failed or was interrupted" in r.output


def test_cuda_missing_is_exit_3(default_folder: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    folder = copy_folder(default_folder, tmp_path / "f")
    r = invoke("bench", folder, "--device", "cuda")
    assert r.exit_code == 3 and "no CUDA device" in r.output
    assert invoke("verify", folder, "--samples", "16", "--precision", "fp32").exit_code == 0
    passed = (folder / "reports" / "cpu" / "verify.json").read_bytes()
    r = invoke("verify", folder, "--device", "cuda", "--samples", "16")  # every row skipped: not a FAIL
    assert r.exit_code == 3 and "nothing was verified" in r.output and "NOTHING RAN" in r.output
    assert "no report written" in r.output
    assert (folder / "reports" / "cpu" / "verify.json").read_bytes() == passed, "a run that judged nothing replaced it"
    r = invoke("run", "--device", "cuda", "--out", tmp_path / "r")  # refused before minutes of export
    assert r.exit_code == 3 and "nothing was exported" in r.output and not (tmp_path / "r").exists()


def test_run_takes_the_data_and_the_int8_recipe(tmp_path: Path) -> None:
    out = tmp_path / "r"
    for bad, msg in ((["--data", "nope"], "unknown dataset"), (["--batch", "0"], "sizes >= 1")):
        r = invoke("run", "--out", out, *bad)  # refused before the export, not after it
        assert r.exit_code == 2 and msg in r.output and not out.exists(), r.output
    r = invoke("run", "--out", out, "--precision", "fp32,int8", "--engine", "none", "--batch", "1",
               "--data", "synthetic", "--int8-recipe", "cpu")
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graphs"]["int8"]["calibration"]["recipe"] == "cpu"
    # export stored the reference for the data run verifies on, so verify did not run PyTorch again
    assert (out / "reports" / "reference.synthetic.512.npz").is_file() and "stored reference logits" in r.output
    assert json.loads((out / "reports" / "cpu" / "verify.json").read_text())["data"] == "synthetic"
    assert json.loads((out / "reports" / "cpu" / "bench.json").read_text())["accuracy_data"] is None  # no labels


@pytest.mark.parametrize("edit,msg", [
    (lambda d: d["model"].pop("arch"), "missing model.arch"),
    (lambda d: d["graphs"]["fp16"].pop("sha256"), "missing graphs.fp16.sha256"),
    (lambda d: d.update(version=7), "manifest version 7; this resnetx reads versions 1, 2"),
    (lambda d: d["model"].update(preprocess={"mean": [0.5]}), "missing model.preprocess."),
])
def test_hand_edited_manifest_is_one_line_exit_2(default_folder: Path, tmp_path: Path, edit, msg: str) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    d = json.loads((folder / "manifest.json").read_text())
    edit(d)
    (folder / "manifest.json").write_text(json.dumps(d))
    for cmd in (["info", folder], ["verify", folder, "--samples", "16"], ["bench", folder, "--batch", "1"]):
        r = invoke(*cmd)
        assert r.exit_code == 2 and msg in r.output, r.output
        assert "not a valid resnetx manifest" in r.output or "manifest version" in msg
        assert "Traceback" not in r.output


def test_corrupt_checkpoint_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"\x80\x04garbage")
    r = invoke("export", "--model", "resnet20", "--weights", bad, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "cannot be read" in r.output


@needs_rtx
def test_export_with_rtx_engines(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    r = invoke("export", "--out", folder, "--precision", "fp32,fp16,int8", "--calib-samples", "256", "--engine", "rtx",
               "--rtx-compute-capability", "SM89")
    assert r.exit_code == 0, r.output
    assert "model.int8.rtx-sm89.engine" in r.output and "cached" in r.output
    m = json.loads((folder / "manifest.json").read_text())
    assert m["engines"]["fp16.rtx-sm89"]["compute_capabilities"] == ["SM89"] and m["version"] == 4


def test_info() -> None:
    r = invoke("info")
    assert r.exit_code == 0 and "onnxruntime" in r.output and "resnet50" in r.output


def test_info_on_a_folder_checks_every_file(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    r = invoke("verify", folder, "--samples", "16")
    assert r.exit_code == 0
    r = invoke("info", folder)
    assert r.exit_code == 0, r.output
    assert "model.fp16.onnx" in r.output and "ok" in r.output and "int8: PASS (pass on 16 sample inputs" in r.output
    assert "stored reference logits: reference.sample" in r.output
    assert "resnetx deepstream (an nvinfer config" in " ".join(r.output.split())
    assert "int8 vs fp32 right after quantization: top-1 agreement" in r.output
    with open(folder / "model.int8.onnx", "ab") as f:  # edited after export
        f.write(b"\0")
    (folder / "model.fp16.onnx").unlink()
    r = invoke("info", folder)
    assert r.exit_code == 1 and "changed" in r.output and "missing" in r.output and "provenance is unknown" in r.output
    assert invoke("info", tmp_path / "nowhere").exit_code == 2


def test_compare_with_a_report_that_shares_no_row(default_folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": [{"runtime": "trt-cuda-fp16", "precision": "fp16", "device": "cuda",
                                           "batch": 1, "latency_ms": {"p50": 1.0}}]}))
    folder = copy_folder(default_folder, tmp_path / "f")
    r = invoke("bench", folder, "--runtime", "ort", "--precision", "fp32", "--batch", "1", "--iters", "2",
               "--min-seconds", "0", "--no-accuracy", "--compare", other)
    assert r.exit_code == 0 and "no timed row of" in r.output
    earlier = tmp_path / "earlier.json"
    earlier.write_bytes((folder / "reports" / "cpu" / "bench.json").read_bytes())
    r = invoke("bench", folder, "--runtime", "ort", "--precision", "fp32", "--batch", "1", "--iters", "2",
               "--min-seconds", "0", "--no-accuracy", "--compare", earlier)
    assert r.exit_code == 0 and "(speedup > 1: faster now)" in r.output, r.output
    row = next(line for line in r.output.splitlines() if line.strip("│ ").startswith("ort-cpu-fp32") and "x" in line)
    assert row.count("x") >= 2, row  # speedup and throughput ratio


def test_unwritable_out_is_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    r = invoke("export", "--out", tmp_path / "file" / "sub")
    assert r.exit_code == 2 and "check the path" in r.output and "Traceback" not in r.output


def test_info_prints_the_export_line_that_remakes_the_folder(default_folder: Path, tmp_path: Path) -> None:
    """Run into a fresh folder, the line `info` prints gives the same bytes: the export is reproducible from
    the manifest alone, and the line names everything that shaped the graphs (model, calibration, exporter)."""
    import shlex

    from pipeline.folder.manifest import read_manifest

    r = invoke("info", default_folder)
    line = next(x for x in r.output.splitlines() if x.startswith("re-make with: "))
    args = shlex.split(line.removeprefix("re-make with: "))[1:]
    assert args[args.index("--precision") + 1] == "fp32,fp16,int8" and "--calib-samples" in args
    args[args.index("--out") + 1] = str(tmp_path / "again")
    assert invoke(*args, "--reference-samples", "0").exit_code == 0
    made, again = read_manifest(default_folder), read_manifest(tmp_path / "again")
    assert {e.name: e.sha256 for e in again.entries()} == {e.name: e.sha256 for e in made.entries()}

    from dataclasses import replace

    from pipeline.folder.manifest import write_manifest
    from pipeline.precisions import Precision

    legacy = copy_folder(default_folder, tmp_path / "legacy")  # a graph from the TorchScript exporter says so
    m = read_manifest(legacy)
    m.graphs[Precision.fp32] = replace(m.graphs[Precision.fp32], exporter="legacy")
    write_manifest(legacy, m)
    assert "--exporter legacy" in invoke("info", legacy).output


def test_help_shows_flags_as_flags_defaults_as_defaults_and_choices_as_choices() -> None:
    import os

    os.environ["COLUMNS"] = "200"
    try:
        export = " ".join(invoke("export", "--help").output.split())
        bench = " ".join(invoke("bench", "--help").output.split())
        triton = " ".join(invoke("triton", "--help").output.split())
        train = " ".join(invoke("train", "--help").output.split())
    finally:
        del os.environ["COLUMNS"]
    assert "<bool>" not in export + bench + triton + train
    assert "[default: (fp32)]" in export and "224 ImageNet, 32 CIFAR" in export
    assert "[default: (torch,ort; +trt on cuda)]" in bench
    assert "<gpu|cpu>" in triton and "<cosine|step>" in train
    assert invoke("triton", "x", "--device", "tpu").exit_code == 2


def test_the_gpu_tests_import_and_collect_here() -> None:
    """CI has no GPU and deselects them; at least they must import and collect (a broken one waits for the first
    GPU run otherwise)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p",
                           "no:cacheprovider"], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0 and "error" not in done.stdout.lower(), done.stdout[-2000:]
    assert int(done.stdout.strip().splitlines()[-1].split("/")[0]) >= 4, done.stdout[-500:]


def test_an_unexpected_error_is_one_line_that_says_it_is_a_bug(default_folder: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a check, not the input, not a backend: a bug. One line names the exception and the project's frame it
    came from, says so and where to report it, exit 4; --debug adds the traceback."""
    import pipeline.folder.audit as audit

    def broken(folder: Path) -> list:
        raise KeyError("kind")

    monkeypatch.setattr(audit, "kind_summaries", broken)
    r = runner.invoke(app, ["info", str(default_folder)])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 4 and len(lines) == 1 and "a bug: KeyError" in lines[0], r.output
    assert "pipeline/folder/audit.py:" in lines[0] and "--debug" in lines[0] and "report it" in lines[0]
    r = runner.invoke(app, ["--debug", "info", str(default_folder)])
    assert r.exit_code == 4 and "Traceback (most recent call last)" in r.output


def test_predict_classifies_a_folder_of_images_with_the_models_preprocessing(default_folder: Path,
                                                                            tmp_path: Path) -> None:
    """300 PNGs of the bundled sample in class folders (more than one chunk of predict's): every file in sorted order,
    the int8 graph's raw outputs on the manifest's preprocessing, the model's class names, and its accuracy."""
    import numpy as np
    from PIL import Image

    from exporters.onnx import run_cpu
    from pipeline.folder.manifest import read_manifest
    from pipeline.model.data import open_dataset

    ds = open_dataset("sample")
    raw, labels = ds.raw(np.arange(300)), ds.labels[:300]
    files = []
    for i, (img, y) in enumerate(zip(raw, labels, strict=True)):
        (tmp_path / "imgs" / f"c{y}").mkdir(parents=True, exist_ok=True)
        files.append(tmp_path / "imgs" / f"c{y}" / f"{i:04d}.png")
        Image.fromarray(img).save(files[-1])
    r = invoke("predict", default_folder, tmp_path / "imgs", "--precision", "int8", "--top", "3", "--json",
               tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    assert "300 image(s) classified with int8 on ort-cpu-int8" in " ".join(r.output.split())
    records = json.loads((tmp_path / "p.json").read_text())
    order = sorted(range(300), key=lambda i: str(files[i]))
    assert [rec["file"] for rec in records] == [str(files[i]) for i in order]
    info = read_manifest(default_folder).model.info
    want = run_cpu(default_folder / "model.int8.onnx", info.preprocess(raw[order]))
    assert np.allclose(np.array([rec["outputs"] for rec in records]), want, atol=1e-5)
    assert all(len(rec["top"]) == 3 and rec["top"][0]["index"] == int(np.argmax(w)) for rec, w in zip(
        records, want, strict=True))
    names = [info.class_names[rec["top"][0]["index"]] for rec in records]
    assert [rec["top"][0]["name"] for rec in records] == names
    assert np.mean([rec["top"][0]["index"] == labels[i] for rec, i in zip(records, order, strict=True)]) > 0.85
