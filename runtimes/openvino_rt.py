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

__all__ = ["OpenVinoRuntime", "open_openvino", "prime"]

log = logging.getLogger(__name__)
PIP = "pip install openvino (or 'resnetx[openvino]')"


def _import_ov() -> Any:
    try:
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailable(f"the openvino runtime needs OpenVINO: {PIP}") from e
    return ov


class OpenVinoRuntime(Runtime):
    """One OpenVINO model, compiled on first use of each hint: LATENCY for batch 1 (one stream, every core on one
    image), THROUGHPUT for larger batches (streams that split the batch across cores). fp32 graphs run in f32 (an
    AMX or AVX-512 BF16 CPU would otherwise run them in bf16)."""

    backend = "openvino"

    def __init__(self, path: Path, *, precision: str = "fp32", ov_device: str = "CPU", threads: int | None = None):
        ov = _import_ov()
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(str(path))
        except RuntimeError as e:
            raise BadInput(f"OpenVINO cannot read {Path(path).name} ({_first(e)}); re-create it with resnetx export "
                           "--force") from e
        dim = self._model.inputs[0].get_partial_shape()[0]
        fixed = dim.get_length() if dim.is_static else None
        device = "cpu" if ov_device.upper() == "CPU" else ov_device.lower()
        super().__init__(device=device, precision=precision, batch_range=(fixed, fixed) if fixed else None)
        self._ov_device, self._threads, self._path = ov_device.upper(), threads, Path(path)
        self._requests: dict[str, Any] = {}
        self._request("LATENCY")  # compile now: a graph OpenVINO cannot compile fails at open, in one line

    def _request(self, hint: str) -> Any:
        if hint not in self._requests:
            config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
            if self._ov_device == "CPU":
                if self.precision == "fp32":  # fp32 means fp32: a bf16-capable CPU would round to bf16
                    config["INFERENCE_PRECISION_HINT"] = "f32"
                if self._threads:
                    config["INFERENCE_NUM_THREADS"] = self._threads
            try:
                compiled = self._core.compile_model(self._model, self._ov_device, config)
            except RuntimeError as e:
                raise BadInput(f"OpenVINO cannot compile {self._path.name} for {self._ov_device} ({_first(e)})") from e
            self._requests[hint] = compiled.create_infer_request()
        return self._requests[hint]

    def _infer(self, batch: Any) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            batch = batch.detach().cpu().numpy()
        request = self._request("LATENCY" if len(batch) == 1 else "THROUGHPUT")
        request.infer({0: np.ascontiguousarray(batch, np.float32)})
        return np.array(request.get_output_tensor(0).data, np.float32)

    def _close(self) -> None:
        self._requests.clear()
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
