"""What an export is asked to do, checked once when the options are made, and what its steps are given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.calibrate import CalibMethod
from exporters.onnx import DEFAULT_OPSET, Exporter
from exporters.quantize import Fallback, Int8Recipe
from pipeline.defaults import DEFAULT_CALIB_SAMPLES, DEFAULT_OPT_LEVEL, DEFAULT_REFERENCE_SAMPLES
from pipeline.model.zoo import ModelInfo
from pipeline.precisions import Precision, parse_precisions
from pipeline.sources import ModelSpec, Source, SourceSpec
from resnetx.errors import BadInput
from resnetx.flavors import EngineChoice, HardwareCompat

__all__ = ["ExportOptions", "ExportContext", "check_batch_range"]



def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def check_batch_range(batch: int | None, batch_range: tuple[int, int, int] | None) -> None:
    """A graph of one fixed batch takes engines of that batch only."""
    if batch is not None and batch_range and tuple(batch_range) != (batch,) * 3:
        raise BadInput(f"--batch-range {','.join(map(str, batch_range))} does not fit a graph exported with the "
                       f"fixed batch {batch}; drop --batch-range, or export with a dynamic batch")


@dataclass(frozen=True)
class ExportOptions:
    model: SourceSpec = field(default_factory=ModelSpec)  # the source: a zoo model, --onnx FILE, --keras FILE
    out: Path = Path("artifacts/default")
    precisions: tuple[Precision, ...] | None = None  # None: fp32; with engines_only, every graph in the folder
    exporter: Exporter = Exporter.dynamo
    opset: int = DEFAULT_OPSET
    batch: int | None = None  # None: a dynamic batch; N: baked into every graph and engine (--static-batch)
    calib_data: str = "sample"
    calib_dir: Path | None = None
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    calib_method: CalibMethod = CalibMethod.percentile
    int8_recipe: Int8Recipe = Int8Recipe.tensorrt
    keep_fp32: tuple[str, ...] = ()  # layers kept in fp32 in the fp16 graph and left unquantized in int8
    int8_quantize_ends: bool = False  # also quantize the stem conv and the classifier
    int8_equalize: bool = True  # cross-layer equalize conv pairs before calibrating (the fp32 function is kept)
    max_accuracy_drop: float | None = None  # search for an int8 graph within this many top-1 points of fp32
    accuracy_data: str | None = None  # the held-out labelled images that judge it (None: from --calib-data)
    accuracy_dir: Path | None = None
    accuracy_samples: int = 2000
    accuracy_margin: float | None = None  # points below the budget a graph must judge; None: one standard error
    fallback: Fallback = Fallback.auto
    search_seconds: float = 600.0
    engine: EngineChoice = EngineChoice.none
    batch_range: tuple[int, int, int] | None = None
    workspace_mb: int | None = None
    opt_level: int = DEFAULT_OPT_LEVEL
    rtx_compute_capabilities: tuple[str, ...] | None = None
    hardware_compat: HardwareCompat = HardwareCompat.none  # enterprise TensorRT: where else its engines may run
    seed: int = 0
    force: bool = False
    engines_only: bool = False  # engines from the folder's own graphs, without the model
    reference_samples: int = DEFAULT_REFERENCE_SAMPLES  # PyTorch logits stored for verify's default inputs; 0: none
    reference_data: str = "sample"  # the data those inputs come from (`run --data` stores them for its verify)
    reference_data_dir: Path | None = None

    def __post_init__(self) -> None:
        for name, enum in (("exporter", Exporter), ("calib_method", CalibMethod), ("int8_recipe", Int8Recipe),
                           ("engine", EngineChoice), ("fallback", Fallback), ("hardware_compat", HardwareCompat)):
            _set(self, name, enum(getattr(self, name)))
        _set(self, "out", Path(self.out))
        if self.precisions is not None:
            _set(self, "precisions", parse_precisions(self.precisions, with_source=False))
        if self.out.exists() and not self.out.is_dir():
            raise BadInput(f"--out {self.out} is a file; give a folder")
        if self.calib_samples < 1:
            raise BadInput("--calib-samples must be >= 1")
        if self.reference_samples < 0:
            raise BadInput("--reference-samples must be >= 0")
        if self.batch is not None and self.batch < 1:
            raise BadInput(f"--static-batch must be >= 1; got {self.batch}")
        if self.batch is not None and not self.model.static_batch:
            raise BadInput(f"--static-batch does not apply to {self.model.flag}: the file's own batch dimension is "
                           "kept")
        self._check_engine_options()
        self._check_search()
        if self.engines_only:
            self._check_engines_only()

    def _check_engine_options(self) -> None:
        if self.batch_range is not None:
            lo, opt, hi = self.batch_range
            if not 1 <= lo <= opt <= hi:
                raise BadInput(f"--batch-range must be MIN<=OPT<=MAX with MIN>=1; got {lo},{opt},{hi}")
        check_batch_range(self.batch, self.batch_range)
        if not 0 <= self.opt_level <= 5:
            raise BadInput(f"--opt-level must be 0..5; got {self.opt_level}")
        if self.engine not in (EngineChoice.none, EngineChoice.auto):
            self.check_engines_take_int8()
        engine_flags = [flag for flag, on in (
            ("--batch-range", self.batch_range), ("--workspace-mb", self.workspace_mb),
            ("--opt-level", self.opt_level != DEFAULT_OPT_LEVEL),
            ("--rtx-compute-capability", self.rtx_compute_capabilities),
            ("--hardware-compat", self.hardware_compat is not HardwareCompat.none)) if on]
        if self.engine is EngineChoice.rtx and self.hardware_compat is not HardwareCompat.none:
            raise BadInput("--hardware-compat is enterprise TensorRT's: TensorRT-RTX engines run on the compute "
                           "capabilities they are built for (--rtx-compute-capability)")
        if engine_flags and self.engine is EngineChoice.none and not self.engines_only:
            raise BadInput(f"{', '.join(engine_flags)} only shape TensorRT engines, and none are asked for: add "
                           "--engine rtx (or tensorrt, or auto), or leave them out")

    def check_engines_take_int8(self) -> None:
        """Refuse, before any work, engines of a cpu-recipe int8 graph (--engine auto: once a flavour is found)."""
        if Precision.int8 in (self.precisions or ()) and self.int8_recipe is Int8Recipe.cpu:
            raise BadInput("the cpu int8 recipe quantizes biases to int32, which TensorRT's parser rejects; "
                           "use --int8-recipe tensorrt for engines, or --engine none")

    def _check_search(self) -> None:
        if self.max_accuracy_drop is not None:
            if self.max_accuracy_drop < 0:
                raise BadInput(f"--max-accuracy-drop must be >= 0 points; got {self.max_accuracy_drop}")
            if Precision.int8 not in (self.precisions or ()):
                raise BadInput("--max-accuracy-drop searches for an int8 graph: add int8 to --precision")
            judge = (self.accuracy_data or self.calib_data).partition(":")[0]
            if self.accuracy_data is None and judge == "imagefolder":
                raise BadInput("--max-accuracy-drop with --calib-data imagefolder:DIR needs --accuracy-data "
                               "imagefolder:VAL_DIR (a folder of other images than the calibration ones)")
            if judge == "synthetic":
                raise BadInput("--max-accuracy-drop needs labelled images: give --accuracy-data (fashion-mnist, "
                               "cifar10, imagefolder:VAL_DIR)")
        if self.accuracy_samples < 1 or self.search_seconds <= 0:
            raise BadInput("--accuracy-samples must be >= 1 and --search-seconds > 0")
        if self.accuracy_margin is not None and self.accuracy_margin < 0:
            raise BadInput(f"--accuracy-margin must be >= 0 points; got {self.accuracy_margin}")
        if self.fallback is Fallback.fp16 and self.int8_recipe is Int8Recipe.cpu:
            raise BadInput("--fallback fp16 is for the tensorrt recipe (fp16 layers run on GPUs); the cpu recipe "
                           "keeps layers in fp32: leave --fallback out")

    @property
    def quantize_ends(self) -> bool:
        """Whether the int8 graph quantizes the stem conv and the classifier: asked, or an accuracy search (which
        starts from every layer in int8 and reverts the ends like any other layer when they cost accuracy)."""
        return self.int8_quantize_ends or self.max_accuracy_drop is not None

    @property
    def fallback_precision(self) -> str:
        """What kept layers compute in without a search: fp16 only when asked (auto decides by accuracy)."""
        return "fp16" if self.fallback is Fallback.fp16 else "fp32"

    def _graph_flags(self) -> list[str]:
        """The options given that shape the graphs rather than the engines (those that differ from the defaults)."""
        d = ExportOptions()
        source = self.model.cli_args()[::2] if self.model != d.model else []  # --model/--onnx and their options
        return source + [flag for flag, on in (
            ("--keep-fp32", self.keep_fp32),
            ("--static-batch", self.batch is not None), ("--exporter", self.exporter != d.exporter),
            ("--opset", self.opset != d.opset), ("--calib-data", self.calib_data != d.calib_data),
            ("--calib-dir", self.calib_dir), ("--calib-samples", self.calib_samples != d.calib_samples),
            ("--calib-method", self.calib_method != d.calib_method),
            ("--int8-recipe", self.int8_recipe != d.int8_recipe),
            ("--int8-quantize-ends", self.int8_quantize_ends), ("--no-int8-equalize", not self.int8_equalize),
            ("--max-accuracy-drop", self.max_accuracy_drop is not None),
            ("--accuracy-data", self.accuracy_data), ("--fallback", self.fallback != d.fallback)) if on]

    def _check_engines_only(self) -> None:
        if given := self._graph_flags():
            raise BadInput(f"--engines-only builds from the graphs already in the folder; {', '.join(given)} "
                           "would change those graphs: export them first without --engines-only")

    @property
    def wanted(self) -> tuple[Precision, ...]:
        """The graphs a full export makes: fp32 (the source of the others) and those asked for."""
        asked = set(self.precisions or ()) | {Precision.fp32}
        return tuple(p for p in Precision if p in asked)


@dataclass(frozen=True)
class ExportContext:
    """What every export step is given; nothing a step makes is in here (it gets that as its sources)."""

    opts: ExportOptions
    info: ModelInfo
    versions: dict[str, str]
    source: Source | None = None  # None for --engines-only: the folder's graphs are the source
    on_progress: Callable[[str], None] = field(default=lambda _msg: None)

    @property
    def out(self) -> Path:
        return self.opts.out

    def progress(self, msg: str) -> None:
        self.on_progress(msg)
