"""A PyTorch model of the zoo (`--model NAME`, with its checkpoint or seeded random weights) as a source: exported by
torch's ONNX exporter; its reference is PyTorch eager on the CPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from exporters.onnx import OnnxArtifact, export_onnx
from pipeline.model.preprocess import Declares
from pipeline.model.zoo import ModelInfo, load_model, model_entry, state_sha256
from pipeline.sources.base import Fp32Request
from resnetx.errors import BadInput

__all__ = ["ModelSpec", "TorchSource", "reference_logits"]


@dataclass(frozen=True)
class ModelSpec(Declares):
    """What the user asked for: a zoo name plus the options that shape it."""

    arch: str = "default"
    num_classes: int | None = None
    in_chans: int | None = None
    image_size: int | None = None
    weights: Path | None = None
    trust_checkpoint: bool = False

    format: ClassVar[str] = "zoo"
    flag: ClassVar[str] = "--model"
    describe: ClassVar[str] = "PyTorch model"
    reference_name: ClassVar[str] = "torch-cpu-fp32"  # how reports name the reference it gives
    static_batch: ClassVar[bool] = True
    cli_help: ClassVar[str] = "A zoo name (--model) and its checkpoint (--weights)."
    cli_takes: ClassVar[tuple[str, ...]] = ("weights", "num_classes", "in_chans", "image_size", "trust_checkpoint")

    @property
    def file(self) -> Path | None:
        return self.weights

    @property
    def name(self) -> str:
        return self.arch

    def to_dict(self) -> dict[str, Any]:
        """As the manifest records it: enough to load the same model again (`resnetx info` re-makes from it)."""
        if model_entry(self.arch).weights is not None:
            return {"format": self.format, "arch": self.arch, "weights": None}
        d = {"format": self.format, "arch": self.arch, "num_classes": self.num_classes, "in_chans": self.in_chans,
             "image_size": self.image_size, "weights": str(self.weights.resolve()) if self.weights else None}
        return d | self.declared_dict()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(arch=d["arch"], num_classes=d.get("num_classes"), in_chans=d.get("in_chans"),
                   image_size=d.get("image_size"), weights=Path(d["weights"]) if d.get("weights") else None,
                   **cls.declared_from(d))

    def cli_args(self) -> list[str]:
        """The export options that name this source again (the re-make line)."""
        pairs = (("--model", self.arch), ("--weights", self.weights), ("--num-classes", self.num_classes),
                 ("--in-chans", self.in_chans), ("--image-size", self.image_size))
        return [part for flag, value in pairs if value is not None for part in (flag, str(value))] + \
            self.declared_args()

    def open(self) -> TorchSource:
        return TorchSource.open(self)


def reference_logits(model: torch.nn.Module, x: np.ndarray, batch: int = 16,
                     on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """fp32 PyTorch eager on the CPU. channels_last and small batches: oneDNN runs a ResNet-50 1.8x
    faster that way here (95 vs 170 ms/image at 224x224), and it is still the unmodified model."""
    ref = model.to(memory_format=torch.channels_last)
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                xb = torch.from_numpy(x[i : i + batch]).contiguous(memory_format=torch.channels_last)
                out.append(ref(xb).float().numpy())
                if on_batch:
                    on_batch(len(xb))
    finally:
        model.to(memory_format=torch.contiguous_format)
    return np.concatenate(out)


@dataclass
class TorchSource:
    """A zoo architecture with its checkpoint (or seeded random weights)."""

    spec: ModelSpec
    info: ModelInfo
    module: torch.nn.Module
    sha256: str  # the weights' state hash, whatever the checkpoint's format
    batch: None = None  # --static-batch decides

    @classmethod
    def open(cls, spec: ModelSpec) -> TorchSource:
        if spec.strip_softmax:
            raise BadInput(f"--strip-softmax: {spec.arch} gives logits (it has no softmax head to strip); leave it out")
        model, info = load_model(spec)
        return cls(spec, info, model, state_sha256(model))

    @property
    def made_by(self) -> str:
        return torch.__version__

    def logits(self, x: np.ndarray) -> np.ndarray:
        return reference_logits(self.module, x)

    def fp32_key(self, req: Fp32Request) -> dict[str, Any]:
        v = req.versions
        return {"weights": self.sha256, "exporter": req.exporter.value, "opset": req.opset, "batch": req.batch,
                "torch": v.get("torch"), "onnx": v.get("onnx"), "onnxscript": v.get("onnxscript")}

    def make_fp32(self, req: Fp32Request) -> tuple[OnnxArtifact, str]:
        req.progress(f"fp32: exporting with the {req.exporter.value} exporter")
        meta = {**req.metadata, "resnetx.exporter": req.exporter.value}
        a = export_onnx(self.module, self.info.input_shape, req.dst, opset=req.opset, batch=req.batch,
                        exporter=req.exporter, metadata=meta)
        a.details.pop("exporter", None)
        return a, req.exporter.value

    def baseline(self, opset: int, tmp: Path) -> bytes:
        """A fresh export of the model: what localisation compares an fp32 graph's layers with."""
        return export_onnx(self.module, self.info.input_shape, tmp / "ref.onnx", exporter="legacy",
                           opset=opset).path.read_bytes()
