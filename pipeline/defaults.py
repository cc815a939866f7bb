"""The defaults the command line and the options objects share: one literal each, importable without torch."""

from __future__ import annotations

__all__ = ["DEFAULT_REFERENCE_SAMPLES", "DEFAULT_CALIB_SAMPLES", "DEFAULT_OPT_LEVEL", "DEFAULT_BENCH_ACCURACY_SAMPLES"]

DEFAULT_REFERENCE_SAMPLES = 512  # verify's default --samples: export stores the reference for those inputs
DEFAULT_CALIB_SAMPLES = 512  # int8 calibration images
DEFAULT_OPT_LEVEL = 3  # TensorRT's builder optimization level
DEFAULT_BENCH_ACCURACY_SAMPLES = 1000  # images bench's accuracy column is measured on
