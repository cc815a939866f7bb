"""Latency, throughput, memory and accuracy over runtimes x precisions x batch sizes."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.check.candidates import (
    Candidate,
    check_device,
    check_runtime_options,
    open_candidate,
    opener_options,
    select_candidates,
)
from pipeline.check.memory import mem_mb, peak_rss_mb, reset_peak_rss, trim_heap
from pipeline.check.recommend import Measured, recommend
from pipeline.check.records import write_bench_files
from pipeline.check.reference import Reference
from pipeline.check.results import BenchReport, BenchRow
from pipeline.check.timing import Timing, sweep_batches, time_runtime, time_throughput
from pipeline.defaults import (
    DEFAULT_BATCHES,
    DEFAULT_BENCH_ACCURACY_SAMPLES,
    DEFAULT_ITERS,
    DEFAULT_MIN_SECONDS,
    DEFAULT_ROUNDS,
    DEFAULT_WARMUP,
    DEFAULT_WARMUP_SECONDS,
)
from pipeline.folder.manifest import EngineEntry, GraphEntry, Manifest, read_manifest, tool_versions
from pipeline.folder.verdicts import standing
from pipeline.machine import INT8_DOT, cpu_isa, isa_mismatch, system_info
from pipeline.model.data import (
    ImageSet,
    calibration_overlap_note,
    eval_indices,
    label_order_note,
    near_chance_note,
    open_dataset,
    spread_over_classes,
)
from pipeline.precisions import PRECISIONS, Precision, parse_precisions
from resnetx.errors import BackendUnavailable, BadInput, IncompatibleArtifact, ResnetxError
from runtimes.base import Device, Runtime, require_cuda
from runtimes.registry import RUNTIMES, baseline_runtime, hook, prime, runtime_spec
from runtimes.torch_rt import CompileMode

__all__ = ["BenchOptions", "Timing", "BenchRow", "BenchReport", "Cell", "time_runtime", "time_cells", "bench",
           "check_batches", "compare_reports", "stability_notes"]

log = logging.getLogger(__name__)
N_BUFFERS = 4  # inputs rotated so caches cannot flatter small models
LATENCY_KEYS = ("p50", "p90", "p95", "p99", "mean", "std", "min", "cov", "round_spread")
# a run is unstable past these (trtexec warns at a 1% coefficient of variation of GPU compute time; Python calls
# and shared CPUs vary more): then a note says so and how to run longer
UNSTABLE_COV = {"cpu": 0.10, "cuda": 0.05}
UNSTABLE_SPREAD = 0.10
INT8_GAIN = 0.10  # an int8 row not this much faster than the same runtime's fp16/fp32 row gets a note


def check_batches(batches: tuple[int, ...]) -> tuple[int, ...]:
    """--batch as given, or the one-line reason it cannot be benchmarked."""
    if not batches or min(batches) < 1:
        raise BadInput("--batch needs sizes >= 1, e.g. --batch 1,8,32")
    return tuple(batches)


@dataclass(frozen=True)
class BenchOptions:
    folder: Path
    runtimes: tuple[str, ...] | None = None  # None: torch + ort (+ trt on cuda)
    precisions: tuple[Precision, ...] | None = None
    device: str = "cpu"  # or a Device; auto resolves here
    batches: tuple[int, ...] = DEFAULT_BATCHES
    warmup: int = DEFAULT_WARMUP
    warmup_seconds: float = DEFAULT_WARMUP_SECONDS
    iters: int = DEFAULT_ITERS
    min_seconds: float = DEFAULT_MIN_SECONDS
    max_seconds: float = 60.0
    rounds: int = DEFAULT_ROUNDS  # interleaved passes over all runtimes; iters/min_seconds are totals
    threads: int | None = None
    channels_last: bool = False
    cuda_graph: bool = False
    compile: bool = False
    compile_mode: CompileMode = CompileMode.max_autotune_no_cudagraphs  # minutes of autotuning, fastest kernels
    cudnn_benchmark: bool = True  # torch on cuda: cuDNN autotunes per shape (in warm-up), like ort's EXHAUSTIVE
    prefer_nhwc: bool = False
    include_transfers: bool = False
    accuracy: bool = True
    data: str = "sample"
    data_dir: Path | None = None
    accuracy_samples: int = DEFAULT_BENCH_ACCURACY_SAMPLES
    seed: int = 0
    peak_tflops: float | None = None  # the device's compute peak at this precision: rows get % of it
    auto_batch: bool = False  # --batch auto: per runtime, double the batch until throughput saturates
    runtime_options: dict[str, Any] = field(default_factory=dict)  # runtime rows' own options (--ov-device ...)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        object.__setattr__(self, "device", Device(self.device).resolve())
        object.__setattr__(self, "compile_mode", CompileMode(self.compile_mode))
        object.__setattr__(self, "batches", check_batches(self.batches))
        if self.precisions is not None:
            object.__setattr__(self, "precisions", parse_precisions(self.precisions, with_source=False))
        if self.iters < 1 or self.warmup < 0:
            raise BadInput("--iters must be >= 1 and --warmup >= 0")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise BadInput("--peak-tflops must be > 0")
        for name in self.runtimes or ():
            check_device(runtime_spec(name), self.device)
        check_runtime_options(self.runtime_options, self.runtimes, "bench", self.device)
        if self.device != "cuda":  # flags that would change nothing on the CPU, yet label its rows
            cuda_only = [flag for flag, on in (("--prefer-nhwc", self.prefer_nhwc), ("--cuda-graph", self.cuda_graph),
                                               ("--include-transfers", self.include_transfers)) if on]
            if cuda_only:
                raise BadInput(f"{', '.join(cuda_only)} needs --device cuda (onnxruntime's CUDA provider layout, "
                               "CUDA graph replay, host<->device copies); on the CPU leave it out")
        if self.compile and self.cuda_graph and self.compile_mode.captures_graphs:
            raise BadInput(f"--compile-mode {self.compile_mode.value} captures CUDA graphs itself, and one cannot be "
                           "captured inside another: leave out --cuda-graph, or use --compile-mode "
                           "max-autotune-no-cudagraphs")

    @property
    def compile_cache(self) -> Path | None:
        """torch.compile's cache, kept in the folder."""
        return self.folder / "inductor_cache" if self.compile else None

    @property
    def trt_profile(self) -> tuple[int, int, int]:
        """ort-trt's engine profile: the benchmarked batch range."""
        lo, hi = (1, 1024) if self.auto_batch else (min(self.batches), max(self.batches))
        return (lo, hi, hi)



