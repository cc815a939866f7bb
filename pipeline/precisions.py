"""The one table that drives precision: how each is made, what it needs, how it is judged."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from runtimes.errors import BadInput

__all__ = ["Precision", "PrecisionSpec", "Tolerance", "PRECISIONS", "parse_precisions"]


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


@dataclass(frozen=True)
class Tolerance:
    """A verdict's bars. None means the metric is reported but not judged."""

    rel_l2: float | None = None
    top1_agreement: float | None = None  # fraction of samples whose top-1 matches the reference
    accuracy_drop: float | None = None  # points of top-1 accuracy the artifact may lose

    def merged(self, **overrides: float | None) -> Tolerance:
        return Tolerance(**{k: (v if overrides.get(k) is None else overrides[k]) for k, v in self.__dict__.items()})


@dataclass(frozen=True)
class PrecisionSpec:
    precision: Precision
    onnx_file: str
    needs_calibration: bool
    tolerance: Tolerance
    help: str


PRECISIONS: dict[Precision, PrecisionSpec] = {
    Precision.fp32: PrecisionSpec(
        Precision.fp32, "model.fp32.onnx", False,
        Tolerance(rel_l2=1e-4, top1_agreement=1.0),
        "exported graph, float32 everywhere",
    ),
    Precision.fp16: PrecisionSpec(
        Precision.fp16, "model.fp16.onnx", False,
        Tolerance(rel_l2=1e-2, top1_agreement=0.99),
        "float16 weights and compute, float32 input/logits",
    ),
    Precision.int8: PrecisionSpec(
        Precision.int8, "model.int8.onnx", True,
        Tolerance(top1_agreement=0.97, accuracy_drop=0.5),
        "explicit Q/DQ int8 from calibration on real images",
    ),
}


def parse_precisions(text: str, *, with_source: bool = True) -> list[Precision]:
    """'fp16,int8' -> [Precision.fp32, Precision.fp16, Precision.int8], in Precision order. fp32 is added unless
    with_source is False: an export makes it anyway (it is the source); building engines does not."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in Precision.__members__]
    if bad or not names:
        raise BadInput(f"unknown precision {', '.join(bad) or repr(text)}; choose from {', '.join(Precision.__members__)}")
    chosen = {Precision(n) for n in names} | ({Precision.fp32} if with_source else set())
    return [p for p in Precision if p in chosen]
