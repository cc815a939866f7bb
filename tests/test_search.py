"""The int8 accuracy search (export --max-accuracy-drop) on an int8-hostile ResNet-20 and on the default model."""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from exporters.quantize import quantized_layers
from pipeline.cli import app
from pipeline.folder.audit import audit_folder
from pipeline.folder.manifest import read_manifest
from pipeline.make.export import ExportOptions, export
from pipeline.model.data import open_dataset, select_indices
from pipeline.model.zoo import load_model, save_checkpoint
from pipeline.precisions import Precision
from pipeline.sources import ModelSpec
from tests.conftest import copy_folder, needs_rtx
from tests.int8_hostile import HOSTILE_BLOCKS, make_int8_hostile, make_residual_hostile

HOSTILE_CONVS = {f"{b}.conv2" for b in HOSTILE_BLOCKS}
INT8 = (Precision.fp32, Precision.int8)


def _hostile_checkpoint(path: Path, residual: bool = True) -> Path:
    """residual: loud channels in stage 1's residual stream (plain int8 loses ~6 points, and cross-layer
    equalization cannot help: only keeping layers out of int8 can); else loud channels inside three blocks."""
    model, info = load_model(ModelSpec("default"))
    if residual:
        make_residual_hostile(model, channels=2, factor=30.0)
    else:
        make_int8_hostile(model, channels=3, factor=100.0)
    save_checkpoint(path, model, {"arch": "resnet20", "num_classes": 10, "in_chans": 1, "image_size": 28,
                                  "preprocess": info.preprocess.to_dict(), "class_names": list(info.class_names)})
    return path


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """The residual-hostile model exported with --max-accuracy-drop 0.5, judged on the sample images calibration
    did not use."""
    root = tmp_path_factory.mktemp("search")
    ckpt = _hostile_checkpoint(root / "hostile.pt")
    out = root / "f"
    r = export(ExportOptions(model=ModelSpec("resnet20", weights=ckpt), out=out, precisions=INT8, calib_samples=128,
                             max_accuracy_drop=0.5, reference_samples=0))
    return out, ckpt, r


def _held_out_top1(path: Path, info: object, calib_samples: int = 128, fuse_qdq: bool = True) -> float:
    """An independent pass: onnxruntime over the sample images calibration did not draw (fuse_qdq=False: Q/DQ pairs
    run as they are, as the search measures the tensorrt recipe's graphs)."""
    ds = open_dataset("sample")
    idx = np.setdiff1d(np.arange(len(ds)), select_indices(len(ds), calib_samples, 0, shuffle=True))
    x = info.preprocess(ds.raw(idx))
    so = ort.SessionOptions()
    if not fuse_qdq:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(None, {"input": x[i : i + 128]})[0].argmax(1) for i in range(0, len(x), 128)])
    return 100.0 * float((pred == ds.labels[idx]).mean())


def test_the_budget_is_met_with_most_layers_in_int8(searched: tuple) -> None:
    out, _, r = searched
    m = read_manifest(out)
    int8 = m.graphs[Precision.int8]
    s = int8.search
    assert s is not None and s.met and r.missed is None
    assert s.data == "872 sample images not used for calibration" and s.images == 872
    t = s.result  # within budget with one standard error to spare, most candidates only estimated
    assert t.margin > 0.1 and t.drop + t.margin <= 0.5 and "one standard error" in s.margin_rule
    assert s.estimates > len(s.trials)
    measured = [(x.method, x.reverted) for x in s.trials]  # the fallback's fp16 measured first, not after fp32
    assert len(set(measured)) == len(measured) and t.fallback == "fp16" and int8.fallback == "fp16"
    fp32 = _held_out_top1(out / "model.fp32.onnx", r.info)
    q = _held_out_top1(out / "model.int8.onnx", r.info, fuse_qdq=False)
    assert abs((fp32 - q) - s.result.drop) < 0.01 and fp32 - q <= 0.5  # the record says what an independent pass sees
    fused = _held_out_top1(out / "model.int8.onnx", r.info)  # onnxruntime's int8 kernels: a few answers may differ
    assert abs(fused - q) <= 100 * 3 / s.images and fp32 - fused <= 0.5 + 100 * 3 / s.images
    layers = quantized_layers(onnx.load(str(out / "model.int8.onnx")))
    assert len(layers) >= 17  # of 22 conv/gemm: at least three quarters stay int8
    stage1 = {"layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1", "layer2.0.downsample.0",
              "layer1.0/add", "layer1.1/add", "layer1.2/add"}  # what reads or adds up the loud residual stream
    assert set(s.ranking[:4]) <= stage1 and set(s.result.reverted[:3]) <= stage1  # the loud stream's readers first
    plain = s.trials[0]
    assert plain.reverted == () and plain.drop > 2 and plain.method == "percentile"
    assert int8.keep_fp32 == tuple(sorted(s.result.reverted)) and int8.calibration.method == s.result.method


