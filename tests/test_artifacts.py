"""The typed manifest: its JSON both ways, folders written as version 1 (resnetx at 6530291), the folder audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.folder.audit import audit_folder
from pipeline.folder.manifest import (
    Calibration,
    EngineEntry,
    GraphEntry,
    Manifest,
    SearchRecord,
    Trial,
    read_manifest,
    write_manifest,
)
from pipeline.precisions import Precision
from resnetx.errors import BadInput
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
    """Manifests written by resnetx at 6530291 (one untyped 'artifacts' dict) read as typed entries."""
    d = json.loads((V1_MANIFESTS / f"{name}.json").read_text())
    assert d["version"] == 1
    m = Manifest.from_dict(d)
    by_file = {a["file"]: a for a in d["artifacts"].values()}
    assert {e.file for e in m.entries()} == set(by_file)  # engines are named by their target now, files stay
    for e in m.entries():
        old = by_file[e.file]
        assert (e.file, e.sha256, e.precision.value, e.size_bytes) == (old["file"], old["sha256"], old["precision"],
                                                                       old["size_bytes"])
    cal = m.calibration
    assert cal is not None and cal.samples == d["calibration"]["samples"] and cal.recipe == d["calibration"]["recipe"]
    if name == "rtx_engines":
        e = m.engines["int8.rtx-sm80-sm86-sm89-sm120"]
        assert isinstance(e, EngineEntry) and e.profile == (1, 32, 256) and e.network.int8_compute_layers == 20
        assert e.seconds == d["artifacts"]["int8.rtx"]["build_seconds"] and e.target.gpus() == ["8.0", "8.6", "8.9",
                                                                                               "12.0"]
        assert m.graphs[Precision.int8].auto_fp32 == ("conv1", "fc") and m.graphs[Precision.fp32].exporter == "dynamo"
    else:
        assert {g.static_batch for g in m.graphs.values()} == {4} and cal.recipe == "cpu"
    assert Manifest.from_dict(m.to_dict()).to_dict() == m.to_dict()  # and writes as v2


def test_a_folder_exported_by_6530291_still_verifies_benches_and_audits(tmp_path: Path) -> None:
    from pipeline.check.bench import BenchOptions, bench
    from pipeline.check.verify import VerifyOptions, verify

    folder = copy_folder(V1_FOLDER, tmp_path / "v1")
    assert json.loads((folder / "manifest.json").read_text())["version"] == 1
    audit = audit_folder(folder)
    assert audit.intact and audit.references == ["reference.sample.512.npz"]
    assert {n: v.passed for n, v in audit.verdicts.items()} == {"fp32": True, "int8": True}  # its last verify.json
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


def test_written_manifests_are_version_4_with_graphs_and_engines(default_folder: Path, tmp_path: Path) -> None:
    m = read_manifest(default_folder)
    (tmp_path / "f").mkdir()
    write_manifest(tmp_path / "f", m)
    d = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert d["version"] == 4 and list(d["graphs"]) == ["fp32", "fp16", "int8"] and d["engines"] == {}
    assert d["graphs"]["int8"]["calibration"]["method"] == "percentile" and "artifacts" not in d


V2_FOLDER = Path(__file__).with_name("data") / "v2_rtx"  # exported by resnetx at 86ba77c: manifest version 2


def test_a_folder_written_as_version_2_reads_verifies_and_takes_engines_for_another_target(tmp_path: Path) -> None:
    """Engines of version 2 were named by precision and flavour; read as version 3 they are named by their target,
    keep their files, and an --engines-only build for another target adds beside them instead of replacing."""
    from pipeline.check.verify import VerifyOptions, verify
    from pipeline.make.export import ExportOptions, export
    from tests.conftest import HAS_RTX

    folder = copy_folder(V2_FOLDER, tmp_path / "v2")
    raw = json.loads((folder / "manifest.json").read_text())
    assert raw["version"] == 2 and list(raw["engines"]) == ["fp16.rtx"]
    m = read_manifest(folder)
    e = m.engines["fp16.rtx-sm89"]
    assert e.file == "model.fp16.rtx.engine" and e.compute_capabilities == ("SM89",) and e.target.gpus() == ["8.9"]
    audit = audit_folder(folder)
    assert audit.intact and audit.stale == [] and {n: v.passed for n, v in audit.verdicts.items()} == {
        "fp32": True, "fp16": True}  # its last reports/verify.json, about this export
    assert verify(VerifyOptions(folder=folder, samples=32)).passed
    if not HAS_RTX:
        return
    export(ExportOptions(out=folder, engines_only=True, engine="rtx", precisions=(Precision.fp16,),
                         rtx_compute_capabilities=("SM86",)))
    after = read_manifest(folder)
    assert set(after.engines) == {"fp16.rtx-sm89", "fp16.rtx-sm86"} and audit_folder(folder).intact
    assert json.loads((folder / "manifest.json").read_text())["version"] == 4
    assert after.engines["fp16.rtx-sm86"].file == "model.fp16.rtx-sm86.engine"


def test_a_search_says_its_seconds_in_tenths_below_ten() -> None:
    """A search that plain int8 ends takes a fraction of a second: "0 s" would read as not run."""

    def record(seconds: float) -> SearchRecord:
        return SearchRecord(0.5, "x", 100, 90.0, (Trial("percentile", (), "fp32", 90.0, 0.0, seconds),), 0, True,
                            seconds)

    assert [record(s).took for s in (0.34, 9.94, 10.2, 126.4)] == ["0.3 s", "9.9 s", "10 s", "126 s"]
