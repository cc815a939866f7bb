"""Verdicts per artifact with what they were measured on: which one stands, and the hand-offs that read it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.folder.audit import audit_folder
from pipeline.folder.manifest import read_manifest
from pipeline.folder.verdicts import VERDICTS, Verdict, read_verdicts, standing, write_verdicts
from resnetx.errors import BadInput
from tests.conftest import copy_folder, needs_fashion
from tests.test_cli import invoke


def _v(artifact: str, passed: bool, data: str = "fashion-mnist", samples: int = 512, labelled: bool = True,
       sha: str = "s", runtime: str = "ort-cpu-int8", kind: str = "cpu", date: str = "2026-12-05") -> Verdict:
    return Verdict(artifact, sha, passed, runtime, "cpu", kind, data, samples, labelled, date)


def test_the_verdict_on_the_most_representative_data_stands(default_folder: Path) -> None:
    m = read_manifest(default_folder)
    sha = {e.name: e.sha256 for e in m.entries()}
    fail = _v("int8", False, sha=sha["int8"])
    cases = {  # later records that must not clear the failure, and why
        "other precisions": [_v("fp32", True, sha=sha["fp32"], runtime="ort-cpu-fp32")],
        "the bundled sample": [_v("int8", True, data="sample", samples=4000, sha=sha["int8"])],
        "synthetic noise": [_v("int8", True, data="synthetic", sha=sha["int8"])],
        "an unlabelled folder": [_v("int8", True, data="imagefolder:/three", labelled=False, samples=9000,
                                    sha=sha["int8"])],
        "fewer images": [_v("int8", True, samples=100, sha=sha["int8"])],
        "another export's file": [_v("int8", True, samples=9000, sha="other")],
    }
    for why, later in cases.items():
        st = standing(default_folder, m, [fail, *later])
        assert not st["int8"].passed, why
        assert "fail on 512 fashion-mnist inputs, labelled" in st["int8"].words
    cleared = standing(default_folder, m, [fail, _v("int8", True, sha=sha["int8"], date="2026-12-06")])
    assert cleared["int8"].passed  # the same data again, later: it stands
    onnx_fail = [_v("int8", True, sha=sha["int8"]), _v("int8", False, sha=sha["int8"], runtime="openvino-cpu-int8")]
    assert not standing(default_folder, m, onnx_fail)["int8"].passed  # each runtime's verdict counts
    assert standing(default_folder, m, []) == {}  # never verified: no standing verdict at all


@needs_fashion
def test_a_later_partial_verify_cannot_launder_a_failure(default_folder: Path, tmp_path: Path) -> None:
    """int8 fails on the user's data; verifying fp32 alone, or int8 on the bundled sample or on a 3-class folder,
    passes, yet triton still refuses the int8 graph and names the data its verdict came from."""
    folder = copy_folder(default_folder, tmp_path / "f")
    r = invoke("verify", folder, "--data", "fashion-mnist", "--samples", "600", "--precision", "int8",
               "--min-agreement", "0.9999")
    assert r.exit_code == 1, r.output
    assert invoke("verify", folder, "--precision", "fp32", "--samples", "64").exit_code == 0
    assert invoke("verify", folder, "--precision", "int8", "--samples", "600").exit_code == 0  # the sample
    three = _three_class_folder(tmp_path / "three")
    assert invoke("verify", folder, "--precision", "int8", "--data", f"imagefolder:{three}").exit_code == 0
    records = read_verdicts(folder)
    assert [(v.artifact, v.passed, v.data) for v in records] == [
        ("int8", False, "fashion-mnist"), ("fp32", True, "sample"), ("int8", True, "sample"),
        ("int8", True, f"imagefolder:{three}")]
    assert not records[-1].labelled and records[0].labelled and records[0].samples == 600
    repo = tmp_path / "repo"
    r = invoke("triton", folder, "--out", repo)
    assert r.exit_code == 2 and "int8 (fail on 600 fashion-mnist inputs, labelled" in r.output, r.output
    assert not repo.exists()
    assert invoke("triton", folder, "--out", repo, "--precision", "fp32,fp16").exit_code == 2  # fp16: never verified
    assert invoke("verify", folder, "--precision", "fp16", "--samples", "64").exit_code == 0
    ok = invoke("triton", folder, "--out", repo, "--precision", "fp32,fp16")
    assert ok.exit_code == 0 and "pass (ort-cpu-fp16, 64 inputs)" in ok.output, ok.output
    assert "fp16 pass on 64 sample inputs" in (repo / "README.md").read_text()  # the repository keeps the whole record
    forced = invoke("triton", folder, "--out", tmp_path / "repo2", "--allow-unverified")
    assert forced.exit_code == 0 and "--allow-unverified" in forced.output
    info = invoke("info", folder)
    assert "int8: FAIL (fail on 600 fashion-mnist inputs" in info.output, info.output
    assert invoke("verify", folder, "--data", "fashion-mnist", "--samples", "600", "--precision", "int8").exit_code == 0
    assert audit_folder(folder).verdicts["int8"].passed  # the same data again, passing: it stands now


def _three_class_folder(root: Path, per_class: int = 4, classes: int = 3) -> Path:
    from PIL import Image

    with np.load(Path(__file__).parents[1] / "pipeline" / "assets" / "fashion_mnist_sample.npz") as z:
        images = z["images"]
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(images[k * per_class + i]).save(root / f"c{k}" / f"{i}.png")
    return root


def test_an_image_folder_is_drawn_across_its_classes(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    data = _three_class_folder(tmp_path / "ten", per_class=10, classes=10)
    r = invoke("verify", folder, "--precision", "fp32", "--data", f"imagefolder:{data}", "--samples", "24")
    out = " ".join(r.output.split())
    assert r.exit_code == 0 and "20 of 100 images drawn seeded across 10 classes, 2-2 each" in out, r.output
    report = json.loads((folder / "reports" / "cpu" / "verify.json").read_text())
    assert report["labelled"] and report["samples"] == 24 and "across 10 classes" in report["drawn"]


def test_a_report_that_cannot_be_written_still_shows_the_verdict(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    shutil.rmtree(folder / "reports" / "cpu", ignore_errors=True)
    (folder / "reports" / "cpu").write_text("a file where the report folder goes")  # the report cannot be written
    r = invoke("verify", folder, "--precision", "fp32", "--samples", "32")
    assert r.exit_code == 2, r.output
    out = "".join(r.output.split())
    assert "fp32" in out and "PASS" in out and "NOTWRITTEN" in out
    assert f"{folder / 'reports' / 'cpu' / 'verify.json'}couldnotbewritten" in out
    assert not (folder / VERDICTS).exists()


def _damaged(real: str) -> dict[str, str]:
    d = json.loads(real)
    d["verdicts"][0]["passed"] = "no"
    return {"truncated": real[: len(real) // 2], "not json": "verdicts: FAIL int8\n",
            "another schema": json.dumps({"version": 7, "records": d["verdicts"]}),
            "a field of the wrong type": json.dumps(d)}


@pytest.mark.parametrize("damage", ["truncated", "not json", "another schema", "a field of the wrong type"])
def test_a_damaged_verdict_record_is_refused(tmp_path: Path, damage: str) -> None:
    write_verdicts(tmp_path, [_v("int8", False), _v("fp16", True)])
    path = tmp_path / VERDICTS
    path.write_text(_damaged(path.read_text())[damage])
    with pytest.raises(BadInput, match=f"{path} cannot be read .*mv {path} {path}.damaged"):
        read_verdicts(tmp_path)


def test_commands_refuse_a_damaged_record_and_keep_it(default_folder: Path, tmp_path: Path) -> None:
    """The record holds every failure of the folder: a command that cannot read it exits 2 naming the file and the
    way out, and never rewrites it (reading it as empty would clear a FAIL)."""
    folder = copy_folder(default_folder, tmp_path / "f")
    assert invoke("verify", folder, "--precision", "int8", "--samples", "32").exit_code in (0, 1)
    path = folder / VERDICTS
    path.write_text(_damaged(path.read_text())["truncated"])
    before = path.read_bytes()
    for args in (("verify", folder, "--precision", "fp32", "--samples", "32"), ("triton", folder),
                 ("bench", folder, "--precision", "fp32", "--batch", "1", "--iters", "2")):
        r = invoke(*args)
        assert r.exit_code == 2, (args, r.output)
        one = " ".join(r.output.split())
        assert "verdicts.json cannot be read" in one and ".damaged" in one, one
        assert path.read_bytes() == before, args
    assert not (folder / "triton").exists()


_RECORD_MANY = """
import pickle, sys
from pipeline.check.records import record_verify
report = pickle.loads(open(sys.argv[1], "rb").read())
for _ in range(int(sys.argv[2])):
    record_verify(report)
"""


def test_writers_at_once_lose_no_record(default_folder: Path, tmp_path: Path) -> None:
    """Verifies and a fleet's landing write the record under the folder's lock: two processes writing at once keep
    every record of both."""
    import pickle
    import subprocess
    import sys

    from pipeline.check.verify import VerifyOptions, verify

    folder = copy_folder(default_folder, tmp_path / "f")
    report = verify(VerifyOptions(folder=folder, samples=32, precisions=("fp32",)), record=False)
    (tmp_path / "report.pkl").write_bytes(pickle.dumps(report))
    n = 25
    procs = [subprocess.Popen([sys.executable, "-c", _RECORD_MANY, str(tmp_path / "report.pkl"), str(n)],
                              cwd=Path(__file__).resolve().parents[1]) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    per_report = len(report.verdicts(read_manifest(folder)))
    assert per_report >= 1 and len(read_verdicts(folder)) == 2 * n * per_report
