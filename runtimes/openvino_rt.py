"""OpenVINO runner: the folder's ONNX graphs (fp32, fp16, int8 Q/DQ) compiled by OpenVINO for its CPU plugin (or the
device string the user names: an Intel GPU or NPU), with the performance hint that fits each batch size."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from resnetx.errors import BackendUnavailable, BadInput, first_line
from runtimes.base import Runtime

__all__ = ["OpenVinoRuntime", "open_openvino", "prime", "devices"]

log = logging.getLogger(__name__)
PIP = "pip install openvino (or 'resnetx[openvino]')"


def _import_ov() -> Any:
    try:
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailable(f"the openvino runtime needs OpenVINO: {PIP}") from e
    return ov


class OpenVinoRuntime(Runtime):
    """One OpenVINO model, compiled for each batch shape it is given (static shapes: OpenVINO's CPU kernels for a
    dynamic batch run about a tenth slower) and each hint: LATENCY for batch 1 (one stream, every core on one
    image); THROUGHPUT for larger batches, whose streams each take an equal share of the batch as one of the
    compiled model's optimal number of infer requests, run at once (one synchronous request of the whole batch
    would leave every stream but one idle: half the speed on two cores). fp32 graphs run in f32 (an AMX or AVX-512
    BF16 CPU would otherwise run them in bf16)."""

    backend = "openvino"

    def __init__(self, path: Path, *, precision: str = "fp32", ov_device: str = "CPU", threads: int | None = None):
        ov = _import_ov()
        self._ov, self._core = ov, ov.Core()
        try:
            self._model = self._core.read_model(str(path))
        except RuntimeError as e:
            raise BadInput(f"OpenVINO cannot read {Path(path).name} ({_first(e)}); re-create it with resnetx export "
                           "--force") from e
        dim = self._model.inputs[0].get_partial_shape()[0]
        fixed = dim.get_length() if dim.is_static else None
        device = "cpu" if ov_device.upper() == "CPU" else ov_device.lower()
        super().__init__(device=device, precision=precision, batch_range=(fixed, fixed) if fixed else None)
        self.static_shapes = fixed is None  # each batch size is a compile: infer_all keeps to one
        self._ov_device, self._threads, self._path = ov_device.upper(), threads, Path(path)
        self._compiled: dict[tuple[str, int], Any] = {}
        self._requests: dict[int, Any] = {}  # batch 1 (or the fixed batch): one LATENCY request
        self._queues: dict[int, Any] = {}  # per share of a larger batch: THROUGHPUT requests
        self._outputs: dict[int, np.ndarray] = {}
        self._request(fixed or 1)  # a graph OpenVINO cannot compile fails at open, in one line

    def _compile(self, hint: str, batch: int) -> Any:
        key = (hint, batch)
        if key not in self._compiled:
            model = self._model
            if self.batch_range is None:  # the dynamic batch, fixed to this one
                model = self._model.clone()
                shape = self._model.inputs[0].get_partial_shape()
                model.reshape({model.inputs[0]: self._ov.PartialShape([batch, *list(shape)[1:]])})
            config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
            if self._ov_device == "CPU":
                if self.precision == "fp32":  # fp32 means fp32: a bf16-capable CPU would round to bf16
                    config["INFERENCE_PRECISION_HINT"] = "f32"
                if self._threads:
                    config["INFERENCE_NUM_THREADS"] = self._threads
            try:
                self._compiled[key] = self._core.compile_model(model, self._ov_device, config)
            except RuntimeError as e:
                raise BadInput(f"OpenVINO cannot compile {self._path.name} for {self._ov_device} ({_first(e)})") from e
        return self._compiled[key]

    def _request(self, batch: int) -> Any:
        if batch not in self._requests:
            self._requests[batch] = self._compile("LATENCY", batch).create_infer_request()
        return self._requests[batch]

    @property
    def requests(self) -> int:
        """How many infer requests a batch above 1 is shared out over: the THROUGHPUT model's optimal number."""
        compiled = self._compile("THROUGHPUT", 2)
        return max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))

    def _queue(self, share: int, n: int) -> Any:
        if share not in self._queues:
            queue = self._ov.AsyncInferQueue(self._compile("THROUGHPUT", share), n)
            queue.set_callback(self._done)
            self._queues[share] = queue
        return self._queues[share]

    def _done(self, request: Any, part: int) -> None:
        self._outputs[part] = np.array(request.get_output_tensor(0).data, np.float32)

    def _infer(self, batch: Any) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            batch = batch.detach().cpu().numpy()
        x = np.ascontiguousarray(batch, np.float32)
        if len(x) == 1 or self.batch_range is not None:  # a fixed-batch graph takes its whole batch at once
            request = self._request(len(x))
            request.infer({0: x})
            return np.array(request.get_output_tensor(0).data, np.float32)
        n = min(self.requests, len(x))
        share = -(-len(x) // n)  # equal shares (the last padded): one compiled shape for every request
        if share * n > len(x):
            x = np.concatenate([x, np.repeat(x[-1:], share * n - len(x), axis=0)])
        queue = self._queue(share, n)
        self._outputs.clear()
        for k in range(n):
            queue.start_async({0: x[k * share : (k + 1) * share]}, userdata=k)
        queue.wait_all()
        return np.concatenate([self._outputs[k] for k in range(n)])[: len(batch)]

    def _close(self) -> None:
        for queue in self._queues.values():
            queue.wait_all()
        self._queues.clear()
        self._requests.clear()
        self._compiled.clear()
        self._model = None


def _first(e: BaseException) -> str:
    """OpenVINO's errors start with a source location: the message is the last line that says something."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Exception from src")]
    return lines[-1][:300] if lines else first_line(e)


def open_openvino(path: Path, *, device: str = "cpu", precision: str = "fp32", ov_device: str | None = None,
                  threads: int | None = None, **_ignored: Any) -> OpenVinoRuntime:
    if device != "cpu" and not ov_device:
        raise BadInput("the openvino runtime runs on --device cpu (an Intel GPU or NPU: --ov-device GPU|NPU)")
    return OpenVinoRuntime(Path(path), precision=precision, ov_device=ov_device or "CPU", threads=threads)


def prime(device: str) -> None:
    """Load OpenVINO's CPU plugin once before any memory baseline."""
    if device != "cpu":
        return
    ov = _import_ov()
    from runtimes.ort_rt import prime_graph

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prime.onnx"
        path.write_bytes(prime_graph().SerializeToString())
        request = core.compile_model(core.read_model(str(path)), "CPU").create_infer_request()
        request.infer({0: np.ones((1, 3, 8, 8), np.float32)})


def devices() -> tuple[str, ...]:
    """Where OpenVINO runs here: its CPU plugin, when OpenVINO is installed."""
    try:
        _import_ov()
    except BackendUnavailable:
        return ()
    return ("cpu",)
