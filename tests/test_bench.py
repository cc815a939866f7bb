"""The timing loop (warm-up, bounds, percentiles), the report schema and the files bench writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.check.bench import BenchOptions, bench, compare_reports, time_runtime
from pipeline.check.records import write_bench_files
from resnetx.errors import BadInput
from runtimes.base import Runtime
from tests.conftest import copy_folder, tamper_weight


class FakeRuntime(Runtime):
    """Each call advances a fake clock by a known duration; records which buffers it saw."""

    backend = "fake"

    def __init__(self, durations: list[float], clock: list[float]) -> None:
        super().__init__(device="cpu", precision="fp32")
        self.durations = durations
        self.clock = clock
        self.calls = 0
        self.seen: list[int] = []

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self.clock[0] += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1
        self.seen.append(int(batch.reshape(-1)[0]))
        return np.zeros((len(batch), 10), np.float32)


def _run(durations: list[float], **kw: float) -> tuple[FakeRuntime, object]:
    clock = [0.0]
    rt = FakeRuntime(durations, clock)
    bufs = [np.full((1, 1), i, np.float32) for i in range(4)]
    args = dict(warmup=3, warmup_seconds=0.0, iters=10, min_seconds=0.0) | kw
    return rt, time_runtime(rt, bufs, clock=lambda: clock[0], **args)


def test_warmup_is_excluded() -> None:
    rt, t = _run([1.0, 1.0, 1.0] + [0.001] * 100)  # three slow first calls
    assert t.iters == 10 and rt.calls == 13
    assert t.p99 == pytest.approx(1.0, rel=1e-6) and t.mean == pytest.approx(1.0, rel=1e-6)  # ms


def test_percentiles_ordered_and_stats() -> None:
    rng = np.random.default_rng(0)
    _, t = _run(list(rng.uniform(0.001, 0.01, 500)), iters=400)
    assert t.min <= t.p50 <= t.p90 <= t.p95 <= t.p99
    assert t.std > 0 and t.iters == 400


def test_min_seconds_extends_iterations() -> None:
    _, t = _run([0.01] * 1000, iters=5, min_seconds=2.0)
    assert t.iters >= 200 and t.seconds >= 2.0


def test_warmup_by_time() -> None:
    rt, t = _run([0.01] * 1000, warmup=1, warmup_seconds=0.5, iters=5)
    assert rt.calls - t.iters >= 50


def test_max_seconds_bounds_a_slow_runtime() -> None:
    _, t = _run([5.0] * 100, warmup=0, iters=50, max_seconds=12.0)
    assert 3 <= t.iters < 50


def test_buffers_rotate() -> None:
    rt, _ = _run([0.001] * 100, warmup=0, iters=8)
    assert rt.seen[:8] == [0, 1, 2, 3, 0, 1, 2, 3]


def test_bad_iters() -> None:
    with pytest.raises(BadInput):
        _run([0.001], iters=0)


def test_bench_writes_reports(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    opts = BenchOptions(folder=folder, batches=(1, 4), iters=5, warmup=1, warmup_seconds=0.0, min_seconds=0.0,
                        accuracy_samples=200, threads=1)
    report = bench(opts)
    write_bench_files(report, report.reports)
    rows = [r for r in report.rows if r.latency_ms]
    assert {(r.backend, r.precision) for r in rows} == {("torch", "fp32"), ("ort", "fp32"), ("ort", "fp16"),
                                                       ("ort", "int8")}
    for r in rows:
        lat = r.latency_ms
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]
        assert r.throughput_ips == pytest.approx(r.batch / (lat["mean"] / 1e3), rel=1e-2)
        # memory: the peak RSS the runtime added, its library's one-time load excluded
        assert 1 <= r.peak_mem_mb < 4096 and r.size_mb > 0 and 50 < r.accuracy_top1 <= 100 and r.iters >= 5
    d = json.loads((folder / "reports" / "cpu" / "bench.json").read_text())
    keys = {"runtime", "mode", "precision", "device", "batch", "latency_ms", "throughput_ips", "peak_mem_mb",
            "accuracy_top1", "size_mb"}
    assert keys <= set(d["rows"][0]) and d["system"]["cores"] and d["system"]["versions"]["onnxruntime"]
    for name in ("bench.md", "bench.csv", "bench.png"):
        assert (folder / "reports" / "cpu" / name).stat().st_size > 100
    png = (folder / "reports" / "cpu" / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    ratios = compare_reports(report, folder / "reports" / "cpu" / "bench.json")
    assert len(ratios) == len(rows) and all(r["speedup"] == pytest.approx(1.0) for r in ratios)
    assert any("--int8-recipe cpu" in n for n in report.notes)  # the int8 timed here is TensorRT's recipe


def test_synthetic_data_has_no_accuracy(small_folder: Path) -> None:
    report = bench(BenchOptions(folder=small_folder, runtimes=("ort",), batches=(2,), iters=3, warmup=0,
                                warmup_seconds=0.0, min_seconds=0.0, data="synthetic"))
    assert report.rows[0].accuracy_top1 is None and "accuracy n/a" in report.notes[0]


def test_accuracy_on_a_folder_larger_than_its_samples_is_drawn_across_the_classes(default_folder: Path,
                                                                                  tmp_path: Path) -> None:
    """A folder reads in class order: its first 50 of 60 images would leave the last class out of the accuracy
    column (and of the recommendation that reads it). bench draws them as verify does."""
    from exporters.onnx import run_cpu
    from pipeline.model.data import eval_indices, open_dataset
    from pipeline.model.zoo import load_model
    from pipeline.sources import ModelSpec
    from tests.conftest import class_ordered_folder

    data = f"imagefolder:{class_ordered_folder(tmp_path / 'val')}"
    report = bench(BenchOptions(folder=default_folder, runtimes=("ort",), precisions=("fp32",), batches=(4,),
                                iters=2, warmup=0, warmup_seconds=0.0, min_seconds=0.0, data=data,
                                accuracy_samples=50), record=False)
    assert report.accuracy_data == f"{data} (50 images drawn seeded across its classes)"
    _, info = load_model(ModelSpec("default"))
    ds = open_dataset(data, split="test", preprocess=info.preprocess)
    index = eval_indices(ds, 50, 0)
    assert np.bincount(ds.labels[index], minlength=10).tolist() == [5] * 10
    x = info.preprocess(ds.raw(index))
    want = 100.0 * float((run_cpu(default_folder / "model.fp32.onnx", x).argmax(1) == ds.labels[index]).mean())
    assert report.rows[0].accuracy_top1 == pytest.approx(want, abs=1e-6)


def test_cuda_unavailable_is_exit_3(default_folder: Path) -> None:
    import torch

    from resnetx.errors import BackendUnavailable

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BackendUnavailable):
        bench(BenchOptions(folder=default_folder, device="cuda"), record=False)


def test_rounds_interleave_runtimes() -> None:
    from pipeline.check.bench import Cell, time_cells
    from pipeline.check.candidates import Candidate
    from pipeline.precisions import Precision
    from runtimes.registry import RUNTIMES

    log: list[str] = []

    class Named(FakeRuntime):
        def __init__(self, name: str) -> None:
            super().__init__([0.0], [0.0])
            self.tag = name

        def _infer(self, batch: np.ndarray) -> np.ndarray:
            log.append(self.tag)
            return super()._infer(batch)

    target = Candidate("fake", RUNTIMES["ort"], Precision.fp32, "cpu", None)
    cells = [Cell(target, Named(n), 1, 0.0, None) for n in ("a", "b")]
    opts = BenchOptions(folder=Path("."), iters=6, warmup=0, warmup_seconds=0.0, min_seconds=0.0, rounds=3)
    time_cells(cells, opts, (1, 2, 2), False, None)
    assert [len(c.samples) for c in cells] == [3, 3] and sum(len(s) for s in cells[0].samples) == 6
    runs = "".join(log)
    assert runs == "aabb" * 3  # a's share, b's share, three times over


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_time_is_apart_and_cached_in_the_folder(default_folder: Path, tmp_path: Path) -> None:
    """Two fresh processes: the second finds inductor's compiled graphs in DIR/inductor_cache."""
    folder = copy_folder(default_folder, tmp_path / "f")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHINDUCTOR")} | {"PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "pipeline.cli", "bench", str(folder), "--runtime", "torch", "--batch", "4",
           "--compile", "--iters", "5", "--min-seconds", "0", "--warmup", "1", "--warmup-seconds", "0",
           "--rounds", "1", "--no-accuracy"]
    rows = []
    for _ in range(2):
        r = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "compile/build s" in r.stdout
        rows.append(json.loads((folder / "reports" / "cpu" / "bench.json").read_text())["rows"][0])
    first, second = rows
    assert first["mode"] == "compile" and first["compile_s"] > 0 and second["compile_s"] > 0
    for row in rows:  # the compile is not inside the latency
        assert row["latency_ms"]["p99"] < 1000 * row["compile_s"]
    assert any((folder / "inductor_cache").rglob("*")), "nothing cached in the artifact folder"
    notes = json.loads((folder / "reports" / "cpu" / "bench.json").read_text())["notes"]
    assert f"torch.compile mode max-autotune-no-cudagraphs, cache: {folder / 'inductor_cache'}" in notes
    assert json.loads((folder / "reports" / "cpu" / "bench.json").read_text())["options"]["compile_mode"] == \
        "max-autotune-no-cudagraphs"
    assert second["compile_s"] < first["compile_s"] / 2, (first["compile_s"], second["compile_s"])