def _gflops(folder: Path, manifest: Manifest) -> float:
    """FLOPs per image, counted in the fp32 graph (whatever made it: a PyTorch model or a user's ONNX file)."""
    from exporters.onnx import load_onnx
    from exporters.sizes import graph_gflops

    fp32 = manifest.graphs.get(Precision.fp32)
    return graph_gflops(load_onnx(folder / fp32.file)) if fp32 is not None and (folder / fp32.file).is_file() else 0.0


def _buffers(shape: tuple[int, ...], n: int, seed: int, device: str) -> list[Any]:
    rng = np.random.default_rng(seed)
    host = [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]  # never zeros
    if device == "cuda":
        return [torch.from_numpy(h).cuda() for h in host]
    return host


@dataclass
class Cell:
    """One runtime x batch size; its samples gather over the interleaved rounds."""

    target: Candidate
    rt: Runtime
    batch: int
    load_s: float
    acc: float | None
    size_mb: float | None = None
    samples: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0
    mem_mb: float = 0.0
    error: str | None = None
    stream_ips: float | None = None


def time_cells(cells: list[Cell], opts: BenchOptions, shape: tuple[int, ...], device_resident: bool,
               on_progress: Callable[[str], None] | None) -> None:
    """Round-robin over every cell `opts.rounds` times, each round taking its share of `iters` and
    `min_seconds`: a slow drift of the machine then hits every runtime alike, so the ratios between
    rows are measured side by side."""
    rounds = max(1, opts.rounds)
    iters = max(1, math.ceil(opts.iters / rounds))
    bufs: dict[int, list[Any]] = {}  # per batch size, made once: every round and runtime sees the same inputs
    for r in range(rounds):
        for c in cells:
            if c.error:
                continue
            if reason := c.rt.out_of_range(c.batch):
                c.error = reason
                continue
            if on_progress:
                on_progress(f"round {r + 1}/{rounds}: {c.rt.name} batch {c.batch}")
            if c.batch not in bufs:
                bufs[c.batch] = _buffers((c.batch, *shape), N_BUFFERS, opts.seed + c.batch,
                                         opts.device if device_resident else "cpu")
            try:
                tm = time_runtime(c.rt, bufs[c.batch], warmup=opts.warmup, warmup_seconds=opts.warmup_seconds,
                                  iters=iters, min_seconds=opts.min_seconds / rounds,
                                  max_seconds=opts.max_seconds / rounds, device_resident=device_resident)
            except ResnetxError as e:
                c.error = str(e)
                continue
            c.samples.append(tm.raw)
            c.seconds += tm.seconds
    if device_resident:  # throughput as a serving GPU sees it, beside the per-call latency
        for c in (c for c in cells if not c.error):
            if on_progress:
                on_progress(f"throughput: {c.rt.name} batch {c.batch}")
            try:
                c.stream_ips = time_throughput(c.rt, bufs[c.batch], seconds=max(0.5, opts.min_seconds / 2))
            except ResnetxError as e:
                c.error = str(e)


