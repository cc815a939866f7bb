"""From what a command was given (`Args`) to the options objects the pipeline takes: the one parse export and run
share, the source spec from the source table, lists of numbers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.cli.options import SOURCE_FILES, Args
from pipeline.make.options import ExportOptions
from pipeline.precisions import parse_precisions
from pipeline.sources import ModelSpec, SourceSpec
from resnetx.errors import BadInput

__all__ = ["csv", "ints", "floats", "batch_range", "source_spec", "export_options"]

log = logging.getLogger(__name__)

# the zoo's own options: a file source names the model itself, so these name another one
ZOO_FLAGS = (("model", "--model"), ("weights", "--weights"), ("num_classes", "--num-classes"),
             ("in_chans", "--in-chans"), ("image_size", "--image-size"), ("trust_checkpoint", "--trust-checkpoint"))
DECLARED = ("mean", "std", "resize", "class_names", "preprocess", "channel_order", "mean_image", "strip_softmax")


def csv(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


def _numbers(text: str, what: str, kind: type, example: str) -> tuple:
    try:
        vals = tuple(kind(t) for t in csv(text))
    except ValueError:
        vals = ()
    if not vals:
        noun = "integers" if kind is int else "numbers"
        raise BadInput(f"{what} takes comma-separated {noun}, e.g. {example}; got {text!r}")
    return vals


def ints(text: str, what: str) -> tuple[int, ...]:
    return _numbers(text, what, int, "1,8,32")


def floats(text: str | None, what: str) -> tuple[float, ...] | None:
    return None if text is None else _numbers(text, what, float, "0.485,0.456,0.406")


def batch_range(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    br = ints(text, "--batch-range")
    if len(br) != 3:
        raise BadInput(f"--batch-range takes MIN,OPT,MAX; got {text!r}")
    return br  # type: ignore[return-value]


def source_spec(a: Args) -> SourceSpec:
    """The model the options name: a file source (--onnx, --keras, ... from the source table) or a zoo model, with
    what is declared about its input."""
    given = [s for s in SOURCE_FILES if a.get(s.flag.removeprefix("--")) is not None]
    declared = {k: a.get(k) for k in DECLARED if a.get(k) is not None}
    declared |= {k: floats(declared[k], f"--{k}") for k in ("mean", "std") if k in declared}
    if len(given) > 1:
        raise BadInput(f"{' and '.join(s.flag for s in given)} each name the model: give one")
    if not given:
        if a.get("trust_checkpoint"):
            log.warning("--trust-checkpoint: the checkpoint may run arbitrary code while loading")
        zoo = {k: a[k] for k in ModelSpec.cli_takes if a.get(k) not in (None, False)}
        return ModelSpec(a["model"], **zoo, **declared)
    cls = given[0]
    flag = cls.flag.removeprefix("--")
    others = [f for k, f in ZOO_FLAGS if k not in cls.cli_takes and a.get(k) not in (None, False, "default")]
    if others:
        raise BadInput(f"{cls.flag} is the model: {', '.join(others)} name another one; give one or the other (the "
                       "file's input and output give its shape)")
    takes: dict[str, Any] = {k: a[k] for k in cls.cli_takes if a.get(k) is not None}
    return cls(a[flag], **takes, **declared)  # type: ignore[call-arg]


def export_options(a: Args, **over: Any) -> ExportOptions:
    """export's and run's one parse: the source, then every export option given (run gives fewer; the rest keep
    ExportOptions' defaults), `over` last."""
    spec = source_spec(a)
    fields = {k: a[k] for k in ("exporter", "opset", "calib_data", "calib_dir", "calib_samples", "calib_method",
                                "int8_recipe", "int8_quantize_ends", "int8_equalize", "max_accuracy_drop",
                                "accuracy_data", "accuracy_dir", "accuracy_samples", "accuracy_margin", "fallback",
                                "search_seconds", "engine", "workspace_mb", "opt_level", "hardware_compat",
                                "engines_only", "reference_samples", "force") if k in a}
    if "static_batch" in a:
        fields["batch"] = a["static_batch"] or (None if a["dynamic_batch"] else 1)
    if a.get("precision"):
        fields["precisions"] = parse_precisions(a["precision"], with_source=False)
    fields |= {"keep_fp32": csv(a.get("keep_fp32")), "batch_range": batch_range(a.get("batch_range")),
               "rtx_compute_capabilities": csv(a.get("rtx_compute_capability")) or None}
    out = a.get("out") or Path("artifacts") / spec.name
    return ExportOptions(model=spec, out=out, **{**fields, **over})
