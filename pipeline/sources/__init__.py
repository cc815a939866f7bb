"""Where a folder's fp32 graph comes from, read through one table: a PyTorch model of the zoo (`--model`), a user's
ONNX file (`--onnx`), a Keras model file (`--keras`).

Each is a `SourceSpec` (what the user named and declared; the manifest records it) that opens a `Source` (the model
in memory: what it is, its fp32 graph, its reference logits; pipeline/sources/base.py). Nothing downstream asks which
one it has. A new source is one module here (its spec and its source class) and one row of `SPECS`: the command
line's flag, the manifest, the re-make line and the reference all read the row.
"""

from __future__ import annotations

from typing import Any

from pipeline.sources.base import Fp32Request, Source, SourceSpec, graph_metadata
from pipeline.sources.keras_file import KerasSpec
from pipeline.sources.onnx_file import OnnxSpec
from pipeline.sources.pytorch import ModelSpec, reference_logits

__all__ = ["SPECS", "SourceSpec", "Source", "Fp32Request", "ModelSpec", "OnnxSpec", "KerasSpec", "spec_from_dict",
           "open_source", "graph_metadata", "reference_logits"]

# format -> spec class: the one table of sources (the first is what a model section without a format names)
SPECS: dict[str, type[SourceSpec]] = {s.format: s for s in (ModelSpec, OnnxSpec, KerasSpec)}


def spec_from_dict(d: dict[str, Any]) -> SourceSpec:
    """The source a manifest's model section names (written before sources had formats: a zoo model; written as
    version 3: its format under "kind")."""
    name = d.get("format") or d.get("kind") or ModelSpec.format
    if name not in SPECS:
        raise ValueError(f"model.spec names source format {name!r}; this resnetx reads {', '.join(SPECS)}")
    return SPECS[name].from_dict(d)


def open_source(spec: SourceSpec) -> Source:
    """The source the user named (export)."""
    return spec.open()