# --------------------------------------------------------------------------- the matrix
@dataclass
class _BenchRun:
    """What one bench measures with: the folder, the reference model, the accuracy data, the targets."""

    opts: BenchOptions
    manifest: Manifest
    reference: Reference
    gflops: float
    acc_batches: list[tuple[np.ndarray, np.ndarray]]
    acc_name: str | None
    notes: list[str]


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bench(opts: BenchOptions, *, on_row: Callable[[BenchRow], None] | None = None,
          on_progress: Callable[[str], None] | None = None,
          accuracy: tuple[str, list[tuple[np.ndarray, np.ndarray]]] | None = None, record: bool = True) -> BenchReport:
    """Run the matrix and write its report files to reports/<kind>/ (`record`), unless nothing could be timed
    (`nothing_ran`): then the last real run's files stay. `accuracy`: the labelled batches the accuracy column is
    measured on, and their name, when they come from elsewhere than --data (a fleet's driver)."""
    manifest = read_manifest(opts.folder)
    if opts.device == "cuda":
        require_cuda()
    targets = select_candidates(manifest, opts.folder, command="bench", runtimes=opts.runtimes,
                             precisions=opts.precisions, device=opts.device)
    with _threads(opts.threads):
        run = _prepare(opts, manifest, accuracy)
        cells, rows = _open_and_time(run, targets, on_progress)
    rows += [_row(c, run) for c in cells]
    run.notes += _notes(run, rows)
    for row in rows:
        if on_row:
            on_row(row)
    report = BenchReport(opts.folder, rows, system_info(tool_versions()), _opts_dict(opts), run.acc_name, run.notes,
                         gflops_per_image=round(run.gflops, 4), recommendations=_recommendations(run, rows))
    if record and not report.nothing_ran:  # a bench that timed nothing keeps the last real report
        try:
            write_bench_files(report, report.reports)
        except OSError as e:
            report.unwritten = e.strerror or str(e)
    return report


