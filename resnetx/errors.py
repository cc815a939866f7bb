"""Error types shared by every layer; each maps to one CLI exit code."""

from __future__ import annotations

__all__ = [
    "ResnetxError",
    "BadInput",
    "BackendUnavailable",
    "IncompatibleArtifact",
    "CheckFailed",
    "ExportFailed",
    "first_line",
]


class ResnetxError(Exception):
    """Base of all errors resnetx raises on purpose; the message says what to do."""

    exit_code = 2


class BadInput(ResnetxError):
    """A file, option or dataset the user gave cannot be used."""


class IncompatibleArtifact(BadInput):
    """An artifact was made for another model, tool version or device.

    `gpu_cc` names the compute capability of the GPU at hand when the mismatch is about the GPU, so that the
    caller can word the command that rebuilds the artifact for it.
    """

    def __init__(self, message: str, *, gpu_cc: str | None = None) -> None:
        super().__init__(message)
        self.gpu_cc = gpu_cc


class ExportFailed(ResnetxError):
    """A conversion (ONNX export, quantization, engine build) failed inside the library doing it."""


class BackendUnavailable(ResnetxError):
    """A requested runtime, library or device is not present on this machine."""

    exit_code = 3


class CheckFailed(ResnetxError):
    """A numerical check (parity, accuracy) fell under its bar, or a file is not what was recorded."""

    exit_code = 1


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (libraries' errors run to pages)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(e).__name__
