"""The I/O contract of every resnetx graph and engine: one float32 NCHW input, one float32 logits output."""

from __future__ import annotations

__all__ = ["INPUT_NAME", "OUTPUT_NAME"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