def _recommendations(run: _BenchRun, rows: list[BenchRow]) -> list[str]:
    """What to ship per device, from the timed rows: never an artifact whose standing verdict is a fail, and one
    never verified only with a word that says so (the PyTorch model in fp32 is the reference itself)."""
    files = {e.name: e.file for e in run.manifest.entries()}
    measured = [Measured(r.artifact, files.get(r.artifact, "the PyTorch model"), r.backend, r.precision, r.device,
                         r.batch, r.stream_ips or r.throughput_ips, r.accuracy_top1)
                for r in rows if r.latency_ms and r.throughput_ips]
    verdicts = standing(run.opts.folder, run.manifest)
    failing = {name for name, v in verdicts.items() if not v.passed}
    unverified = {m.artifact for m in measured if m.artifact not in verdicts
                  and not (m.artifact not in files and m.precision == Precision.fp32.value)}
    return recommend(measured, {p.value: s.tolerance.accuracy_drop for p, s in PRECISIONS.items()}, failing,
                     baseline_runtime(), unverified)


def _prepare(opts: BenchOptions, manifest: Manifest,
             accuracy: tuple[str, list[tuple[np.ndarray, np.ndarray]]] | None = None) -> _BenchRun:
    ref = Reference.of(manifest)
    info = ref.info
    run = _BenchRun(opts, manifest, ref, _gflops(opts.folder, manifest), [], None, [])
    engines = [e.file for e in manifest.entries() if isinstance(e, EngineEntry)]
    if engines and opts.device != "cuda":
        run.notes.append(f"{len(engines)} TensorRT engine(s) not timed: engines run on --device cuda only")
    if opts.accuracy and accuracy is not None:
        run.acc_name, run.acc_batches = accuracy
    elif opts.accuracy:
        ds = open_dataset(opts.data, split="test", data_dir=opts.data_dir, preprocess=info.preprocess)
        if ds.labels is None or len(ds.class_names or ()) != info.num_classes:
            run.notes.append(f"accuracy n/a: {ds.name} has no labels for this model's {info.num_classes} classes")
        else:
            n = min(len(ds), opts.accuracy_samples)
            spread = " drawn seeded across its classes" if spread_over_classes(ds, n) else ""
            run.acc_name = f"{ds.name} ({n} images{spread})"
            if order := label_order_note(ds.name, ds.class_names, info.class_names):
                run.notes.append(order)
            images = ImageSet(ds, info.preprocess, eval_indices(ds, n, opts.seed))  # as verify reads them
            run.acc_batches = list(zip(images.chunks(256), np.array_split(images.labels, range(256, n, 256)),
                                       strict=True))
    return run


def _open_and_time(run: _BenchRun, targets: list[Candidate],
                   on_progress: Callable[[str], None] | None) -> tuple[list[Cell], list[BenchRow]]:
    """Open every target (memory measured as each opens), time them all in interleaved rounds, close them."""
    opts = run.opts
    if opts.device == "cuda":
        torch.zeros(1, device="cuda")  # the CUDA context exists before the first runtime's memory is counted
    prime({t.runtime.name for t in targets}, opts.device)
    cells: list[Cell] = []
    failed: list[BenchRow] = []
    opened: list[Runtime] = []
    try:
        for t in targets:
            try:
                rt, load_s, acc, added = _open_cell(run, t)
            except (BackendUnavailable, IncompatibleArtifact) as e:  # not for this machine: the rest still runs
                failed.append(BenchRow(t.label, t.runtime.name, "", t.precision.value, t.device, 0,
                                       size_mb=_size_mb(t, run), error=str(e), artifact=t.key))
                continue
            opened.append(rt)
            if opts.auto_batch:
                cells += _sweep(run, Cell(t, rt, 1, load_s, acc, _size_mb(t, run), mem_mb=added), on_progress)
            else:
                cells += [Cell(t, rt, b, load_s, acc, _size_mb(t, run), mem_mb=added) for b in opts.batches]
        if not opts.auto_batch:
            time_cells(cells, opts, run.reference.info.input_shape, _device_resident(opts), on_progress)
    finally:
        for rt in reversed(opened):  # each restores the process-wide flags it found (TF32, cuDNN autotuning)
            rt.close()
    return cells, failed


