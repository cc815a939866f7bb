"""PyTorch runner: eager, channels_last, CUDA graphs or torch.compile; cpu or cuda; fp32 or fp16."""

from __future__ import annotations

import copy
import logging
import os
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnetx.errors import BadInput
from resnetx.lazy import lazy_import
from runtimes.base import Runtime, require_cuda

if TYPE_CHECKING:
    import torch
    from torch import nn
else:
    torch = lazy_import("torch")

__all__ = ["CompileMode", "TorchRuntime", "open_torch", "use_compile_cache_dir"]

log = logging.getLogger(__name__)


class CompileMode(str, Enum):
    max_autotune_no_cudagraphs = "max-autotune-no-cudagraphs"  # minutes of autotuning, the fastest kernels
    max_autotune = "max-autotune"
    reduce_overhead = "reduce-overhead"
    default = "default"  # fastest to compile

    @property
    def captures_graphs(self) -> bool:
        """It captures CUDA graphs itself: one cannot be captured inside another (--cuda-graph)."""
        return self in (CompileMode.max_autotune, CompileMode.reduce_overhead)


class TorchRuntime(Runtime):
    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        cuda_graph: bool = False,
        compile: bool = False,
        compile_mode: CompileMode | str = CompileMode.max_autotune_no_cudagraphs,
        compile_cache: Path | None = None,
        cudnn_benchmark: bool = False,
    ) -> None:
        modes = [m for m, on in (("cl", channels_last), ("graph", cuda_graph), ("compile", compile)) if on]
        super().__init__(device=device, precision=precision, mode="+".join(modes))
        if precision not in ("fp32", "fp16"):
            raise BadInput(f"the torch runtime runs fp32 or fp16, not {precision}")
        if device == "cuda":
            require_cuda()
        if cuda_graph and device != "cuda":
            raise BadInput("--cuda-graph needs --device cuda")
        if precision == "fp16" and device == "cpu":
            log.warning("fp16 on the CPU is emulated by PyTorch and slow; it is for parity checks, not speed")
        self._flags_before: list[tuple[Any, str, bool]] = []  # process-wide torch flags, restored on close
        if device == "cuda":  # fp32 means fp32: no TF32 rounding in cuDNN convs or cuBLAS matmuls
            self._set_flag(torch.backends.cudnn, "allow_tf32", False)
            self._set_flag(torch.backends.cuda.matmul, "allow_tf32", False)
            if cudnn_benchmark:  # cuDNN times its algorithms per shape, as onnxruntime's EXHAUSTIVE search does
                self._set_flag(torch.backends.cudnn, "benchmark", True)
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._fmt = torch.channels_last if channels_last else torch.contiguous_format
        self._model = copy.deepcopy(model).eval().to(device=device, dtype=self._dtype, memory_format=self._fmt)
        self._fn: Any = self._model
        if compile:
            if compile_cache is not None:  # autotuning results persist: the next run skips most compile time
                use_compile_cache_dir(Path(compile_cache))
                os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
                os.environ.setdefault("TORCHINDUCTOR_AUTOTUNE_LOCAL_CACHE", "1")
            from torch import _dynamo

            # one graph per batch size (static shapes); past the limit dynamo would quietly run eager
            cfg = _dynamo.config
            for limit in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
                if hasattr(cfg, limit):
                    setattr(cfg, limit, max(getattr(cfg, limit), 64))
            for fail in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
                if hasattr(cfg, fail):
                    setattr(cfg, fail, True)
            self._fn = torch.compile(self._model, mode=CompileMode(compile_mode).value, dynamic=False)
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._cuda_graph = cuda_graph
        self.static_shapes = compile or cuda_graph

    def _set_flag(self, owner: Any, name: str, value: bool) -> None:
        self._flags_before.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def _prepare(self, batch: Any) -> torch.Tensor:
        t = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
        return t.to(device=self.device, dtype=self._dtype, non_blocking=True).contiguous(memory_format=self._fmt)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        # the first call per batch size compiles and/or captures: a one-time cost, reported apart
        first = self.static_shapes and n not in self.one_time_seconds
        start = time.perf_counter() if first else 0.0
        with torch.inference_mode():
            out = self._replay(x) if self._cuda_graph else self._fn(x)
        if first:
            if self.device == "cuda":
                torch.cuda.synchronize()
            self.one_time_seconds[n] = time.perf_counter() - start
        return out

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm up cuDNN autotuning outside the graph
                    self._fn(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._fn(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x, non_blocking=True)
        graph.replay()
        return static_out

    def _infer_async(self, batch: Any) -> Any:
        return self._run(self._prepare(batch))

    def _synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _infer(self, batch: Any) -> np.ndarray:
        out = self._run(self._prepare(batch))
        return out.float().cpu().numpy()

    def _close(self) -> None:
        self._graphs.clear()
        self._fn = self._model = None
        for owner, name, value in reversed(self._flags_before):  # runtimes open together close in reverse order
            setattr(owner, name, value)
        self._flags_before.clear()


def use_compile_cache_dir(path: Path) -> None:
    """Point inductor's cache at `path` unless the user chose one. torch itself fills in
    TORCHINDUCTOR_CACHE_DIR with its default the first time anything asks (even a FLOP count), so
    that default counts as unset."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        torch_default: str | None = os.path.abspath(default_cache_dir())
    except ImportError:  # another torch layout: only an unset variable is ours to set
        torch_default = None
    if current is None or os.path.abspath(current) == torch_default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path.resolve())


def open_torch(model: nn.Module, *, device: str = "cpu", **opts: Any) -> TorchRuntime:
    if not isinstance(model, torch.nn.Module):
        raise BadInput("the torch runtime needs the PyTorch model, rebuilt from the manifest")
    return TorchRuntime(model, device=device, **opts)


def prime(device: str) -> None:
    """Load torch's kernels once (code pages, thread pools, oneDNN state; on cuda cuDNN and cuBLAS handles) before
    any memory baseline."""
    with torch.inference_mode():
        x = torch.ones(1, 3, 8, 8, device=device)
        torch.nn.functional.conv2d(x, torch.ones(4, 3, 3, 3, device=device), padding=1)
        torch.nn.functional.linear(x.flatten(1), torch.ones(4, 192, device=device))
    if device == "cuda":
        torch.cuda.synchronize()


def devices() -> tuple[str, ...]:
    """Where torch runs here: the CPU, and CUDA where it sees a GPU."""
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def bench_notes(options: Any, device: str) -> list[str]:
    """What bench says under torch's rows: TF32 and cuDNN autotuning on CUDA, torch.compile's mode and cache."""
    notes = []
    if device == "cuda":
        notes.append("torch on cuda: TF32 off; cuDNN autotuning (torch.backends.cudnn.benchmark) "
                     + ("on, paid in warm-up like onnxruntime's EXHAUSTIVE search" if options.cudnn_benchmark
                        else "off (--no-cudnn-benchmark)"))
    if getattr(options, "compile", False):
        notes.append(f"torch.compile mode {options.compile_mode.value}, cache: "
                     f"{os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'torch default')}")
    return notes
