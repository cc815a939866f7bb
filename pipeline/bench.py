"""Latency, throughput, memory and accuracy over runtimes x precisions x batch sizes."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters.onnx import INPUT_NAME
from pipeline.artifacts import check_sha, read_manifest, system_info
from pipeline.data import calibration_overlap_note, iter_batches, label_order_note, open_dataset
from pipeline.export import reference_if_here
from runtimes.base import Runtime, open_runtime, require_cuda
from runtimes.errors import BackendUnavailable, BadInput, IncompatibleArtifact, ResnetxError

__all__ = ["BenchOptions", "Timing", "BenchRow", "BenchReport", "time_runtime", "bench", "check_batches",
           "compare_reports", "model_gflops"]

log = logging.getLogger(__name__)
N_BUFFERS = 4  # inputs rotated so caches cannot flatter small models


@dataclass(frozen=True)
class BenchOptions:
    folder: Path
    runtimes: tuple[str, ...] | None = None  # None: torch + ort (+ trt on cuda)
    precisions: tuple[str, ...] | None = None
    device: str = "cpu"
    batches: tuple[int, ...] = (1, 8, 32)
    warmup: int = 10
    warmup_seconds: float = 0.5
    iters: int = 50
    min_seconds: float = 1.0
    max_seconds: float = 60.0
    rounds: int = 3  # interleaved passes over all runtimes; iters/min_seconds are totals
    threads: int | None = None
    channels_last: bool = False
    cuda_graph: bool = False
    compile: bool = False
    compile_mode: str = "max-autotune-no-cudagraphs"  # torch.compile's mode (default: minutes, fastest kernels)
    cudnn_benchmark: bool = True  # torch on cuda: cuDNN autotunes per shape (in warm-up), like ort's EXHAUSTIVE
    prefer_nhwc: bool = False
    include_transfers: bool = False
    accuracy: bool = True
    data: str = "sample"
    data_dir: Path | None = None
    accuracy_samples: int = 1000
    seed: int = 0
    peak_tflops: float | None = None  # the device's compute peak at this precision: rows get % of it


@dataclass
class Timing:
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    iters: int
    seconds: float
    raw: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))  # every sample, ms

    @classmethod
    def from_samples(cls, ms: np.ndarray, seconds: float) -> Timing:
        p = np.percentile(ms, [50, 90, 95, 99])
        return cls(float(p[0]), float(p[1]), float(p[2]), float(p[3]), float(ms.mean()), float(ms.std()),
                   float(ms.min()), int(len(ms)), float(seconds), ms)


@dataclass
class BenchRow:
    runtime: str
    backend: str
    mode: str
    precision: str
    device: str
    batch: int
    latency_ms: dict[str, float] | None
    throughput_ips: float | None
    peak_mem_mb: float | None
    accuracy_top1: float | None
    size_mb: float | None
    load_s: float | None
    compile_s: float | None = None  # torch.compile: first call at this batch size, not in the latency
    build_s: float | None = None  # TensorRT engine: build time recorded at export
    transfers_included: bool = True
    iters: int = 0
    tflops: float | None = None  # achieved: throughput x the model's FLOPs per image
    peak_pct: float | None = None  # tflops as % of --peak-tflops
    error: str | None = None

    @property
    def one_time_s(self) -> float | None:
        """What this row paid once and never inside its latency: compile/capture, or the engine build."""
        return self.compile_s if self.compile_s is not None else self.build_s


@dataclass
class BenchReport:
    folder: Path
    rows: list[BenchRow]
    system: dict[str, Any]
    options: dict[str, Any]
    accuracy_data: str | None = None
    notes: list[str] = field(default_factory=list)
    gflops_per_image: float | None = None

    @property
    def nothing_ran(self) -> bool:
        """No row was timed (every runtime missing or failing): no numbers to report."""
        return bool(self.rows) and all(r.latency_ms is None for r in self.rows)

    @property
    def written(self) -> bool:
        """reports/bench.* hold this run; when nothing ran, the last real run is kept instead."""
        return not self.nothing_ran

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "system": self.system, "options": self.options,
                "accuracy_data": self.accuracy_data, "gflops_per_image": self.gflops_per_image, "notes": self.notes,
                "rows": [asdict(r) for r in self.rows]}


def model_gflops(model: torch.nn.Module, input_shape: tuple[int, int, int]) -> float:
    """FLOPs per image (2 x the multiply-adds of convolutions and linear layers), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    return counter.get_total_flops() / 1e9