def _sweep(run: _BenchRun, first: Cell, on_progress: Callable[[str], None] | None) -> list[Cell]:
    """--batch auto for one runtime: cells at batch 1, 2, 4, ... until its throughput saturates (sweep_batches);
    the note says where it stopped and why."""
    opts, cells = run.opts, []
    lo, hi = first.rt.batch_range or (1, 4096)

    def measure(b: int) -> float:
        if b < lo:
            raise BadInput(f"the artifact takes batches {lo}..{hi}")
        cell = replace(first, batch=b, samples=[])
        time_cells([cell], replace(opts, rounds=1), run.reference.info.input_shape, _device_resident(opts),
                   on_progress)
        if cell.error:
            raise BadInput(cell.error)
        cells.append(cell)
        return _images_per_s(cell)

    measured, why = sweep_batches(measure, max_batch=hi)
    best = max(cells, key=_images_per_s, default=None)
    run.notes.append(f"--batch auto: {first.rt.name} swept {', '.join(map(str, measured)) or 'nothing'}, stopped: "
                     f"{why}" + (f"; most images/s at batch {best.batch}" if best else ""))
    return cells


def _images_per_s(c: Cell) -> float:
    """A timed cell's throughput: back to back where measured so (cuda), else from its mean latency."""
    return c.stream_ips or c.batch / (float(np.concatenate(c.samples).mean()) / 1e3)


def _open_cell(run: _BenchRun, t: Candidate) -> tuple[Runtime, float, float | None, float]:
    """(runtime, load seconds, accuracy, memory it added): on the CPU the peak RSS above the level before (Linux
    VmHWM, restarted per runtime; else the RSS left after), on the GPU the device memory in use it added."""
    opts = run.opts
    if opts.device == "cpu":
        trim_heap()
    t0 = time.perf_counter()
    before = mem_mb(opts.device)
    peak_tracked = opts.device == "cpu" and reset_peak_rss()
    fixed = isinstance(t.entry, GraphEntry) and t.entry.static_batch  # its one shape: no profile to give
    extra = opener_options(t.runtime, opts, input_chw=run.reference.info.input_shape,
                                 **({"trt_profile": None} if fixed else {}))
    rt = open_candidate(t, opts.folder, run.manifest, run.reference, **extra)
    load_s = time.perf_counter() - t0
    largest = 64 if opts.auto_batch else max(opts.batches)
    acc, broken = _accuracy(rt, run.acc_batches, largest) if run.acc_batches else (None, 0)
    with contextlib.suppress(ResnetxError):  # allocate arenas at the largest batch before measuring
        _, hi = rt.batch_range or (1, largest)
        broken += _nonfinite_rows(rt.infer(np.ones((min(largest, hi), *run.reference.info.input_shape),
                                                   np.float32)))
    if broken:  # timing a model that answers NaN is no benchmark: say so beside its rows
        run.notes.append(f"{rt.name} gave NaN/Inf logits for {broken} input(s): its rows time a broken "
                         f"artifact; resnetx verify {opts.folder} says where it breaks")
    after = (peak_rss_mb() if peak_tracked else None) or mem_mb(opts.device)
    return rt, load_s, acc, max(0.0, after - before)


def _device_resident(opts: BenchOptions) -> bool:
    return opts.device == "cuda" and not opts.include_transfers


def _size_mb(t: Candidate, run: _BenchRun) -> float | None:
    if t.entry is not None:
        return t.entry.size_bytes / 2**20
    model = run.reference.model
    if model is None:
        return None
    return sum(p.numel() * 4 for p in model.parameters()) / 2**20 * (0.5 if t.precision is Precision.fp16 else 1)


