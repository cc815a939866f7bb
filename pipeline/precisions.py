"""The one table that drives precision: what each is called on disk and how it is judged.

A new precision is one row here, plus the step that makes its graph (pipeline/make/graphs.py `GRAPH_STEPS`, kept one
row per precision by a test) and the exporter function that step calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from resnetx.errors import BadInput

__all__ = ["Precision", "PrecisionSpec", "Tolerance", "PRECISIONS", "parse_precisions", "tolerance_help"]


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
    tolerance: Tolerance
    torch_runs: bool  # the torch runtime can run the model in it (fp32, fp16; int8 is a graph, not a dtype)
    gpu_tolerance: Tolerance | None = None  # the bar when the candidate runs on a GPU, where it differs
    # the bar when the model outputs probabilities (a softmax head): a saturated softmax hides error from rel. L2
    probability_tolerance: Tolerance | None = None

    def engine_file(self, target_tag: str) -> str:
        """model.fp16.rtx-sm86-sm89.engine: one file per precision and target (EngineTarget.tag)."""
        return f"model.{self.precision.value}.{target_tag}.engine"

    def tolerance_on(self, device: str, output: str = "logits") -> Tolerance:
        """The bar for a candidate on `device` of a model whose outputs are `output` (logits or probabilities)."""
        if output == "probabilities" and self.probability_tolerance is not None:
            return self.probability_tolerance
        return self.gpu_tolerance if device == "cuda" and self.gpu_tolerance else self.tolerance


PRECISIONS: dict[Precision, PrecisionSpec] = {
    Precision.fp32: PrecisionSpec(
        Precision.fp32, "model.fp32.onnx", Tolerance(rel_l2=1e-4, top1_agreement=1.0), True,
        gpu_tolerance=Tolerance(rel_l2=1e-3, top1_agreement=0.99),  # GPU kernels reassociate sums (TF32 off)
    ),
    Precision.fp16: PrecisionSpec(
        Precision.fp16, "model.fp16.onnx", Tolerance(rel_l2=1e-2, top1_agreement=0.99), True,
        probability_tolerance=Tolerance(top1_agreement=0.99),
    ),
    Precision.int8: PrecisionSpec(
        Precision.int8, "model.int8.onnx", Tolerance(top1_agreement=0.97, accuracy_drop=0.5), False,
    ),
}


def parse_precisions(text: str | tuple[str | Precision, ...], *, with_source: bool = True) -> tuple[Precision, ...]:
    """'fp16,int8' -> (fp32, fp16, int8), in Precision order. fp32 is added unless with_source is False: an
    export makes it anyway (it is the source); building engines or choosing what to verify does not."""
    parts = text.split(",") if isinstance(text, str) else [getattr(t, "value", t) for t in text]
    names = [t.strip().lower() for t in parts if t.strip()]
    bad = [n for n in names if n not in Precision.__members__]
    if bad or not names:
        raise BadInput(f"unknown precision {', '.join(bad) or repr(text)}; choose from "
                       f"{', '.join(Precision.__members__)}")
    chosen = {Precision(n) for n in names} | ({Precision.fp32} if with_source else set())
    return tuple(p for p in Precision if p in chosen)


def tolerance_help(metric: str) -> str:
    """'fp32 1e-04, fp16 0.01, int8 none': the defaults of one bar, for help text that cannot go stale."""
    def fmt(v: float | None) -> str:
        return "none" if v is None else f"{v:g}"

    return ", ".join(f"{p.value} {fmt(getattr(s.tolerance, metric))}" for p, s in PRECISIONS.items())
