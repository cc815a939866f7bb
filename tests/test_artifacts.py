"""The typed manifest: its JSON both ways, folders written as version 1 (resnetx at 6530291), the folder audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.artifacts import (
    Calibration,
    EngineEntry,
    GraphEntry,
    Manifest,
    audit_folder,
    read_manifest,
    write_manifest,
)
from pipeline.precisions import Precision
from resnetx.errors import BadInput
from resnetx.flavors import Flavor
from tests.conftest import V1_FOLDER, copy_folder

V1_MANIFESTS = Path(__file__).with_name("data") / "v1_manifests"


def test_a_v2_manifest_reads_back_as_written(default_folder: Path, tmp_path: Path) -> None:
    m = read_manifest(default_folder)
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.to_dict() == m.to_dict() and again.created == m.created
    int8 = again.graphs[Precision.int8]
    assert isinstance(int8, GraphEntry) and isinstance(int8.calibration, Calibration)
    assert int8.auto_fp32 == ("conv1", "fc") and int8.keep_fp32 == () and not int8.quantize_ends


@pytest.mark.parametrize("name", ["rtx_engines", "static_cpu_int8"])
def test_version_1_manifests_read_as_typed_entries(name: str) -> None:
    """Manifests written by resnetx at 6530291 (one untyped 'artifacts' dict) read as v2 entries."""
    d = json.loads((V1_MANIFESTS / f"{name}.json").read_text())
    assert d["version"] == 1
    m = Manifest.from_dict(d)
    assert {e.name for e in m.entries()} == set(d["artifacts"])
    for e in m.entries():
        old = d["artifacts"][e.name]
        assert (e.file, e.sha256, e.precision.value, e.size_bytes) == (old["file"], old["sha256"], old["precision"],
                                                                       old["size_bytes"])
    cal = m.calibration
    assert cal is not None and cal.samples == d["calibration"]["samples"] and cal.recipe == d["calibration"]["recipe"]
    if name == "rtx_engines":
        e = m.engines[(Precision.int8, Flavor.rtx)]
        assert isinstance(e, EngineEntry) and e.profile == (1, 32, 256) and e.network.int8_compute_layers == 20
        assert e.seconds == d["artifacts"]["int8.rtx"]["build_seconds"] and e.target.gpus() == ["8.0", "8.6", "8.9",
                                                                                               "12.0"]
        assert m.graphs[Precision.int8].auto_fp32 == ("conv1", "fc") and m.graphs[Precision.fp32].exporter == "dynamo"
    else:
        assert {g.static_batch for g in m.graphs.values()} == {4} and cal.recipe == "cpu"
    assert Manifest.from_dict(m.to_dict()).to_dict() == m.to_dict()  # and writes as v2


def test_a_folder_exported_by_6530291_still_verifies_benches_and_audits(tmp_path: Path) -> None:
    from pipeline.bench import BenchOptions, bench
    from pipeline.verify import VerifyOptions, verify

    folder = copy_folder(V1_FOLDER, tmp_path / "v1")
    assert json.loads((folder / "manifest.json").read_text())["version"] == 1
    audit = audit_folder(folder)
    assert audit.intact and audit.verify["passed"] and audit.references == ["reference.sample.512.npz"]
    report = verify(VerifyOptions(folder=folder, samples=64))
    assert report.passed and report.reference_stored and {r.artifact for r in report.rows} == {"fp32", "int8"}
    b = bench(BenchOptions(folder=folder, runtimes=("ort",), batches=(1,), iters=2, warmup=0, warmup_seconds=0.0,
                           min_seconds=0.0, rounds=1, accuracy_samples=64))
    assert {r.precision for r in b.rows if r.latency_ms} == {"fp32", "int8"}


def test_missing_and_changed_files_are_audited(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    (folder / "model.fp16.onnx").unlink()
    with open(folder / "model.int8.onnx", "ab") as f:
        f.write(b"\0")
    rows = {r.entry.name: r.status for r in audit_folder(folder).rows}
    assert rows == {"fp32": "ok", "fp16": "missing", "int8": "changed"} and not audit_folder(folder).intact


def test_a_manifest_without_its_folder_or_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist; create it with 'resnetx export --out"):
        read_manifest(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="has no manifest.json; run 'resnetx export --out"):
        read_manifest(tmp_path / "empty")


def test_written_manifests_are_version_2_with_graphs_and_engines(default_folder: Path, tmp_path: Path) -> None:
    m = read_manifest(default_folder)
    (tmp_path / "f").mkdir()
    write_manifest(tmp_path / "f", m)
    d = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert d["version"] == 2 and list(d["graphs"]) == ["fp32", "fp16", "int8"] and d["engines"] == {}
    assert d["graphs"]["int8"]["calibration"]["method"] == "percentile" and "artifacts" not in d