def test_the_record_and_the_remake_line_rebuild_the_same_graph_without_searching(searched: tuple,
                                                                                   tmp_path: Path) -> None:
    out, _, _ = searched
    r = CliRunner().invoke(app, ["info", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "int8 search: budget 0.5 points on 872 sample images not used for calibration; drop" in r.output
    line = next(x for x in r.output.splitlines() if x.startswith("re-make with: ")).removeprefix("re-make with: ")
    assert "--max-accuracy-drop" not in line and "--keep-fp32" in line
    args = shlex.split(line)[1:]
    args[args.index("--out") + 1] = str(tmp_path / "again")
    again = CliRunner().invoke(app, [*args, "--reference-samples", "0"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    first, second = read_manifest(out).graphs, read_manifest(tmp_path / "again").graphs
    assert second[Precision.int8].sha256 == first[Precision.int8].sha256 and second[Precision.int8].search is None


def test_the_default_model_reverts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain int8 by the asked method or by the other one of the search's methods: no layer ranked or reverted.
    Calibration runs on every core but the one fp32's background reference takes."""
    import exporters.calibrate as cal
    import pipeline.make.graphs as graphs

    threads: list[int] = []
    real = cal.calibrate_methods
    monkeypatch.setattr(graphs, "usable_cores", lambda: 6)
    monkeypatch.setattr(cal, "calibrate_methods", lambda *a, **k: threads.append(k["threads"]) or real(*a, **k))
    r = export(ExportOptions(out=tmp_path / "d", precisions=INT8, calib_samples=128, max_accuracy_drop=0.5,
                             reference_samples=0))
    s = r.manifest.graphs[Precision.int8].search
    assert threads == [5]
    assert s.met and len(s.trials) <= 2 and s.result.reverted == () and s.ranking == ()
    assert r.manifest.graphs[Precision.int8].auto_fp32 == ()  # every conv/gemm in int8, the ends too


def test_the_time_cap_keeps_the_best_graph_and_says_it_missed(tmp_path: Path) -> None:
    ckpt = _hostile_checkpoint(tmp_path / "h.pt")
    args = ["export", "--model", "resnet20", "--weights", str(ckpt), "--out", str(tmp_path / "f"), "--precision",
            "int8", "--calib-samples", "128", "--max-accuracy-drop", "0", "--search-seconds", "1",
            "--reference-samples", "0"]
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 1 and "the int8 search missed its budget" in r.output, r.output
    s = read_manifest(tmp_path / "f").graphs[Precision.int8].search
    assert not s.met and len(s.trials) >= 1 and audit_folder(tmp_path / "f").intact  # complete, recorded as missed


@needs_rtx
def test_the_searched_graph_builds_with_its_reverted_layers_in_float(searched: tuple, tmp_path: Path) -> None:
    out, _, _ = searched
    folder = copy_folder(out, tmp_path / "f")
    r = export(ExportOptions(out=folder, engines_only=True, engine="rtx", precisions=(Precision.int8,)))
    e = r.manifest.entry("int8.rtx-sm80-sm86-sm89-sm120")
    s = r.manifest.graphs[Precision.int8].search
    reverted_convs = [n for n in s.result.reverted if "/add" not in n]
    assert r.manifest.graphs[Precision.int8].quantize_ends  # the search starts from every layer in int8, ends too
    assert e.network.int8_compute_layers == 22 - len(reverted_convs)  # only the reverted ones are float
    assert e.network.fp16_compute_layers == (len(reverted_convs) if s.result.fallback == "fp16" else 0)


def test_search_options_are_checked_when_made(tmp_path: Path) -> None:
    from resnetx.errors import BadInput

    with pytest.raises(BadInput, match="add int8 to --precision"):
        ExportOptions(out=tmp_path / "x", max_accuracy_drop=0.5)
    with pytest.raises(BadInput, match="needs --accuracy-data imagefolder:VAL_DIR"):
        ExportOptions(out=tmp_path / "x", precisions=INT8, calib_data=f"imagefolder:{tmp_path}", max_accuracy_drop=0.5)
    with pytest.raises(BadInput, match="needs labelled images"):
        ExportOptions(out=tmp_path / "x", precisions=INT8, calib_data="synthetic", max_accuracy_drop=0.5)
    with pytest.raises(BadInput, match="--fallback fp16 is for the tensorrt recipe"):
        ExportOptions(out=tmp_path / "x", precisions=INT8, int8_recipe="cpu", fallback="fp16")


def test_the_accuracy_images_are_never_calibration_images() -> None:
    from pipeline.make.search import accuracy_set

    _, info = load_model(ModelSpec("default"))
    acc = accuracy_set(ExportOptions(precisions=INT8, calib_samples=512, max_accuracy_drop=1.0), info)
    calib = select_indices(1000, 512, 0, shuffle=True)
    ds = open_dataset("sample")
    calib_x = info.preprocess(ds.raw(calib))
    assert len(acc.y) == 488 and acc.description == "488 sample images not used for calibration"
    held = next(acc.images.chunks(20))
    assert not any(torch.equal(torch.from_numpy(a), torch.from_numpy(b)) for a in held for b in calib_x)


def test_a_validation_folder_larger_than_the_accuracy_samples_is_judged_across_its_classes(tmp_path: Path) -> None:
    """An image folder reads in class order: its first 50 of 60 images would leave the last class out, and a
    search judged there could revert for classes that are not shipped alone."""
    from pipeline.make.search import accuracy_set
    from tests.conftest import class_ordered_folder

    class_ordered_folder(tmp_path)
    _, info = load_model(ModelSpec("default"))
    o = ExportOptions(precisions=INT8, calib_data="fashion-mnist", accuracy_data=f"imagefolder:{tmp_path}",
                      accuracy_samples=50, max_accuracy_drop=1.0)
    acc = accuracy_set(o, info)
    assert np.bincount(acc.y, minlength=10).tolist() == [5] * 10
    assert acc.description.endswith("images, drawn seeded across 10 classes, 5-5 each")
    again = accuracy_set(o, info)  # seeded: the same images every time
    assert np.array_equal(again.images.index, acc.images.index)
    whole = accuracy_set(ExportOptions(precisions=INT8, calib_data="fashion-mnist", max_accuracy_drop=1.0,
                                       accuracy_data=f"imagefolder:{tmp_path}", accuracy_samples=60), info)
    assert len(whole.y) == 60 and "drawn" not in whole.description  # all of it: nothing to draw


def test_equalization_spreads_loud_channels_and_localisation_ranks_what_to_revert(tmp_path: Path) -> None:
    """Loud channels inside three blocks (conv1 -> ReLU -> conv2): cross-layer equalization undoes them for int8
    (the fp32 function is kept); without it, verify's ranking, which the search uses, names those three convs."""
    from pipeline.check.verify import VerifyOptions, verify

    ckpt = _hostile_checkpoint(tmp_path / "h.pt", residual=False)
    drops = {}
    for eq in (True, False):
        out = tmp_path / f"eq{eq}"
        r = export(ExportOptions(model=ModelSpec("resnet20", weights=ckpt), out=out, precisions=INT8,
                                 calib_samples=128, int8_equalize=eq, reference_samples=0))
        drops[eq] = _held_out_top1(out / "model.fp32.onnx", r.info) - _held_out_top1(out / "model.int8.onnx", r.info)
    assert drops[True] < 0.5 < 1.0 < drops[False], drops
    loc = verify(VerifyOptions(folder=tmp_path / "eqFalse", samples=200, precisions=("int8",),
                               localize=True)).rows[0].localization
    assert set(loc.revert_first[:3]) == HOSTILE_CONVS and "--no-int8-equalize" in loc.suggestion


def test_equalization_keeps_the_fp32_function(graphs: Path) -> None:
    from exporters.equalize import equalizable_pairs, equalize

    m = onnx.load(str(graphs / "model.fp32.onnx"))
    assert len(equalizable_pairs(m)) == 9  # one conv1 -> ReLU -> conv2 in each of the 9 blocks
    assert equalize(m) == 9
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    want = ort.InferenceSession(str(graphs / "model.fp32.onnx")).run(None, {"input": x})[0]
    got = ort.InferenceSession(m.SerializeToString()).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_margin_is_one_standard_error_of_the_paired_drop() -> None:
    from pipeline.make.search import Judge

    labels = np.zeros(400, np.int64)
    fp32 = np.ones(400, bool)
    int8 = fp32.copy()
    int8[:4] = False  # 4 of 400 answers lost: a drop of 1 point
    j = Judge(labels, fp32, budget=1.2)
    se = 100 * np.std(fp32.astype(float) - int8, ddof=1) / np.sqrt(400)
    assert j.drop(int8) == pytest.approx(1.0) and j.margin(int8) == pytest.approx(se) and se > 0.4
    assert not j.passes(int8) and "one standard error" in j.rule
    assert Judge(labels, fp32, budget=1.2, fixed_margin=0.0).passes(int8)  # judged like NNCF: the drop alone
    assert not Judge(labels, fp32, budget=1.2, fixed_margin=0.3).passes(int8)


def test_the_fewest_layers_are_found_by_growing_bisecting_and_pruning() -> None:
    """The group of first-ranked layers grows 1, 2, 4, 8, is bisected back, and layers the others do without are
    pruned: with a ranking where only 'a' and 'd' matter, the search reverts exactly those, in few estimates."""
    from exporters.calibrate import CalibMethod
    from pipeline.make.search import _fewest

    class Estimates:
        def __init__(self) -> None:
            self.asked: list[tuple[str, ...]] = []

        def estimate(self, method: CalibMethod, reverted: tuple[str, ...], fallback: str = "fp32") -> bool:
            self.asked.append(reverted)
            return {"a", "d"} <= set(reverted)

        def out_of_time(self) -> bool:
            return False

    s = Estimates()
    ranking = list("abcdefghijklmnop")
    assert _fewest(s, CalibMethod.percentile, ranking, ()) == ("a", "d")
    assert s.asked[:3] == [("a",), ("a", "b"), ("a", "b", "c", "d")] and len(s.asked) <= 8
    s.asked.clear()  # layers a measured graph already reverted stay; only the added ones are pruned
    assert _fewest(s, CalibMethod.percentile, ranking, ("b", "a")) == ("b", "a", "d")


def test_a_negative_margin_is_refused(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["export", "--out", str(tmp_path / "x"), "--precision", "fp32,int8",
                                 "--max-accuracy-drop", "0.5", "--accuracy-margin", "-1"])
    assert r.exit_code == 2 and "accuracy-margin" in r.output and not (tmp_path / "x").exists()


def test_a_margin_of_most_of_the_budget_gets_a_notice(searched: tuple) -> None:
    from dataclasses import replace

    from pipeline.make.graphs import int8_notices

    out, _, r = searched
    entry = read_manifest(out).graphs[Precision.int8]
    wide = replace(entry.search, trials=tuple(replace(t, margin=0.4) for t in entry.search.trials))
    notices = int8_notices(replace(entry, search=wide), ExportOptions(out=out), r.info)
    assert any("margin was 0.40 points" in n and "--accuracy-samples" in n for n in notices), notices
    # nothing reverted: no layer stayed out of int8 that the margin could have cost
    plain = replace(wide, trials=tuple(replace(t, reverted=()) for t in wide.trials))
    quiet = int8_notices(replace(entry, search=plain), ExportOptions(out=out), r.info)
    assert not any("margin was" in n for n in quiet)
    # the 64-image check below verify's bar: no alarm when the search met its budget on its judging images, and
    # no advice to search when it searched and missed
    low = replace(entry, check=replace(entry.check, top1_agree=0.95))
    assert not any("agrees with fp32" in n for n in int8_notices(low, ExportOptions(out=out), r.info))
    missed = replace(low, search=replace(entry.search, met=False))
    alarm = [n for n in int8_notices(missed, ExportOptions(out=out), r.info) if "agrees with fp32" in n]
    assert alarm and "--max-accuracy-drop" not in alarm[0] and "--calib-method mean-max" in alarm[0]


def test_the_background_reference_gives_the_searchs_fp32_logits_and_stops_between_chunks(
        graphs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32's logits on the judging images, computed on one thread beside calibration: those the search would
    compute itself (up to the summation order of one thread against two), and stopped between chunks when the
    export fails meanwhile."""
    import pipeline.make.search as search
    from pipeline.model.data import ImageSet

    _, info = load_model(ModelSpec("default"))
    ds = open_dataset("sample")
    acc = search.AccuracySet(ImageSet(ds, info.preprocess, np.arange(600)), ds.labels[:600], "600 sample images")
    fp32 = graphs / "model.fp32.onnx"
    got, want = search.Fp32Logits(fp32, acc).result(), search.Logits(acc.images).of(fp32)
    assert got.shape == (600, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()

    monkeypatch.setattr(search, "LOGIT_CHUNK", 7)  # chunks shared by two threads: 86, the last one short
    np.testing.assert_allclose(search.Fp32Logits(fp32, acc).result(), got, rtol=1e-5, atol=1e-5)

    monkeypatch.setattr(search, "LOGIT_CHUNK", 1)  # 600 chunks: stopped long before the last
    ref = search.Fp32Logits(fp32, acc)
    ref.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        ref.result()


def test_ranking_reads_at_most_four_measured_trials_of_images() -> None:
    from pipeline.make.ranking import RANKING_PASSES, ranking_images

    assert ranking_images(31, 2000) == 64  # a ResNet-20: the most
    deep = ranking_images(69, 1000)  # a ResNet-50's convs and adds, judged on 1,000 images
    assert deep < 64 and deep * 69 <= RANKING_PASSES * 1000
    assert ranking_images(500, 100) == 32  # never fewer


def test_progress_says_which_trials_revert_in_fp16() -> None:
    """The fp16 fallback's trial reverts the same layers as the one before it: progress says so."""
    from pipeline.make.search import _reverted

    assert _reverted(("a", "b"), "fp16") == "2 layer(s) reverted in fp16"
    assert _reverted(("a", "b"), "fp32") == "2 layer(s) reverted"


def test_a_measured_trial_reads_only_the_rows_its_estimate_did_not(graphs: Path, tmp_path: Path) -> None:
    """In the tensorrt layout an estimate's logits on the proxy rows are the measured graph's: the trial that
    follows reads only the other judging images and gets the logits a full read gets, bit for bit."""
    import pipeline.make.search as search
    from exporters.calibrate import CalibMethod, Ranges
    from exporters.quantize import int8_graph, revert_layers, revertible
    from tests.conftest import sample_batches

    src = graphs / "model.fp32.onnx"
    plain, _, _ = int8_graph(src, Ranges.load(graphs / "ranges.json"), recipe="tensorrt", quantize_ends=True)

    def quick(method: CalibMethod, reverted: tuple[str, ...], fallback: str) -> onnx.ModelProto:
        q = onnx.ModelProto()
        q.CopyFrom(plain)
        revert_layers(q, onnx.load(str(src)), reverted)
        return q

    def exact(method: CalibMethod, reverted: tuple[str, ...], fallback: str, path: Path) -> list[str]:
        onnx.save(quick(method, reverted, fallback), str(path))
        return revertible(plain)

    x = np.concatenate(list(sample_batches(600)))
    labels = open_dataset("sample").labels[:600].astype(np.int64)
    logits = search.Logits(x, fuse_qdq=False)
    reference = logits.of(src)
    judge = search.Judge(labels, reference.argmax(1) == labels, budget=0.5)
    s = search._Search(search.Makers(exact, quick), logits, judge, reference, float("inf"), tmp_path, lambda m: None)
    s.rebase(logits.of(plain))
    read: list[int] = []
    real = logits.of
    logits.of = lambda graph, rows=None: read.append(len(x) if rows is None else len(rows)) or real(graph, rows)
    one = ("layer1.0.conv1",)
    s.estimate(CalibMethod.percentile, one)
    s.estimate(CalibMethod.percentile, ("layer3.0.conv1",))  # another graph estimated after it: still known
    got = s.measure(CalibMethod.percentile, one, "fp32").logits
    assert 0 < len(s.rows) < len(x) and read == [len(x) - len(s.rows)]
    assert np.array_equal(got, real(tmp_path / "trial0.onnx"))
    s.measure(CalibMethod.percentile, ("layer2.0.conv1",), "fp32")  # not a graph estimated: every row read
    assert read[-1] == len(x)
    s.rebase(got)  # other proxy rows: what was estimated on the old ones is not reused
    s.measure(CalibMethod.percentile, one, "fp32")
    assert read[-1] == len(x)


def test_an_asked_fp16_fallback_is_what_every_trial_with_reverted_layers_measures(tmp_path: Path) -> None:
    """--fallback fp16: the layers a trial reverts are measured in fp16, as they will ship, never in fp32 first."""
    ckpt = _hostile_checkpoint(tmp_path / "h.pt")
    r = export(ExportOptions(model=ModelSpec("resnet20", weights=ckpt), out=tmp_path / "f", precisions=INT8,
                             calib_samples=128, max_accuracy_drop=0.5, fallback="fp16", reference_samples=0))
    s = r.manifest.graphs[Precision.int8].search
    reverting = [t for t in s.trials if t.reverted]
    assert s.met and reverting and all(t.fallback == "fp16" for t in reverting)
    assert s.result.fallback == "fp16" and r.manifest.graphs[Precision.int8].fallback == "fp16"
