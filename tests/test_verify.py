"""verify: per-precision verdicts, sha checks, NaN, tolerance options, localisation of a broken layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.check.records import write_verify_json
from pipeline.check.verify import VerifyOptions, compare, judge, verify
from pipeline.folder.manifest import read_manifest
from pipeline.precisions import Precision, Tolerance
from tests.conftest import copy_folder, tamper_weight


def test_clean_export_passes_each_precision(default_folder: Path, tmp_path: Path) -> None:
    default_folder = copy_folder(default_folder, tmp_path / "f")  # the session's folder stays unverified
    r = verify(VerifyOptions(folder=default_folder, samples=300), record=False)
    assert r.passed, [(x.artifact, x.failures) for x in r.rows]
    assert write_verify_json(r) == default_folder / "reports" / "cpu" / "verify.json"
    rows = {x.artifact: x for x in r.rows}
    assert set(rows) == {"fp32", "fp16", "int8"}
    assert rows["fp32"].metrics.rel_l2 < 1e-5 and rows["fp32"].metrics.top1_agreement == 1.0
    assert 1e-5 < rows["fp16"].metrics.rel_l2 < 1e-2
    assert rows["int8"].metrics.top1 is not None and rows["int8"].metrics.samples == 300
    assert rows["int8"].tolerance == Tolerance(top1_agreement=0.97, accuracy_drop=0.5)
    report = json.loads((default_folder / "reports" / "cpu" / "verify.json").read_text())
    keys = {"runtime", "precision", "device", "metrics", "tolerance", "passed"}
    assert report["passed"] and keys <= set(report["rows"][0])
    assert report["system"]["versions"]["onnxruntime"] and report["system"]["cores"]  # where the verdict was made
    # calibrated on the bundled sample and measured on it: the report says the int8 accuracy is optimistic
    assert any("calibrated on images drawn from sample" in n for n in r.notes)


def test_calibration_overlap_only_without_a_train_split() -> None:
    from pipeline.model.data import calibration_overlap_note

    assert calibration_overlap_note("fashion-mnist", "fashion-mnist") is None  # train split vs test split: disjoint
    assert calibration_overlap_note("fashion-mnist", "sample") is None
    assert calibration_overlap_note(None, "sample") is None
    assert "optimistic" in calibration_overlap_note("imagefolder:/d", "imagefolder:/d")


def test_perturbed_conv_fails_and_is_localised(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    tamper_weight(folder, "layer2.1.conv1.weight", lambda w: w.__imul__(-0.5))
    r = verify(VerifyOptions(folder=folder, samples=64, precisions=("fp32",)))
    assert not r.passed
    row = r.rows[0]
    assert any("rel. L2" in f for f in row.failures)
    assert row.localization.first_divergent_layer == "layer2.1.conv1"
    assert row.localization.module == "layer2.1.conv1"
    depth = [x.layer for x in row.localization.by_depth]
    assert depth.index("layer2.1.conv1") > depth.index("layer1.0.conv1")  # topological order


def test_edited_file_fails_the_audit_before_anything_runs(default_folder: Path, tmp_path: Path) -> None:
    from resnetx.errors import CheckFailed

    folder = copy_folder(default_folder, tmp_path / "f")
    tamper_weight(folder, "fc.bias", lambda w: w.__iadd__(1e-3), rehash=False)
    with open(folder / "model.fp16.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckFailed, match=r"model.fp32.onnx \(changed\), model.fp16.onnx \(changed\)") as e:
        verify(VerifyOptions(folder=folder, samples=32, precisions=("int8",)))  # int8 alone is intact: all are read
    assert e.value.exit_code == 1


def test_a_truncated_engine_fails_verify_on_a_machine_that_cannot_run_it(rtx_folder: Path, tmp_path: Path) -> None:
    """Engines cannot run without a GPU, yet their files are audited: a truncated one fails, exit 1."""
    from tests.test_cli import invoke

    folder = copy_folder(rtx_folder, tmp_path / "f")
    engine = folder / "model.int8.rtx-sm80-sm86-sm89-sm120.engine"
    engine.write_bytes(engine.read_bytes()[:1000])
    before = sorted(p.name for p in (folder / "reports").rglob("*"))
    r = invoke("verify", folder, "--samples", "32")
    assert r.exit_code == 1 and "model.int8.rtx-sm80-sm86-sm89-sm120.engine (changed)" in r.output, r.output
    assert sorted(p.name for p in (folder / "reports").rglob("*")) == before  # nothing ran, nothing recorded


def test_nan_weight_fails(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    tamper_weight(folder, "layer3.0.conv2.weight", lambda w: w.__setitem__((0, 0, 0, 0), np.nan))
    r = verify(VerifyOptions(folder=folder, samples=32, precisions=("fp32",)))
    assert not r.passed and "NaN/Inf" in r.rows[0].failures[0]
    assert r.rows[0].metrics.nonfinite > 0


def test_tolerance_options_change_verdict(default_folder: Path) -> None:
    strict = verify(VerifyOptions(folder=default_folder, samples=64, precisions=("fp16",), rel_l2=1e-7), record=False)
    assert not strict.passed and "rel. L2" in strict.rows[0].failures[0]
    loose = verify(VerifyOptions(folder=default_folder, samples=64, precisions=("fp16",), rel_l2=1.0), record=False)
    assert loose.passed
    never = verify(VerifyOptions(folder=default_folder, samples=64, precisions=("int8",), top1_agreement=1.0,
                                 accuracy_drop=-100.0), record=False)
    assert not never.passed


def test_localize_on_request(default_folder: Path) -> None:
    r = verify(VerifyOptions(folder=default_folder, samples=32, precisions=("int8",), localize=True), record=False)
    loc = r.rows[0].localization
    assert loc.baseline == "model.fp32.onnx, cross-layer equalized as int8 was" and loc.largest_jump_layer
    errs = [x.rel_l2 for x in loc.by_depth]
    assert all(0 <= e < 1 for e in errs) and max(errs) > 1e-3
    conv1 = next(x for x in loc.by_depth if x.layer == "conv1")
    assert conv1.rel_l2 < 1e-5  # the stem stays float in the default int8 recipe
    assert r.rows[0].passed and loc.first_divergent_layer is None and loc.suggestion is None  # nothing to try


def test_localisation_compares_int8_with_the_equalized_fp32_graph(default_folder: Path) -> None:
    """Cross-layer equalization rescales each block's first conv: compared with the plain fp32 graph, those convs
    read 0.1-0.4 rel. L2 before any rounding (and one of them was offered as the layer to keep)."""
    from pipeline.check.localize import _errors, layer_outputs
    from pipeline.check.reference import verify_inputs

    r = verify(VerifyOptions(folder=default_folder, samples=32, precisions=("int8",), localize=True), record=False)
    by = {x.layer: x.rel_l2 for x in r.rows[0].localization.by_depth}
    pairs = [(f"layer{s}.{b}.conv1", f"layer{s}.{b}.conv2") for s in (1, 2, 3) for b in (0, 1, 2)]
    assert all(by[c1] < 3 * by[c2] for c1, c2 in pairs), by  # the first conv errs like its neighbour
    info = read_manifest(default_folder).model.info
    x = verify_inputs("sample", None, 12, info.preprocess, 10).head(8)
    plain = {e.layer: e.rel_l2 for e in _errors(layer_outputs((default_folder / "model.fp32.onnx").read_bytes(), x),
                                                layer_outputs((default_folder / "model.int8.onnx").read_bytes(), x))}
    assert any(plain[c1] > 3 * plain[c2] for c1, c2 in pairs)  # what the unequalized baseline showed


@pytest.mark.parametrize("hostile", ["blocks", "residual"])
def test_the_try_line_run_as_printed_brings_a_failing_int8_graph_within_its_bar(hostile: str, tmp_path: Path) -> None:
    """Two int8-hostile ResNet-20s that plain int8 fails (agreement and accuracy): loud channels inside three blocks
    (exported without equalization), where keeping the first-ranked layers in float is enough, and in the first
    residual stream, where it is not and the accuracy search is the tool. Verify prints one `try:` line (the
    model, folder and calibration it was made with) and what was measured before printing it; run as printed, the
    int8 graph passes verify, and fp32 and fp16 stay as they were."""
    import shlex

    from pipeline.model.zoo import load_model, save_checkpoint
    from pipeline.sources import ModelSpec
    from tests.int8_hostile import make_int8_hostile, make_residual_hostile
    from tests.test_cli import invoke

    model, info = load_model(ModelSpec("default"))
    if hostile == "blocks":
        make_int8_hostile(model, channels=3, factor=100.0)
    else:
        make_residual_hostile(model, channels=2, factor=30.0)
    ckpt = tmp_path / "hostile.pt"
    save_checkpoint(ckpt, model, {"arch": "resnet20", "num_classes": 10, "in_chans": 1, "image_size": 28,
                                  "preprocess": info.preprocess.to_dict(), "class_names": list(info.class_names)})
    folder = tmp_path / "f"
    extra = ["--no-int8-equalize"] if hostile == "blocks" else []
    r = invoke("export", "--model", "resnet20", "--weights", ckpt, "--precision", "fp32,fp16,int8", "--out", folder,
               "--exporter", "legacy", "--calib-samples", "128", *extra)
    assert r.exit_code == 0, r.output
    before = read_manifest(folder).graphs
    first_run = invoke("verify", folder)
    shown = first_run.output
    assert first_run.exit_code == 1 and "FAIL int8" in shown, shown
    tried = [line for line in shown.splitlines() if line.startswith("try: ")]
    assert len(tried) == 1, shown  # one line, never wrapped, however long
    cmd = tried[0].removeprefix("try: ")
    loc = next(r for r in json.loads((folder / "reports" / "cpu" / "verify.json").read_text())["rows"]
               if r["artifact"] == "int8")["localization"]
    prefix = (f"resnetx export --model resnet20 --weights {ckpt.resolve()} --out {folder} --precision int8 "
              "--exporter legacy --calib-data sample --calib-samples 128 --calib-method percentile --int8-recipe "
              f"tensorrt{' --no-int8-equalize' if extra else ''}")
    if hostile == "blocks":
        assert "measured before printing: keeping " in loc["suggestion_measured"], loc["suggestion_measured"]
        kept = loc["suggestion_measured"].split("keeping ")[1].split(" out of int8")[0].split(", ")
        assert kept == loc["revert_first"][: len(kept)]  # the fewest of the first-ranked layers that pass
        assert cmd == f"{prefix} --keep-fp32 {','.join(sorted(kept))}", cmd
    else:
        assert "the accuracy search (--max-accuracy-drop 0.5)" in loc["suggestion_measured"]
        assert cmd == f"{prefix} --max-accuracy-drop 0.5", cmd
    r = invoke(*shlex.split(cmd)[1:])
    assert r.exit_code == 0, r.output
    after = read_manifest(folder).graphs
    int8, fp32, fp16 = Precision.int8, Precision.fp32, Precision.fp16
    assert after[int8].sha256 != before[int8].sha256
    assert {k: after[k].sha256 for k in (fp32, fp16)} == {k: before[k].sha256 for k in (fp32, fp16)}
    again = invoke("verify", folder)  # the verdict it yields, on the inputs it was measured on
    assert again.exit_code == 0 and "PASS" in again.output, again.output


def test_torch_runtime_candidates(default_folder: Path) -> None:
    r = verify(VerifyOptions(folder=default_folder, samples=32, runtimes=("torch",), precisions=("fp32",)),
               record=False)
    assert r.passed and r.rows[0].runtime == "torch-cpu-fp32" and r.rows[0].metrics.rel_l2 < 1e-6


def test_metrics_and_judge_units() -> None:
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], np.float32)
    got = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], np.float32)
    m = compare(ref, got, labels=np.array([2, 0]))
    assert m.top1_agreement == 0.5 and m.ref_top1 == 100.0 and m.top1 == 50.0 and m.accuracy_drop == 50.0
    assert judge(m, Tolerance(top1_agreement=0.5, accuracy_drop=50.0)) == []
    assert len(judge(m, Tolerance(rel_l2=0.1, top1_agreement=0.6, accuracy_drop=1.0))) == 3
    nan = compare(ref, np.full_like(ref, np.nan))
    assert nan.nonfinite == 6 and judge(nan, Tolerance()) == ["6 NaN/Inf output value(s)"]


def test_reference_logits_are_cached(default_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.check.reference as r
    import pipeline.sources.pytorch as sources

    folder = copy_folder(default_folder, tmp_path / "f")
    (folder / r.reference_file("sample", r.DEFAULT_SAMPLES)).unlink()  # export's, which holds these 40 inputs too
    first = verify(VerifyOptions(folder=folder, samples=40, precisions=("fp32",)))
    assert (folder / "reports" / "reference.sample.40.npz").is_file() and not first.reference_stored

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("reference recomputed although weights and inputs are unchanged")

    monkeypatch.setattr(sources, "reference_logits", boom)
    again = verify(VerifyOptions(folder=folder, samples=40, precisions=("fp32",)))
    assert again.reference_stored and again.rows[0].metrics.rel_l2 == first.rows[0].metrics.rel_l2
    with pytest.raises(AssertionError, match="recomputed"):  # other inputs: a new reference
        verify(VerifyOptions(folder=folder, samples=41, precisions=("fp32",)))
    monkeypatch.undo()
    other = copy_folder(default_folder, tmp_path / "g")
    (other / r.reference_file("sample", r.DEFAULT_SAMPLES)).unlink()
    fresh = verify(VerifyOptions(folder=other, samples=20, precisions=("fp32",)))
    assert not fresh.reference_stored
    monkeypatch.setattr(sources, "reference_logits", boom)
    subset = verify(VerifyOptions(folder=folder, samples=20, precisions=("fp32",)))  # its 20 inputs are among the 40
    got, want = subset.rows[0].metrics, fresh.rows[0].metrics  # the same inputs' logits (batching may move last bits)
    assert subset.reference_stored and got.samples == want.samples == 20 and got.ref_top1 == want.ref_top1
    assert got.max_abs == pytest.approx(want.max_abs, abs=1e-5) and got.top1_agreement == want.top1_agreement


def test_export_stores_the_reference_that_default_verify_uses(default_folder: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.check.reference as r
    import pipeline.sources.pytorch as sources
    folder = copy_folder(default_folder, tmp_path / "f")
    stored = folder / r.reference_file("sample", r.DEFAULT_SAMPLES)
    ref = r.Reference.of(read_manifest(folder))
    model, info = ref.model, ref.info
    inputs = r.verify_inputs("sample", None, r.DEFAULT_SAMPLES, info.preprocess, info.num_classes)
    with np.load(stored) as z:  # exactly what PyTorch gives on verify's default inputs
        np.testing.assert_array_equal(z["logits"], r.reference_logits(model, inputs.head(len(inputs))))

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("reference recomputed although export stored it")

    monkeypatch.setattr(sources, "reference_logits", boom)
    report = verify(VerifyOptions(folder=folder, precisions=("fp32",)))
    assert report.reference_stored and report.passed and report.samples == r.DEFAULT_SAMPLES


def test_a_corrupt_stored_reference_is_recomputed(default_folder: Path, tmp_path: Path) -> None:
    import pipeline.check.reference as r

    folder = copy_folder(default_folder, tmp_path / "f")
    (folder / r.reference_file("sample", r.DEFAULT_SAMPLES)).unlink()  # export's, which holds these 64 inputs too
    (folder / r.reference_file("sample", 64)).write_bytes(b"PK\x03\x04 truncated")
    report = verify(VerifyOptions(folder=folder, samples=64, precisions=("fp32",)))
    assert not report.reference_stored and report.passed
    again = verify(VerifyOptions(folder=folder, samples=64, precisions=("fp32",)))
    assert again.reference_stored and again.rows[0].metrics.max_abs == report.rows[0].metrics.max_abs


def test_verify_inputs_counts_and_extremes() -> None:
    from pipeline.check.reference import verify_inputs
    from pipeline.model.data import Preprocess

    pre = Preprocess(28, 28, 1, (0.5,), (0.5,))
    for samples, real, extreme in [(1, 1, 0), (3, 1, 2), (5, 1, 4), (100, 96, 4)]:
        i = verify_inputs("sample", None, samples, pre, 10)
        x = i.head(len(i))
        assert x.shape == i.shape == (real + extreme, 1, 28, 28) and i.n_real == real and i.labels.shape == (real,)
        assert np.isfinite(x).all() and x.dtype == np.float32
    assert not x[96].any() and x[99] == pytest.approx(5 * x[0])  # zeros first, the 5x image last
    assert np.array_equal(np.concatenate(list(i.chunks(7))), x)  # read a chunk at a time: the same bytes


def test_a_folder_without_its_checkpoint_verifies_against_stored_logits(tmp_path: Path) -> None:
    """A folder copied to a machine that lacks the checkpoint: ONNX parity against the logits export
    stored; the torch runtime and other inputs say what is missing."""
    import torch

    from pipeline.check.bench import BenchOptions, bench
    from pipeline.make.export import ExportOptions, export
    from pipeline.model.zoo import build_model
    from pipeline.sources import ModelSpec
    from resnetx.errors import BadInput

    ckpt = tmp_path / "w.pth"
    torch.manual_seed(5)
    torch.save(build_model("resnet20", num_classes=10, in_chans=3).state_dict(), ckpt)
    folder = tmp_path / "f"
    export(ExportOptions(model=ModelSpec("resnet20", weights=ckpt), out=folder, exporter="legacy"))
    ckpt.unlink()
    report = verify(VerifyOptions(folder=folder))
    assert report.passed and report.reference_stored and report.rows[0].metrics.rel_l2 < 1e-5
    assert "not on this machine" in report.notes[0]
    torch_row = verify(VerifyOptions(folder=folder, runtimes=("torch",), precisions=("fp32",))).rows[0]
    assert torch_row.skipped and "not on this machine" in torch_row.skipped
    assert verify(VerifyOptions(folder=folder, samples=64)).reference_stored  # 64 of the 512 export stored
    with pytest.raises(BadInput, match="no stored reference logits match"):
        verify(VerifyOptions(folder=folder, samples=600))
    rows = bench(BenchOptions(folder=folder, batches=(2,), iters=3, warmup=0, warmup_seconds=0.0, min_seconds=0.0,
                              rounds=1, accuracy=False)).rows
    assert {r.backend: bool(r.latency_ms) for r in rows} == {"torch": False, "ort": True}
    assert "not on this machine" in next(r.error for r in rows if r.backend == "torch")
    torch.manual_seed(6)  # other weights at the recorded path: never a silent new reference
    torch.save(build_model("resnet20", num_classes=10, in_chans=3).state_dict(), ckpt)
    with pytest.raises(BadInput, match="differ from the ones exported"):
        verify(VerifyOptions(folder=folder))


def test_tables_show_messages_literally() -> None:
    """A skip reason naming a pip extra (resnetx[gpu]) must not be eaten as rich markup."""
    from rich.console import Console

    from pipeline.check.verify import VerifyReport, VerifyRow
    from pipeline.cli.tables import verify_reasons, verify_table

    reason = "no CUDAExecutionProvider; pip install 'resnetx[gpu]' [bold]"
    rows = [VerifyRow("fp16", "ort-cuda-fp16", "fp16", "cuda", False, skipped=reason),
            VerifyRow("fp32", "ort-cpu-fp32", "fp32", "cpu", False, failures=["file [model.fp32.onnx] changed"])]
    report = VerifyReport(Path("dir[x]"), rows, "sample", 16)
    console = Console(width=400, record=True, force_terminal=False)
    console.print(verify_table(report))
    for line in verify_reasons(report):
        console.print(line)
    text = console.export_text()
    assert "'resnetx[gpu]' [bold]" in text and "file [model.fp32.onnx] changed" in text


@pytest.mark.parametrize("width", [80, 120, 200])
def test_the_table_fits_the_terminal_without_cutting_a_number(default_folder: Path, width: int) -> None:
    from rich.console import Console

    from pipeline.cli.tables import verify_table

    r = verify(VerifyOptions(folder=default_folder, samples=16), record=False)
    console = Console(width=width, record=True, force_terminal=False)
    console.print(verify_table(r, width=width))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width, text
    assert "ort-cpu-int8" in text and "pass" in text and "delta" in text
    assert ("mean abs" in text) == (width >= 180) and "rel L2" in text


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_verify_on_cuda_against_the_cpu_reference(default_folder: Path) -> None:
    import onnxruntime as ort

    runtimes = ("torch", "ort") if "CUDAExecutionProvider" in ort.get_available_providers() else ("torch",)
    r = verify(VerifyOptions(folder=default_folder, device="cuda", runtimes=runtimes, samples=128), record=False)
    ran = [x for x in r.rows if x.skipped is None]
    assert {("torch", "fp32"), ("torch", "fp16")} <= {(x.runtime.split("-")[0], x.precision) for x in ran}, r.rows
    assert r.passed, [(x.runtime, x.failures) for x in r.rows]
    assert all(x.device == "cuda" for x in ran)


def test_an_artifact_for_another_gpu_is_skipped_not_fatal(default_folder: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine built for other GPUs (TensorRT-RTX on an H100) must not stop the other rows."""
    import pipeline.check.candidates
    from resnetx.errors import IncompatibleArtifact

    folder = copy_folder(default_folder, tmp_path / "f")
    real = pipeline.check.candidates.open_runtime

    def picky(backend: str, path: object, **kw: object) -> object:
        if kw.get("precision") == "fp16":
            raise IncompatibleArtifact("model.fp16.x targets compute capabilities 8.6; this GPU is 9.0; rebuild it")
        return real(backend, path, **kw)

    monkeypatch.setattr(pipeline.check.candidates, "open_runtime", picky)
    r = verify(VerifyOptions(folder=folder, samples=64, precisions=("fp32", "fp16")))
    rows = {x.artifact: x for x in r.rows}
    assert "this GPU is 9.0" in rows["fp16"].skipped and rows["fp32"].passed and r.passed


