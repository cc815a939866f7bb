"""The export steps that build TensorRT engines, one per precision, from the folder's ONNX graphs."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.folder.manifest import EngineEntry, Entry, LayerCounts
from pipeline.machine import driver_version
from pipeline.make.options import ExportContext, check_batch_range
from pipeline.make.steps import Step
from pipeline.model.zoo import ModelInfo
from pipeline.precisions import PRECISIONS, Precision
from resnetx.flavors import (
    FLAVORS,
    RTX_PORTABLE_CCS,
    EngineChoice,
    EngineTarget,
    Flavor,
    available_flavors,
    gpu_kind_of,
    import_flavor,
)

__all__ = ["resolve_flavor", "default_batch_range", "engine_profile", "engine_steps", "engine_target"]


def resolve_flavor(choice: EngineChoice, notices: list[str]) -> Flavor | None:
    """The flavour --engine names (its module must import), auto's pick, or None for no engines."""
    if choice is EngineChoice.none:
        return None
    if choice is not EngineChoice.auto:
        import_flavor(choice.value)  # raises BackendUnavailable with the pip line
        return Flavor(choice.value)
    found = available_flavors()
    if not found:
        notices.append("no TensorRT found (pip install 'resnetx[tensorrt-rtx]'): no engines built")
        return None
    return found[0]  # the table's order: enterprise tensorrt first, then rtx


def default_batch_range(info: ModelInfo) -> tuple[int, int, int]:
    return (1, 8, 64) if info.image_size >= 96 else (1, 32, 256)


def engine_profile(batch: int | None, batch_range: tuple[int, int, int] | None,
                   info: ModelInfo) -> tuple[int, int, int]:
    """MIN,OPT,MAX batch of the engines: --batch-range, the default for the input size, or the one batch a
    fixed-batch graph takes."""
    if batch is None:
        return batch_range or default_batch_range(info)
    check_batch_range(batch, batch_range)
    return (batch,) * 3  # type: ignore[return-value]


def engine_target(ctx: ExportContext, p: Precision, flavor: Flavor, profile: tuple[int, int, int],
                  ccs: tuple[str, ...]) -> EngineTarget:
    """The target an engine built here will have: known before the build, so its step (and its file) is named
    by it and engines for other targets sit beside it."""
    o = ctx.opts
    if flavor is Flavor.rtx:
        return EngineTarget(flavor, ctx.versions.get(FLAVORS[flavor].pip) or "", p.value, profile,
                            tuple(c.upper() for c in ccs))
    from exporters.tensorrt import gpu_target

    gpu, cc = gpu_target()
    version = ctx.versions.get(FLAVORS[flavor].pip) or ctx.versions.get("tensorrt") or ""
    return EngineTarget(flavor, version, p.value, profile, (), gpu, cc, o.hardware_compat,
                        gpu_kind_of(gpu) if gpu else None)


def engine_steps(ctx: ExportContext, precisions: tuple[Precision, ...], flavor: Flavor | None,
                 batch: int | None) -> list[Step]:
    """One engine per precision from its graph, named and keyed by its target (the flavour's own version, the
    compute capabilities it is built for, or the GPU it is built on and its compatibility level)."""
    if flavor is None:
        return []
    o = ctx.opts
    profile = engine_profile(batch, o.batch_range, ctx.info)
    ccs = tuple(o.rtx_compute_capabilities or RTX_PORTABLE_CCS)
    steps = []
    for p in precisions:
        t = engine_target(ctx, p, flavor, profile, ccs)
        inputs = {"target": t.tag, "profile": profile, "ws": o.workspace_mb, "opt": o.opt_level,
                  "tf32": p is not Precision.fp32, "trt": t.trt_version}
        steps.append(Step(f"{p.value}.{t.tag}", f"engine {p.value}", inputs, _maker(ctx, p, t), sources=(p.value,),
                          describe=_note))
    return steps


def _maker(ctx: ExportContext, p: Precision, t: EngineTarget) -> Callable[[dict[str, Entry]], EngineEntry]:
    def make(made: dict[str, Entry]) -> EngineEntry:
        from exporters.tensorrt import build_engine

        o, src = ctx.opts, made[p.value]
        ctx.progress(f"engine {p.value}: building with {t.flavor.value} for {t.tag}")
        e = build_engine(ctx.out / src.file, ctx.out / PRECISIONS[p].engine_file(t.tag), flavor=t.flavor,
                         precision=p.value, input_chw=ctx.info.input_shape, profile=t.profile,
                         workspace_mb=o.workspace_mb, opt_level=o.opt_level,
                         timing_cache=ctx.out / "timing.cache" if t.flavor is Flavor.tensorrt else None,
                         compute_capabilities=t.compute_capabilities or RTX_PORTABLE_CCS,
                         hardware_compat=t.hardware_compat)
        built = e.target
        return EngineEntry(p, e.path.name, e.sha256, e.size_bytes, source_sha256=e.source_sha256,
                           flavor=t.flavor, trt_version=built.trt_version, profile=built.profile, source_file=src.file,
                           compute_capabilities=built.compute_capabilities, gpu=built.gpu,
                           compute_capability=built.compute_capability, gpu_kind=t.kind,
                           driver=driver_version() if built.gpu else None, hardware_compat=t.hardware_compat,
                           strongly_typed=e.strongly_typed, opt_level=e.opt_level, tf32=e.tf32,
                           network=LayerCounts.from_dict(e.network) if e.network else None)

    return make


def _note(entry: Entry) -> str:
    if not isinstance(entry, EngineEntry):
        return ""
    counts = entry.network.note(entry.precision.value) if entry.network else "network precision not recorded"
    return f"{entry.flavor.value} {entry.trt_version} for {entry.target.tag}; {counts}"
