"""A runtime row the registry does not ship, for tests/test_openvino.py: it runs the graph with onnxruntime under
another name and writes down that it was primed and opened, so a test can see every module read the row."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtimes.ort_rt import open_ort

LOG = "RESNETX_FAKE_RUNTIME_LOG"


def _log(line: str) -> None:
    with open(os.environ[LOG], "a") as f:
        f.write(line + "\n")


def open_fake(path: Path, *, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
              fake_level: int | None = None, **_ignored: Any) -> Any:
    _log(f"open {Path(path).name} {device} threads={threads} level={fake_level}")
    return open_ort(path, device=device, precision=precision, threads=threads)


def prime(device: str) -> None:
    _log(f"prime {device}")
