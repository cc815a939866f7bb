"""The step runner: cached or built by content key, force, sources, its own lookups, kept entries."""

from __future__ import annotations

from pathlib import Path

from pipeline.folder.manifest import Entry, GraphEntry, Manifest, ModelSection
from pipeline.make.steps import FolderWriter, Step, StepEvent, keep_earlier, run_steps
from pipeline.model.zoo import ModelInfo
from pipeline.precisions import Precision
from pipeline.sources import ModelSpec
from resnetx.files import file_sha256


def _writer(folder: Path, made: list[str]):  # noqa: ANN202
    """A step making the graph of a precision ("a" is fp32, "b" fp16): `name.bin` holding `content` and its
    sources' hashes; each build is logged in `made`."""

    def step(name: str, content: bytes, sources: tuple[str, ...] = ()) -> Step:
        precision = {"a": Precision.fp32, "b": Precision.fp16}[name]
        sources = tuple({"a": "fp32"}[s] for s in sources)

        def make(done: dict[str, Entry]) -> Entry:
            made.append(name)
            path = folder / f"{name}.bin"
            path.write_bytes(content + b"".join(done[s].sha256.encode() for s in sources))
            return GraphEntry(precision, path.name, file_sha256(path), path.stat().st_size, 0.5)

        return Step(precision.value, name, {"content": content.decode()}, make, sources=sources,
                    describe=lambda e: "new")

    return step


def _manifest(entries: dict[str, Entry] | list[Entry]) -> Manifest:
    info = ModelInfo.from_dict({"arch": "resnet20", "family": "cifar", "num_classes": 10, "in_chans": 1,
                                "image_size": 28, "preprocess": {"image_size": 28, "resize": 28, "channels": 1,
                                                                 "mean": [0.5], "std": [0.5]}})
    listed = list(entries.values()) if isinstance(entries, dict) else entries
    return Manifest.of(ModelSection(info, ModelSpec("resnet20"), "0" * 64), listed, {})


def test_unchanged_steps_are_cached_and_a_changed_source_rebuilds_what_reads_it(tmp_path: Path) -> None:
    built: list[str] = []
    step = _writer(tmp_path, built)
    events: list[StepEvent] = []
    first = run_steps([step("a", b"1"), step("b", b"2", ("a",))], FolderWriter(tmp_path, None), on_step=events.append)
    assert built == ["a", "b"] and [(e.step, e.status, e.note) for e in events] == [("a", "built", "new"),
                                                                                    ("b", "built", "new")]
    assert all(e.key for e in first.values())
    built.clear()
    again = run_steps([step("a", b"1"), step("b", b"2", ("a",))], FolderWriter(tmp_path, _manifest(first)))
    assert built == [] and again == first  # same inputs, same sources, files intact: nothing rebuilt
    changed = run_steps([step("a", b"X"), step("b", b"2", ("a",))], FolderWriter(tmp_path, _manifest(first)))
    assert built == ["a", "b"] and changed["fp16"].key != first["fp16"].key  # b reads a: a new a, a new b
    built.clear()
    (tmp_path / "b.bin").write_bytes(b"edited")  # a file that no longer matches its entry is not reused
    run_steps([step("a", b"X"), step("b", b"2", ("a",))], FolderWriter(tmp_path, _manifest(changed)))
    assert built == ["b"]
    built.clear()
    run_steps([step("a", b"X")], FolderWriter(tmp_path, _manifest(changed)), force=True)
    assert built == ["a"]


def test_the_first_build_removes_the_manifest_unless_asked_to_keep_it(tmp_path: Path) -> None:
    built: list[str] = []
    step = _writer(tmp_path, built)
    (tmp_path / "manifest.json").write_text("{}")
    run_steps([step("a", b"1")], FolderWriter(tmp_path, None, keep_manifest=True))
    assert (tmp_path / "manifest.json").exists()
    seen: list[list[str]] = []
    run_steps([step("a", b"2"), step("b", b"3")], FolderWriter(tmp_path, None),
              on_built=lambda made: seen.append(sorted(made)))
    assert not (tmp_path / "manifest.json").exists() and seen == [["fp32"], ["fp16", "fp32"]]


def test_a_step_with_its_own_lookup_is_not_built_when_it_finds_its_file(tmp_path: Path) -> None:
    built: list[str] = []
    stored = GraphEntry(Precision.fp32, "ref.npz", "f" * 64, 3)
    found = Step("reference", "reference", {}, lambda made: built.append("ref") or stored, lookup=lambda: stored)
    missing = Step("reference", "reference", {}, lambda made: built.append("ref") or stored, lookup=lambda: None)
    assert run_steps([found], FolderWriter(tmp_path, None))["reference"] is stored and built == []
    run_steps([missing], FolderWriter(tmp_path, None))
    assert built == ["ref"]


def test_an_earlier_entry_stays_while_it_comes_from_the_same_fp32_graph(tmp_path: Path) -> None:
    for name in ("fp32", "fp16", "int8"):
        (tmp_path / f"{name}.onnx").write_bytes(name.encode())
    fp32 = GraphEntry(Precision.fp32, "fp32.onnx", file_sha256(tmp_path / "fp32.onnx"), 4)
    fp16 = GraphEntry(Precision.fp16, "fp16.onnx", file_sha256(tmp_path / "fp16.onnx"), 4, source_sha256=fp32.sha256)
    int8 = GraphEntry(Precision.int8, "int8.onnx", file_sha256(tmp_path / "int8.onnx"), 4, source_sha256="other")
    old = _manifest([fp32, fp16, int8])
    assert keep_earlier(old, {"fp32": fp32}, tmp_path) == [fp16]  # int8 came from another fp32 graph
    assert keep_earlier(old, {"fp32": fp32, "fp16": fp16}, tmp_path) == []  # made now: nothing to keep