def test_nothing_to_verify_says_what_the_folder_holds(small_folder: Path) -> None:
    from resnetx.errors import BadInput

    with pytest.raises(BadInput, match=r"it holds fp32 \(ort, ort-trt, openvino\); export more"):
        verify(VerifyOptions(folder=small_folder, precisions=("int8",)))


def test_notes_say_when_the_data_gives_less_than_asked(default_folder: Path, tmp_path: Path) -> None:
    """A folder of 6 images in 2 classes, for a 10-class model: fewer inputs than --samples and no accuracy,
    both said in a note rather than left to be read off the table's title and its n/a."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            img = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / "imgs" / cls / f"{i}.png")
    r = verify(VerifyOptions(folder=copy_folder(default_folder, tmp_path / "f"),
                             data=f"imagefolder:{tmp_path / 'imgs'}", samples=32, precisions=("fp32",)))
    assert r.passed and r.samples == 10
    assert any("has 6 image(s): 10 inputs (6 + 4 extreme), not the 32 --samples" in n for n in r.notes), r.notes
    assert any("accuracy n/a" in n and "has 2 classes, the model 10" in n for n in r.notes), r.notes
    full = verify(VerifyOptions(folder=default_folder, samples=32, precisions=("fp32",)), record=False)
    assert not any("--samples" in n or "accuracy n/a" in n for n in full.notes), full.notes