# --------------------------------------------------------------------------- system
def _mem_mb(device: str) -> float:
    """Memory in use: the GPU's (every allocator: torch, onnxruntime, TensorRT) on cuda, else the RSS."""
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20
    return _rss_mb()


def _trim_heap() -> None:
    """Give freed heap memory back to the OS before a baseline is taken. glibc keeps what the process freed
    (an export before the bench, as in `resnetx run`, or the runtime opened before) and hands it out again
    without the RSS rising, so a runtime opened after it read 0 MB."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): the RSS may read low after earlier work
        pass


def _prime_backends(backends: set[str], device: str) -> None:
    """Run each backend once on a tiny graph before any baseline: loading and first use of its library
    (code pages, thread pools, oneDNN state; on cuda torch's cuDNN and cuBLAS handles) is a cost of the
    process, paid once; without this the first runtime of each backend carried it (on the CPU the default
    model's ort fp32 read 34 MB, fp16 5 MB)."""
    if "torch" in backends:
        with torch.inference_mode():
            x = torch.ones(1, 3, 8, 8, device=device)
            torch.nn.functional.conv2d(x, torch.ones(4, 3, 3, 3, device=device), padding=1)
            torch.nn.functional.linear(x.flatten(1), torch.ones(4, 192, device=device))
        if device == "cuda":
            torch.cuda.synchronize()
    if "ort" in backends and device == "cpu":  # the CUDA provider's handles belong to each session
        with contextlib.suppress(ImportError):  # a missing onnxruntime is reported by its rows
            import onnxruntime as ort
            from onnx import TensorProto, helper

            w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(108, np.float32))
            graph = helper.make_graph(
                [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "prime",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            sess.run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})


def _reset_peak_rss() -> bool:
    """Linux: restart the process's peak-RSS mark (VmHWM) so the next peak is this runtime's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- timing
def time_runtime(
    rt: Runtime,
    inputs: list[Any],
    *,
    warmup: int,
    warmup_seconds: float,
    iters: int,
    min_seconds: float,
    max_seconds: float = 60.0,
    device_resident: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Warm up (by count AND time), then time single runs until both `iters` and `min_seconds`
    are met (or `max_seconds` passes). Each sample is one synchronised call on the next buffer.

    device_resident: inputs already on the device and outputs left there (enqueue + sync timed);
    otherwise host in -> host out, transfers included.
    """
    if iters < 1 or warmup < 0:
        raise BadInput("--iters must be >= 1 and --warmup >= 0")

    def once(x: Any) -> None:
        if device_resident:
            rt.infer_async(x)
            rt.synchronize()
        else:
            rt.infer(x)

    start = clock()
    i = 0
    while i < warmup or clock() - start < warmup_seconds:
        once(inputs[i % len(inputs)])
        i += 1
        if clock() - start > max_seconds:
            break
    samples: list[float] = []
    t_start = clock()
    while len(samples) < iters or clock() - t_start < min_seconds:
        x = inputs[len(samples) % len(inputs)]
        t0 = clock()
        once(x)
        samples.append((clock() - t0) * 1e3)
        if clock() - t_start > max_seconds and len(samples) >= 3:
            break
    return Timing.from_samples(np.asarray(samples), clock() - t_start)


def _buffers(shape: tuple[int, ...], n: int, seed: int, device: str) -> list[Any]:
    rng = np.random.default_rng(seed)
    host = [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]  # never zeros
    if device == "cuda":
        return [torch.from_numpy(h).cuda() for h in host]
    return host


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class _Target:
    backend: str
    precision: str
    artifact: Any  # nn.Module (None when its weights are not here), or manifest entry
    size_mb: float | None


# ort-trt: onnxruntime's TensorRT execution provider, opt-in (it needs onnxruntime-gpu built with it AND
# TensorRT's libraries; onnxruntime lists the provider even where those are missing)
BENCH_RUNTIMES = ("torch", "ort", "ort-trt", "trt")


def _targets(opts: BenchOptions, manifest: Any, model: torch.nn.Module | None) -> list[_Target]:
    runtimes = opts.runtimes or (("torch", "ort", "trt") if opts.device == "cuda" else ("torch", "ort"))
    bad = [r for r in runtimes if r not in BENCH_RUNTIMES]
    if bad:
        raise BadInput(f"unknown runtime {', '.join(bad)}; choose from {', '.join(BENCH_RUNTIMES)}")
    if "ort-trt" in runtimes and opts.device != "cuda":
        raise BadInput("--runtime ort-trt (onnxruntime's TensorRT execution provider) needs --device cuda")
    precisions = opts.precisions or ("fp32", "fp16", "int8")
    bad = [p for p in precisions if p not in ("fp32", "fp16", "int8")]
    if bad:
        raise BadInput(f"unknown precision {', '.join(bad)}; choose from fp32, fp16, int8")
    out: list[_Target] = []
    params_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20 if model is not None else None
    if "torch" in runtimes:
        torch_precisions = ["fp32"] + (["fp16"] if opts.device == "cuda" else [])
        out += [_Target("torch", p, model, params_mb and params_mb * (0.5 if p == "fp16" else 1))
                for p in torch_precisions if p in precisions]
    for entry in manifest.artifacts.values():
        if entry["precision"] not in precisions:
            continue
        backends = ("ort", "ort-trt") if entry["kind"] == "onnx" else ("trt",)
        out += [_Target(b, entry["precision"], entry, entry["size_bytes"] / 2**20) for b in backends if b in runtimes]
    if not out:
        raise BadInput(f"nothing to benchmark for runtime(s) {', '.join(runtimes)} and precision(s) "
                       f"{', '.join(precisions)}: {opts.folder} holds {manifest.holdings()} (torch runs fp32, and fp16 "
                       "on cuda)")
    return out


def _open(t: _Target, opts: BenchOptions, folder: Path, missing: str, input_shape: tuple[int, ...]) -> Runtime:
    if t.backend == "torch":
        if t.artifact is None:
            raise BackendUnavailable(f"the torch runtime runs the PyTorch model: {missing}")
        return open_runtime("torch", t.artifact, device=opts.device, precision=t.precision,
                            channels_last=opts.channels_last, cuda_graph=opts.cuda_graph, compile=opts.compile,
                            compile_mode=opts.compile_mode, cudnn_benchmark=opts.cudnn_benchmark,
                            compile_cache=folder / "inductor_cache" if opts.compile else None)
    path = check_sha(folder, t.artifact)
    if t.backend == "trt":
        return open_runtime("trt", path, device="cuda", entry=t.artifact, cuda_graph=opts.cuda_graph)
    if t.backend == "ort-trt":  # one engine for the whole batch range, built once, cached beside the graph
        shape = "x".join(map(str, input_shape))
        lo, opt, hi = min(opts.batches), max(opts.batches), max(opts.batches)
        profile = {f"trt_profile_{k}_shapes": f"{INPUT_NAME}:{b}x{shape}" for k, b in (("min", lo), ("opt", opt),
                                                                                    ("max", hi))}
        if t.artifact.get("static_batch"):  # a fixed-batch graph has its one shape: no profile to give
            profile = {}
        return open_runtime("ort", path, device="cuda", precision=t.precision, provider="trt-ep",
                            provider_options=profile)
    return open_runtime("ort", path, device=opts.device, precision=t.precision, threads=opts.threads,
                        prefer_nhwc=opts.prefer_nhwc)


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


def check_batches(batches: tuple[int, ...]) -> tuple[int, ...]:
    """--batch as given, or the one-line reason it cannot be benchmarked."""
    if not batches or min(batches) < 1:
        raise BadInput("--batch needs sizes >= 1, e.g. --batch 1,8,32")
    return batches


def bench(opts: BenchOptions, *, on_row: Callable[[BenchRow], None] | None = None,
          on_progress: Callable[[str], None] | None = None) -> BenchReport:
    """Run the matrix; write reports/bench.{json,md,csv,png} (unless nothing could be timed)."""
    folder = Path(opts.folder)
    manifest = read_manifest(folder)
    check_batches(opts.batches)
    if opts.device != "cuda":  # flags that would change nothing on the CPU, yet label its rows
        cuda_only = [flag for flag, on in (("--prefer-nhwc", opts.prefer_nhwc), ("--cuda-graph", opts.cuda_graph),
                                           ("--include-transfers", opts.include_transfers)) if on]
        if cuda_only:
            raise BadInput(f"{', '.join(cuda_only)} needs --device cuda (onnxruntime's CUDA provider layout, "
                           "CUDA graph replay, host<->device copies); on the CPU leave it out")
    if opts.compile and opts.cuda_graph and opts.compile_mode in ("reduce-overhead", "max-autotune"):
        raise BadInput(f"--compile-mode {opts.compile_mode} captures CUDA graphs itself, and one cannot be captured "
                       "inside another: leave out --cuda-graph, or use --compile-mode max-autotune-no-cudagraphs")
    if opts.device == "cuda":
        require_cuda()
    threads_before = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        return _bench(opts, folder, manifest, on_row, on_progress)
    finally:
        torch.set_num_threads(threads_before)


@dataclass
class _Cell:
    """One runtime x batch size; its samples gather over the interleaved rounds."""

    target: _Target
    rt: Runtime
    batch: int
    load_s: float
    acc: float | None
    samples: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0
    mem_mb: float = 0.0
    error: str | None = None

    @property
    def compile_s(self) -> float | None:
        return getattr(self.rt, "compile_seconds", {}).get(self.batch)


def _time_cells(cells: list[_Cell], opts: BenchOptions, shape: tuple[int, ...], device_resident: bool,
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
                                  iters=iters, min_seconds=opts.min_seconds / rounds, max_seconds=opts.max_seconds / rounds,
                                  device_resident=device_resident)
            except ResnetxError as e:
                c.error = str(e)
                continue
            c.samples.append(tm.raw)
            c.seconds += tm.seconds


def _bench(opts: BenchOptions, folder: Path, manifest: Any, on_row: Callable[[BenchRow], None] | None,
           on_progress: Callable[[str], None] | None = None) -> BenchReport:
    model, info, missing = reference_if_here(manifest)
    if opts.peak_tflops is not None and opts.peak_tflops <= 0:
        raise BadInput("--peak-tflops must be > 0")
    from pipeline.models import build_model

    # FLOPs do not depend on the weights: a fresh model counts when the reference's are not here
    counted = model if model is not None else build_model(info.arch, num_classes=info.num_classes,
                                                          in_chans=info.in_chans)
    gflops = model_gflops(counted, info.input_shape)
    notes: list[str] = []
    engines = [e["file"] for e in manifest.artifacts.values() if e["kind"] == "engine"]
    if engines and opts.device != "cuda":
        notes.append(f"{len(engines)} TensorRT engine(s) not timed: engines run on --device cuda only")
    acc_batches: list[tuple[np.ndarray, np.ndarray]] = []
    acc_name = None
    if opts.accuracy:
        ds = open_dataset(opts.data, split="test", data_dir=opts.data_dir, preprocess=info.preprocess)
        if ds.labels is None or len(ds.class_names or ()) != info.num_classes:
            notes.append(f"accuracy n/a: {ds.name} has no labels for this model's {info.num_classes} classes")
        else:
            acc_name = f"{ds.name} ({min(len(ds), opts.accuracy_samples)} images)"
            if order := label_order_note(ds.name, ds.class_names, info.class_names):
                notes.append(order)
            acc_batches = [(b.x, b.y) for b in iter_batches(ds, info.preprocess, 256, limit=opts.accuracy_samples)
                           if b.y is not None]
    device_resident = opts.device == "cuda" and not opts.include_transfers
    if opts.device == "cuda":
        torch.zeros(1, device="cuda")  # the CUDA context exists before the first runtime's memory is counted
    rows: list[BenchRow] = []
    cells: list[_Cell] = []
    opened: list[Runtime] = []
    targets = _targets(opts, manifest, model)
    _prime_backends({t.backend for t in targets}, opts.device)
    try:
        for t in targets:
            if opts.device == "cpu":
                _trim_heap()
            t0 = time.perf_counter()
            mem0 = _mem_mb(opts.device)
            peak_tracked = opts.device == "cpu" and _reset_peak_rss()
            try:
                rt = _open(t, opts, folder, missing, info.input_shape)
            except (BackendUnavailable, IncompatibleArtifact) as e:  # not for this machine: the rest still runs
                device = "cuda" if t.backend in ("trt", "ort-trt") else opts.device
                rows.append(BenchRow(f"{t.backend}-{device}-{t.precision}", t.backend, "", t.precision,
                                     device, 0, None, None, None, None, t.size_mb, None, error=str(e)))
                continue
            opened.append(rt)
            load_s = time.perf_counter() - t0
            acc, broken = _accuracy(rt, acc_batches, max(opts.batches)) if acc_batches else (None, 0)
            with contextlib.suppress(ResnetxError):  # allocate arenas at the largest batch before measuring
                lo, hi = rt.batch_range or (1, max(opts.batches))
                y = rt.infer(np.ones((min(max(opts.batches), hi), *info.input_shape), np.float32))
                broken += _nonfinite_rows(y)
            if broken:  # timing a model that answers NaN is no benchmark: say so beside its rows
                notes.append(f"{rt.name} gave NaN/Inf logits for {broken} input(s): its rows time a broken "
                             f"artifact; resnetx verify {folder} says where it breaks")
            # what opening and running this runtime at the largest batch took: on the CPU the peak RSS above
            # the level before (Linux VmHWM, restarted per runtime; else the RSS left after), on the GPU the
            # device memory in use it added (all runtimes stay open for the rounds, so totals are shared)
            after = (_peak_rss_mb() if peak_tracked else None) or _mem_mb(opts.device)
            added = max(0.0, after - mem0)
            cells += [_Cell(t, rt, b, load_s, acc, mem_mb=added) for b in opts.batches]
        _time_cells(cells, opts, info.input_shape, device_resident, on_progress)
    finally:
        for rt in reversed(opened):  # each restores the process-wide flags it found (TF32, cuDNN autotuning)
            rt.close()
    for c in cells:
        if c.error or not c.samples:
            rows.append(BenchRow(c.rt.name, c.target.backend, c.rt.mode, c.target.precision, c.rt.device, c.batch,
                                 None, None, None, c.acc, c.target.size_mb, c.load_s, error=c.error))
            continue
        tm = Timing.from_samples(np.concatenate(c.samples), c.seconds)
        lat = {k: round(getattr(tm, k), 4) for k in ("p50", "p90", "p95", "p99", "mean", "std", "min")}
        ips = c.batch / (tm.mean / 1e3)
        tflops = ips * gflops / 1e3
        rows.append(BenchRow(c.rt.name, c.target.backend, c.rt.mode, c.target.precision, c.rt.device, c.batch, lat,
                             round(ips, 3), round(c.mem_mb, 1), c.acc, round(c.target.size_mb, 2),
                             round(c.load_s, 3), compile_s=c.compile_s, build_s=_build_s(c.target),
                             transfers_included=not device_resident, iters=tm.iters, tflops=round(tflops, 5),
                             peak_pct=round(100 * tflops / opts.peak_tflops, 2) if opts.peak_tflops else None))
    if opts.device == "cpu" and any(r.backend == "ort" and r.precision == "int8" and r.latency_ms for r in rows):
        q = manifest.artifacts.get("int8", {})
        if q.get("recipe") == "tensorrt":
            notes.append("ort int8 here is the TensorRT recipe (symmetric int8 activations, float bias), made for "
                         "TensorRT engines; onnxruntime's x86 kernels do not speed it up. For CPU deployment export "
                         "with --int8-target cpu (uint8 activations, int32 bias)")
    if any(r.precision == "int8" and r.accuracy_top1 is not None for r in rows):
        if overlap := calibration_overlap_note(manifest.calibration, opts.data):
            notes.append(overlap)
    if opts.device == "cuda" and any(r.backend == "torch" and r.latency_ms for r in rows):
        notes.append("torch on cuda: TF32 off; cuDNN autotuning (torch.backends.cudnn.benchmark) "
                     + ("on, paid in warm-up like onnxruntime's EXHAUSTIVE search" if opts.cudnn_benchmark
                        else "off (--no-cudnn-benchmark)"))
    if opts.compile and "torch" in (opts.runtimes or ("torch",)):
        notes.append(f"torch.compile mode {opts.compile_mode}, cache: "
                     f"{os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'torch default')}")
    for row in rows:
        if on_row:
            on_row(row)
    report = BenchReport(folder, rows, system_info(), _opts_dict(opts), acc_name, notes,
                         gflops_per_image=round(gflops, 4))
    from pipeline.report import write_bench_files

    if report.written:
        write_bench_files(report, folder / "reports")
    return report


def _build_s(t: _Target) -> float | None:
    return t.artifact.get("build_seconds") if t.backend == "trt" else None


def _opts_dict(opts: BenchOptions) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}


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