def test_reports_without_matplotlib_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.check.bench import BenchReport, BenchRow
    from pipeline.check.records import write_bench_files

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    lat = {k: 1.0 for k in ("p50", "p90", "p95", "p99", "mean", "std", "min")}
    row = BenchRow("ort-cpu-fp32", "ort", "", "fp32", "cpu", 1, lat, 1000.0, 10.0, None, 1.0, 0.1)
    report = BenchReport(tmp_path, [row], {"cpu": "x", "cores": 2}, {})
    paths = write_bench_files(report, tmp_path / "reports")
    assert [p.name for p in paths] == ["bench.json", "bench.md", "bench.csv"]
    assert not (tmp_path / "reports" / "bench.png").exists()
    assert "matplotlib is not installed" in json.loads(paths[0].read_text())["notes"][0]


def test_flops_and_share_of_peak(default_folder: Path, tmp_path: Path) -> None:
    """FLOPs are counted in the fp32 graph (whatever made it), as torch's own counter counts the model."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from exporters.onnx import export_onnx, load_onnx
    from exporters.sizes import graph_gflops
    from pipeline.model.zoo import build_model

    r50 = build_model("resnet50", num_classes=1000, in_chans=3).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        r50(torch.zeros(1, 3, 224, 224))
    graph = graph_gflops(load_onnx(export_onnx(r50, (3, 224, 224), tmp_path / "r50.onnx", exporter="legacy").path))
    assert graph == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-3)
    assert 8.1 < graph < 8.3  # 4.1 G multiply-adds, the published figure
    folder = copy_folder(default_folder, tmp_path / "f")
    report = bench(BenchOptions(folder=folder, runtimes=("ort",), precisions=("fp32",), batches=(4,), iters=3,
                                warmup=0, warmup_seconds=0.0, min_seconds=0.0, rounds=1, accuracy=False,
                                peak_tflops=0.5))
    write_bench_files(report, report.reports)
    row = report.rows[0]
    assert 0 < report.gflops_per_image < 1
    assert row.tflops == pytest.approx(row.throughput_ips * report.gflops_per_image / 1e3, rel=1e-3)
    assert row.peak_pct == pytest.approx(100 * row.tflops / 0.5, rel=1e-3)
    md = (folder / "reports" / "cpu" / "bench.md").read_text()
    assert "GFLOP per image" in md and "% peak" in md


def test_ort_tensorrt_provider_is_opt_in(default_folder: Path) -> None:
    from pipeline.check.candidates import select_candidates
    from pipeline.folder.manifest import read_manifest
    from pipeline.precisions import Precision

    with pytest.raises(BadInput, match="needs --device cuda"):
        bench(BenchOptions(folder=default_folder, runtimes=("ort-trt",), batches=(1,), iters=1), record=False)
    manifest = read_manifest(default_folder)
    fp16 = (Precision.fp16,)
    cuda = select_candidates(manifest, default_folder, command="bench", runtimes=None, precisions=fp16, device="cuda")
    assert "ort-trt" not in {t.runtime.name for t in cuda}  # not in the default set
    chosen = select_candidates(manifest, default_folder, command="bench", runtimes=("ort", "ort-trt"), precisions=fp16,
                            device="cuda")
    assert sorted(t.runtime.name for t in chosen) == ["ort", "ort-trt"]


@pytest.mark.parametrize("flag", ["prefer_nhwc", "cuda_graph", "include_transfers"])
def test_gpu_only_flags_are_refused_on_the_cpu(default_folder: Path, flag: str) -> None:
    """They would change nothing there, yet the rows would carry their label (ort-nhwc-cpu-fp32)."""
    before = sorted((default_folder / "reports").iterdir())
    with pytest.raises(BadInput, match=f"--{flag.replace('_', '-')} needs --device cuda"):
        bench(BenchOptions(folder=default_folder, batches=(1,), iters=1, **{flag: True}), record=False)
    assert sorted((default_folder / "reports").iterdir()) == before
    if flag == "prefer_nhwc":
        from runtimes.registry import open_runtime

        with pytest.raises(BadInput, match="CUDA provider"):
            open_runtime("ort", default_folder / "model.fp32.onnx", prefer_nhwc=True)


def test_a_model_that_answers_nan_is_flagged_beside_its_timings(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    tamper_weight(folder, "layer3.0.conv2.weight", lambda w: w.__setitem__((0, 0, 0, 0), np.nan))
    r = bench(BenchOptions(folder=folder, runtimes=("ort",), precisions=("fp32", "fp16"), batches=(1,), iters=2,
                           min_seconds=0.0, warmup=1, accuracy_samples=64))
    write_bench_files(r, r.reports)
    flagged = [n for n in r.notes if "NaN/Inf" in n]
    assert len(flagged) == 1 and flagged[0].startswith("ort-cpu-fp32 gave NaN/Inf logits for 65 input(s)"), r.notes
    assert "resnetx verify" in flagged[0] and all(row.latency_ms for row in r.rows)  # still timed, not hidden
    assert "NaN/Inf" in (folder / "reports" / "cpu" / "bench.md").read_text()


@pytest.mark.parametrize("width", [80, 200])
def test_the_table_fits_the_terminal_without_cutting_a_number(default_folder: Path, tmp_path: Path,
                                                               width: int) -> None:
    from rich.console import Console

    from pipeline.cli.tables import bench_table

    folder = copy_folder(default_folder, tmp_path / "f")
    r = bench(BenchOptions(folder=folder, runtimes=("ort",), batches=(1,), iters=2, min_seconds=0.0, warmup=1,
                           accuracy_samples=32))
    console = Console(width=width, record=True, force_terminal=False)
    console.print(bench_table(r, width=width))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= width, text
    assert all(c in text for c in ("ort-cpu-int8", "p50 ms", "img/s", "top-1 %"))
    assert ("p90 ms" in text) == (width == 200)  # the first to go on a narrow terminal; bench.md keeps it


def test_a_bench_that_timed_nothing_keeps_the_last_report(default_folder: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import pipeline.check.candidates
    from pipeline.cli import app
    from resnetx.errors import BackendUnavailable

    folder = copy_folder(default_folder, tmp_path / "f")
    r = CliRunner().invoke(app, ["bench", str(folder), "--runtime", "ort", "--batch", "1", "--no-accuracy",
                                 "--iters", "2", "--warmup", "0", "--min-seconds", "0"])
    assert r.exit_code == 0, r.output
    last = (folder / "reports" / "cpu" / "bench.json").read_bytes()

    def missing(*args: object, **kwargs: object) -> Runtime:
        raise BackendUnavailable("backend X is not installed: pip install X")

    monkeypatch.setattr(pipeline.check.candidates, "open_runtime", missing)
    fast = BenchOptions(folder=folder, runtimes=("ort",), batches=(1,), iters=2, warmup=0, warmup_seconds=0.0,
                        min_seconds=0.0, accuracy=False)
    report = bench(fast)
    assert report.nothing_ran
    r = CliRunner().invoke(app, ["bench", str(folder), "--runtime", "ort", "--batch", "1", "--no-accuracy"])
    assert r.exit_code == 3 and "nothing was benchmarked: backend X is not installed" in r.output
    assert "NOTHING RAN" in r.output and (folder / "reports" / "cpu" / "bench.json").read_bytes() == last


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_on_cuda_times_every_torch_mode(default_folder: Path, tmp_path: Path) -> None:
    folder = copy_folder(default_folder, tmp_path / "f")
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark
    rows = []
    for extra in ({}, {"channels_last": True, "cuda_graph": True}, {"include_transfers": True}):
        report = bench(BenchOptions(folder=folder, runtimes=("torch",), device="cuda", batches=(1, 8), iters=20,
                                    warmup=2, warmup_seconds=0.0, min_seconds=0.0, accuracy_samples=256, **extra))
        assert not report.nothing_ran and report.system["gpu"]["name"]
        assert any("cuDNN autotuning (torch.backends.cudnn.benchmark) on" in n for n in report.notes)
        rows += report.rows
    assert len(rows) == 12 and all(r.latency_ms for r in rows), [r.error for r in rows]
    for r in rows:
        lat = r.latency_ms
        assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] and r.device == "cuda"
        assert r.accuracy_top1 > 80 and r.peak_mem_mb >= 0
    assert {r.transfers_included for r in rows} == {False, True}
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.benchmark) == flags  # restored on close (fp32 and fp16 were open together)


def test_nothing_to_benchmark_says_what_the_folder_holds(small_folder: Path) -> None:
    with pytest.raises(BadInput, match=r"holds fp32 \(ort, "):
        bench(BenchOptions(folder=small_folder, runtimes=("ort",), precisions=("int8",)))


def test_cpu_peak_memory_sees_a_transient_allocation() -> None:
    from pipeline.check.memory import peak_rss_mb, reset_peak_rss, rss_mb, trim_heap

    if not reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs here (not Linux)")
    trim_heap()
    before = rss_mb()
    reset_peak_rss()
    block = np.ones(100 * 2**20 // 8)  # 100 MiB, touched, then freed before the peak is read
    del block
    trim_heap()  # glibc may have served it from the heap (earlier frees raise its mmap threshold)
    assert peak_rss_mb() - before >= 90 and rss_mb() - before < 50


def test_memory_counts_each_runtime_after_earlier_work_in_the_process(default_folder: Path) -> None:
    """`resnetx run` exports before it benches: memory freed by that work and kept by the allocator must not
    hide what a runtime allocates (the first runtime read 0 MB), nor may one row carry a library's load."""
    churn = [np.ones(8192) for _ in range(30_000)]  # ~2 GB in 64 KiB blocks: the heap, not mmap
    del churn
    report = bench(BenchOptions(folder=default_folder, runtimes=("torch", "ort"), batches=(1, 32), iters=3,
                                warmup=1, warmup_seconds=0.0, min_seconds=0.0, accuracy=False, threads=1), record=False)
    mem = {r.runtime: r.peak_mem_mb for r in report.rows if r.batch == 1}
    assert set(mem) == {"torch-cpu-fp32", "ort-cpu-fp32", "ort-cpu-fp16", "ort-cpu-int8"}
    assert all(1 <= m < 200 for m in mem.values()), mem
    ort = [mem[f"ort-cpu-{p}"] for p in ("fp32", "fp16", "int8")]
    assert max(ort) < 4 * min(ort), mem  # same model, same arenas: no row pays for loading onnxruntime