def _accuracy(rt: Runtime, batches: list[tuple[np.ndarray, np.ndarray]], batch: int) -> tuple[float, int]:
    """(top-1 %, inputs whose logits hold NaN/Inf), in chunks of a benchmarked batch size: a compiled or
    captured runtime sees no new shape."""
    correct = total = broken = 0
    for x, y in batches:
        logits = rt.infer_all(x, batch)
        correct += int((logits.argmax(1) == y).sum())
        broken += _nonfinite_rows(logits)
        total += len(y)
    return 100.0 * correct / max(total, 1), broken


def _nonfinite_rows(logits: np.ndarray) -> int:
    """How many inputs got a NaN or Inf among their logits."""
    return int((~np.isfinite(logits)).any(1).sum())


def _row(c: Cell, run: _BenchRun) -> BenchRow:
    t, opts = c.target, run.opts
    base = {"runtime": c.rt.name, "backend": t.runtime.name, "mode": c.rt.mode, "precision": t.precision.value,
            "device": c.rt.device, "batch": c.batch, "accuracy_top1": c.acc, "size_mb": c.size_mb, "artifact": t.key}
    if c.error or not c.samples:
        return BenchRow(**base, load_s=c.load_s, error=c.error)
    tm = Timing.from_samples(np.concatenate(c.samples), c.seconds, c.samples)
    ips = c.batch / (tm.mean / 1e3)
    tflops = ips * run.gflops / 1e3
    return BenchRow(**{**base, "size_mb": round(c.size_mb, 2) if c.size_mb is not None else None},
                    latency_ms={k: round(getattr(tm, k), 4) for k in LATENCY_KEYS},
                    throughput_ips=round(ips, 3), peak_mem_mb=round(c.mem_mb, 1), load_s=round(c.load_s, 3),
                    compile_s=c.rt.one_time_seconds.get(c.batch),
                    build_s=t.entry.seconds if isinstance(t.entry, EngineEntry) else None,
                    transfers_included=not _device_resident(opts), iters=tm.iters, tflops=round(tflops, 5),
                    peak_pct=round(100 * tflops / opts.peak_tflops, 2) if opts.peak_tflops else None,
                    stream_ips=round(c.stream_ips, 1) if c.stream_ips else None)


def _notes(run: _BenchRun, rows: list[BenchRow]) -> list[str]:
    opts = run.opts
    cal = run.manifest.calibration
    notes = stability_notes(rows, opts) + _int8_notes(run, rows)
    if opts.device == "cpu" and any(r.precision == "int8" for r in rows) and cal is not None and (
            isa := isa_mismatch(cal.isa, cal.recipe)):
        notes.append(isa)
    if any(r.precision == "int8" and r.accuracy_top1 is not None for r in rows):
        if overlap := calibration_overlap_note(cal.dataset if cal else None, opts.data):
            notes.append(overlap)
    fp32 = next((r.accuracy_top1 for r in rows if r.precision == "fp32" and r.accuracy_top1 is not None), None)
    if chance := near_chance_note(fp32, run.reference.info.num_classes, run.acc_name or opts.data):
        notes.append(chance)
    for name in dict.fromkeys(r.backend for r in rows if r.latency_ms):  # what each timed runtime's row says
        spec = RUNTIMES.get(name)
        if spec is not None and (fn := hook(spec, spec.bench_notes)) is not None:
            notes += fn(opts, opts.device)
    return notes


def stability_notes(rows: list[BenchRow], opts: BenchOptions) -> list[str]:
    """Rows whose latency varies too much to compare closely, and how to run longer."""
    bar = UNSTABLE_COV.get(opts.device, 0.10)
    shaky = [f"{r.runtime} batch {r.batch} (CoV {100 * lat['cov']:.0f}%, rounds {100 * lat['round_spread']:.0f}% "
             "apart)" for r in rows
             if (lat := r.latency_ms) and (lat["cov"] > bar or lat["round_spread"] > UNSTABLE_SPREAD)]
    if not shaky:
        return []
    return [f"unstable timings (coefficient of variation above {100 * bar:.0f}%, or per-round medians more than "
            f"{100 * UNSTABLE_SPREAD:.0f}% apart): {', '.join(shaky)}; run longer (--min-seconds "
            f"{max(5, 2 * opts.min_seconds):g}, --rounds {opts.rounds + 2}) on an otherwise idle machine before "
            "comparing these rows closely"]


