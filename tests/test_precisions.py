"""The precision table: parsing, per-device tolerances, help text made from the table."""

from __future__ import annotations

import pytest

from pipeline.precisions import PRECISIONS, Precision, Tolerance, parse_precisions, tolerance_help
from resnetx.errors import BadInput


def test_parse_adds_the_source_unless_asked_not_to() -> None:
    assert parse_precisions("int8, fp16") == (Precision.fp32, Precision.fp16, Precision.int8)
    assert parse_precisions("int8", with_source=False) == (Precision.int8,)
    assert parse_precisions((Precision.fp16, "int8"), with_source=False) == (Precision.fp16, Precision.int8)
    with pytest.raises(BadInput, match="unknown precision fp8; choose from fp32, fp16, int8"):
        parse_precisions("fp8")


def test_a_gpu_has_its_own_fp32_bar_and_overrides_win() -> None:
    fp32 = PRECISIONS[Precision.fp32]
    assert fp32.tolerance_on("cpu") == Tolerance(rel_l2=1e-4, top1_agreement=1.0)
    assert fp32.tolerance_on("cuda") == Tolerance(rel_l2=1e-3, top1_agreement=0.99)
    assert PRECISIONS[Precision.fp16].tolerance_on("cuda") == PRECISIONS[Precision.fp16].tolerance
    assert fp32.tolerance.merged(rel_l2=0.5, top1_agreement=None) == Tolerance(rel_l2=0.5, top1_agreement=1.0)


def test_help_text_comes_from_the_table() -> None:
    assert tolerance_help("rel_l2") == "fp32 0.0001, fp16 0.01, int8 none"
    assert tolerance_help("accuracy_drop") == "fp32 none, fp16 none, int8 0.5"
    assert PRECISIONS[Precision.int8].engine_file("rtx-sm89") == "model.int8.rtx-sm89.engine"