def test_runtimes_close_in_reverse_order_so_process_flags_unwind(default_folder: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each torch CUDA runtime sets TF32 off (and cuDNN autotuning on) and restores what it found on close:
    with fp32 and fp16 open together, closing in open order would leave the flags as the second one found them."""
    import pipeline.check.bench as bench_mod
    from runtimes.torch_rt import TorchRuntime

    state = {"flag": "user's"}

    class Flagging(FakeRuntime):
        def __init__(self) -> None:
            super().__init__([0.0001], [0.0])
            self.before, state["flag"] = state["flag"], "set by a runtime"

        def _close(self) -> None:
            state["flag"] = self.before

    monkeypatch.setattr(bench_mod, "open_candidate", lambda *a, **k: Flagging())
    bench(BenchOptions(folder=default_folder, runtimes=("ort",), batches=(1,), iters=2, warmup=0,
                       warmup_seconds=0.0, min_seconds=0.0, accuracy=False), record=False)
    assert state["flag"] == "user's"

    model = torch.nn.Linear(4, 2)
    before = torch.backends.cudnn.benchmark
    a, b = TorchRuntime(model), TorchRuntime(model)
    a._set_flag(torch.backends.cudnn, "benchmark", not before)
    b._set_flag(torch.backends.cudnn, "benchmark", not before)
    b.close()
    a.close()
    assert torch.backends.cudnn.benchmark == before


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_inside_a_compile_mode_that_captures_graphs_is_refused(default_folder: Path, mode: str) -> None:
    """Those modes capture CUDA graphs themselves; --cuda-graph would try to capture one inside another."""
    with pytest.raises(BadInput, match=f"--compile-mode {mode} captures CUDA graphs itself"):
        bench(BenchOptions(folder=default_folder, device="cuda", batches=(1,), iters=1, compile=True,
                           cuda_graph=True, compile_mode=mode), record=False)


def test_timing_reports_its_coefficient_of_variation_and_the_rounds_spread() -> None:
    from pipeline.check.timing import Timing

    steady = Timing.from_samples(np.full(30, 2.0), 1.0, [np.full(10, 2.0)] * 3)
    assert steady.cov == 0.0 and steady.round_spread == 0.0
    rounds = [np.full(10, 1.0), np.full(10, 1.0), np.full(10, 1.5)]  # the third round ran on a busier machine
    t = Timing.from_samples(np.concatenate(rounds), 1.0, rounds)
    assert t.cov == pytest.approx(np.concatenate(rounds).std() / np.concatenate(rounds).mean())
    assert t.round_spread == pytest.approx(0.5)


def test_an_unstable_row_gets_a_note_with_what_to_do() -> None:
    from pipeline.check.bench import BenchRow, stability_notes

    def row(name: str, cov: float, spread: float) -> BenchRow:
        lat = dict.fromkeys(("p50", "p90", "p95", "p99", "mean", "std", "min"), 1.0) | {"cov": cov,
                                                                                     "round_spread": spread}
        return BenchRow(name, "ort", "", "fp32", "cpu", 8, latency_ms=lat, throughput_ips=8000.0)

    opts = BenchOptions(folder=Path("."), min_seconds=1.0, rounds=3)
    assert stability_notes([row("ort-cpu-fp32", 0.02, 0.03)], opts) == []
    notes = stability_notes([row("ort-cpu-fp32", 0.02, 0.03), row("ort-cpu-int8", 0.25, 0.0),
                             row("torch-cpu-fp32", 0.01, 0.4)], opts)
    assert len(notes) == 1 and "coefficient of variation above 10%" in notes[0]
    assert "ort-cpu-int8 batch 8 (CoV 25%" in notes[0] and "torch-cpu-fp32 batch 8" in notes[0]
    assert "ort-cpu-fp32" not in notes[0] and "--min-seconds 5" in notes[0] and "--rounds 5" in notes[0]


def test_int8_that_is_not_faster_says_why(default_folder: Path, tmp_path: Path) -> None:
    """The default folder's int8 is the TensorRT recipe: on onnxruntime's CPU kernels it is slower than fp32."""
    folder = copy_folder(default_folder, tmp_path / "f")
    r = bench(BenchOptions(folder=folder, runtimes=("ort",), precisions=("fp32", "int8"), batches=(8,), iters=10,
                           warmup=2, warmup_seconds=0.0, min_seconds=0.2, accuracy=False))
    note = next(n for n in r.notes if n.startswith("int8 is not at least 10% faster"))
    assert "ort-cpu-int8 batch 8" in note and "vs ort-cpu-fp32" in note
    assert "the int8 graph is the TensorRT recipe" in note and "--int8-recipe cpu" in note
    fused = re.search(r"integer kernels for (\d+) of the 20 int8 conv/gemm layers", note)  # the cause, measured
    assert fused and int(fused.group(1)) < 20


def test_throughput_keeps_the_device_fed_and_syncs_once_per_window() -> None:
    from pipeline.check.timing import time_throughput

    clock = [0.0]

    class Queue(FakeRuntime):
        syncs = 0

        def _infer_async(self, batch: np.ndarray) -> np.ndarray:
            clock[0] += 0.002  # each enqueued batch of 4 takes 2 ms of device time
            return batch

        def _synchronize(self) -> None:
            Queue.syncs += 1

    rt = Queue([0.0], clock)
    bufs = [np.zeros((4, 1, 2, 2), np.float32)] * 4
    ips = time_throughput(rt, bufs, seconds=0.1, window=5, clock=lambda: clock[0])
    assert ips == pytest.approx(4 / 0.002) and Queue.syncs == 11  # a warm window, then 10 of 5 batches


def test_batch_auto_doubles_until_throughput_saturates() -> None:
    from pipeline.check.timing import sweep_batches

    curve = {1: 100.0, 2: 190.0, 4: 350.0, 8: 600.0, 16: 800.0, 32: 820.0, 64: 830.0}
    batches, why = sweep_batches(curve.__getitem__)
    assert batches == [1, 2, 4, 8, 16, 32] and "+2.5% from batch 16 to 32 (less than 5%)" in why

    def oom(b: int) -> float:
        if b >= 8:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 100.0 * b

    assert sweep_batches(oom) == ([1, 2, 4], "batch 8 failed (CUDA out of memory. Tried to allocate 2.00 GiB)")
    assert sweep_batches(lambda b: 100.0 * b, max_batch=16)[1] == "reached batch 16, the largest to try (16)"

    def bug(b: int) -> float:
        if b >= 4:
            raise KeyError("layer3")  # not a capacity limit: a bug, which must not read as one
        return 100.0 * b

    with pytest.raises(KeyError):
        sweep_batches(bug)
    with pytest.raises(ValueError):
        sweep_batches(lambda b: float("x"))


def test_batch_auto_through_the_cli(default_folder: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    folder = copy_folder(default_folder, tmp_path / "f")
    r = CliRunner().invoke(app, ["bench", str(folder), "--runtime", "ort", "--precision", "fp32", "--batch", "auto",
                                 "--iters", "5", "--warmup", "1", "--min-seconds", "0.1", "--no-accuracy"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = json.loads((folder / "reports" / "cpu" / "bench.json").read_text())["rows"]
    batches = [row["batch"] for row in rows]
    # where it stops depends on this machine's timings (sweep_batches' rules are tested above); it always measures
    # 1 and 2, in order, and says why it stopped
    assert batches[:2] == [1, 2] and batches == sorted(batches) and len(set(batches)) == len(batches)
    assert "--batch auto: ort-cpu-fp32 swept 1, 2" in r.output and "stopped:" in r.output


@pytest.mark.slow
def test_the_gpu_check_dry_run_runs_its_whole_plan(tmp_path: Path) -> None:
    """scripts/gpu_check.py --dry-run: the GPU plan on the CPU with the default model, so the script cannot rot."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    r = subprocess.run([sys.executable, str(script), "--dry-run", "--out", str(tmp_path), "--budget", "700"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"env", "tests", "verify", "bench", "compile", "fleet"}
    for stage in ("verify", "bench", "compile", "fleet"):
        failed = {k: v for k, v in summary[stage].items() if isinstance(v, dict) and v.get("rc") != 0}
        assert not failed, f"{stage}: {failed}"
    verify = json.loads((tmp_path / "verify.json").read_text())
    assert verify["passed"] and {row["runtime"] for row in verify["rows"]} >= {"torch-cpu-fp32"}
    bench = json.loads((tmp_path / "bench-compile.json").read_text())
    assert {row["batch"] for row in bench["rows"]} == {1, 8}
    assert all("cov" in row["latency_ms"] for row in bench["rows"])
    assert (tmp_path / "compile-cached.json").is_file()
    assert "## What to ship" in (tmp_path / "fleet.md").read_text()  # this machine as a one-node Ray fleet