def _int8_notes(run: _BenchRun, rows: list[BenchRow]) -> list[str]:
    """int8 rows that are not at least INT8_GAIN faster than the same runtime's fp16/fp32 row, and why."""
    slow = []
    for r in (r for r in rows if r.precision == "int8" and r.latency_ms):
        peers = [o for o in rows if o.latency_ms and o.precision in ("fp16", "fp32") and (o.backend, o.device, o.batch)
                 == (r.backend, r.device, r.batch)]
        if peers and r.latency_ms["p50"] > (1 - INT8_GAIN) * (best := min(peers, key=lambda o: o.latency_ms["p50"])
                                                                 ).latency_ms["p50"]:
            slow.append(f"{r.runtime} batch {r.batch} {r.latency_ms['p50']:.3g} ms vs {best.runtime} "
                        f"{best.latency_ms['p50']:.3g} ms")
    if not slow:
        return []
    return [f"int8 is not at least {100 * INT8_GAIN:.0f}% faster than fp16/fp32 here ({'; '.join(slow)}); likely: "
            f"{'; '.join(_int8_causes(run, rows)) or 'no cause resnetx can tell'}"]


def _int8_causes(run: _BenchRun, rows: list[BenchRow]) -> list[str]:
    """Why int8 may not pay: this CPU's instruction sets, and what each runtime that timed int8 here says of the
    graph (its row's int8_causes)."""
    causes = []
    cal, int8 = run.manifest.calibration, run.manifest.graphs.get(Precision.int8)
    if run.opts.device == "cpu" and not set(cpu_isa()) & INT8_DOT:
        causes.append("this CPU reports no int8 dot-product instructions (avx512_vnni, avx_vnni or amx_int8 in "
                      "/proc/cpuinfo), so int8 kernels gain little over fp32 there")
    if int8 is None:
        return causes
    layers = len(quantized_layers_of(run.opts.folder / int8.file))
    for name in dict.fromkeys(r.backend for r in rows if r.precision == "int8" and r.latency_ms):
        spec = RUNTIMES.get(name)
        if spec is not None and (fn := hook(spec, spec.int8_causes)) is not None:
            causes += fn(run.opts.folder / int8.file, cal.recipe if cal else None, layers, run.opts.device)
    return causes


def quantized_layers_of(path: Path) -> list[str]:
    """The int8 graph's quantized conv/gemm layers."""
    import onnx

    from exporters.quantize import quantized_layers

    return quantized_layers(onnx.load(str(path)))


def _opts_dict(opts: BenchOptions) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v.value if hasattr(v, "value") else v

    return {k: plain(v) for k, v in asdict(opts).items()}


def compare_reports(current: BenchReport, other_path: Path) -> list[dict[str, Any]]:
    """Per matching row (runtime, precision, device, batch): p50 latency and throughput ratios."""
    try:
        other = json.loads(Path(other_path).read_text())
        old = {(r["runtime"], r["precision"], r["device"], r["batch"]): r for r in other["rows"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise BadInput(f"--compare {other_path} is not a resnetx bench.json ({e})") from e
    out = []
    for r in current.rows:
        o = old.get((r.runtime, r.precision, r.device, r.batch))
        if o is None or r.latency_ms is None or not o.get("latency_ms"):
            continue
        out.append({"runtime": r.runtime, "precision": r.precision, "batch": r.batch,
                    "p50_ms": r.latency_ms["p50"], "other_p50_ms": o["latency_ms"]["p50"],
                    "speedup": o["latency_ms"]["p50"] / r.latency_ms["p50"],
                    "throughput_ratio": (r.throughput_ips or 0) / max(o.get("throughput_ips") or 1e-9, 1e-9)})
    return out
