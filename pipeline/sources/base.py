"""What a source is: a `SourceSpec` (what the user named, as the manifest records it) opens a `Source` (the model in
memory: what it is, the fp32 graph made from it, and its reference logits)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from exporters.onnx import Exporter

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from exporters.onnx import OnnxArtifact
    from pipeline.model.zoo import ModelInfo

__all__ = ["SourceSpec", "OneFile", "Source", "Fp32Request", "graph_metadata"]


class OneFile:
    """What a spec named by one file shares (`--onnx FILE`, `--keras FILE`), mixed into its frozen dataclass: the
    path held as a Path, and the model named by the file's stem."""

    file: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "file", Path(self.file))

    @property
    def name(self) -> str:
        return self.file.stem


class SourceSpec(Protocol):
    """What the user named as the model (`--model`, `--onnx FILE`, `--keras FILE`) and what they declared about it:
    enough to open it again (`resnetx info`'s re-make line, a later verify's reference)."""

    format: ClassVar[str]  # the manifest's name for it: "zoo", "onnx", "keras"
    flag: ClassVar[str]  # the export option that names it: "--model", "--onnx", "--keras"
    describe: ClassVar[str]  # how messages call it: "PyTorch model", "ONNX file", "Keras model"
    reference_name: ClassVar[str]  # how reports name its reference: "torch-cpu-fp32", "keras-torch-fp32"
    static_batch: ClassVar[bool]  # whether --static-batch applies (an ONNX file keeps its own batch dimension)
    cli_help: ClassVar[str]  # the help of its flag
    cli_takes: ClassVar[tuple[str, ...]]  # the model options it takes beside the declarations (--image-size, ...)
    strip_softmax: bool

    @property
    def file(self) -> Path | None: ...  # the file it reads (checkpoint, ONNX or Keras file), None for none

    @property
    def name(self) -> str: ...  # what names its folder by default: artifacts/<name>

    def cli_args(self) -> list[str]: ...  # the export options that name it again

    def to_dict(self) -> dict[str, Any]: ...

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceSpec: ...

    def open(self) -> Source: ...


@dataclass(frozen=True)
class Fp32Request:
    """What the export asks of a source's fp32 graph: where, with which exporter and opset, which batch, which
    metadata, and the tool versions that shape its bytes."""

    dst: Path
    exporter: Exporter = Exporter.dynamo
    opset: int = 18
    batch: int | None = None  # --static-batch, else None (dynamic)
    metadata: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    progress: Callable[[str], None] = field(default=lambda _msg: None)


class Source(Protocol):
    """Where the fp32 graph comes from and what judges it: nothing downstream asks which kind it is."""

    spec: SourceSpec
    info: ModelInfo
    sha256: str  # what the fp32 graph is keyed on: the weights' state hash, or the model file's
    module: nn.Module | None  # the PyTorch model where there is one (the torch runtime runs it)
    batch: int | None  # a batch the source fixes itself (a user's ONNX file may), else None

    @property
    def made_by(self) -> str: ...  # what computes the reference here, and its version

    def fp32_key(self, req: Fp32Request) -> dict[str, Any]: ...  # what shapes the fp32 graph's bytes

    def make_fp32(self, req: Fp32Request) -> tuple[OnnxArtifact, str]: ...  # the graph, and what made it

    def logits(self, x: np.ndarray) -> np.ndarray: ...  # fp32 reference outputs of a float32 NCHW batch

    def baseline(self, opset: int, tmp: Path) -> bytes: ...  # a graph to compare an fp32 graph's layers with


def graph_metadata(info: ModelInfo, sha256: str, source: str) -> dict[str, str]:
    """What resnetx writes into an fp32 graph's metadata: enough to bring the graph back with `--onnx` alone."""
    return {"resnetx.arch": info.arch, "resnetx.num_classes": str(info.num_classes),
            "resnetx.input_shape": json.dumps(list(info.input_shape)),
            "resnetx.preprocess": json.dumps(info.preprocess.to_dict()), "resnetx.weights_sha256": sha256,
            "resnetx.source": source, "resnetx.output": info.output,
            "resnetx.class_names": json.dumps(list(info.class_names or []))}
