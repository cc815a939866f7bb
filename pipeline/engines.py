"""The export steps that build TensorRT engines, one per precision, from the folder's ONNX graphs."""

from __future__ import annotations

from pipeline.artifacts import EngineEntry, Entry, LayerCounts
from pipeline.export_options import ExportContext, check_batch_range
from pipeline.precisions import PRECISIONS, Precision
from pipeline.steps import Step
from pipeline.zoo import ModelInfo
from resnetx.flavors import RTX_PORTABLE_CCS, EngineChoice, Flavor, available_flavors, import_flavor

__all__ = ["resolve_flavor", "default_batch_range", "engine_profile", "engine_steps"]


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


def engine_steps(ctx: ExportContext, precisions: tuple[Precision, ...], flavor: Flavor | None,
                 batch: int | None) -> list[Step]:
    """One engine per precision from its graph, keyed by the graph, the options, the TensorRT version and, for
    enterprise TensorRT (whose engines are tied to the GPU they were built on), this GPU."""
    if flavor is None:
        return []
    from exporters.tensorrt import gpu_target

    o, v = ctx.opts, ctx.versions
    profile = engine_profile(batch, o.batch_range, ctx.info)
    ccs = tuple(o.rtx_compute_capabilities or RTX_PORTABLE_CCS)
    gpu = gpu_target() if flavor is Flavor.tensorrt else None
    trt = v.get("tensorrt") or v.get("tensorrt-rtx-cu13") or v.get("tensorrt-cu13")
    steps = []
    for p in precisions:
        inputs = {"flavor": flavor.value, "profile": profile, "ws": o.workspace_mb, "opt": o.opt_level,
                  "ccs": ccs if flavor is Flavor.rtx else None, "tf32": p is not Precision.fp32, "gpu": gpu, "trt": trt}
        steps.append(Step(f"{p.value}.{flavor.value}", f"engine {p.value}", inputs,
                          _maker(ctx, p, flavor, profile, ccs), sources=(p.value,), describe=_note))
    return steps


def _maker(ctx: ExportContext, p: Precision, flavor: Flavor, profile: tuple[int, int, int], ccs: tuple[str, ...]):
    def make(made: dict[str, Entry]) -> EngineEntry:
        from exporters.tensorrt import build_engine

        o, src = ctx.opts, made[p.value]
        ctx.progress(f"engine {p.value}: building with {flavor.value}")
        e = build_engine(ctx.out / src.file, ctx.out / PRECISIONS[p].engine_file(flavor.value), flavor=flavor,
                         precision=p.value, input_chw=ctx.info.input_shape, profile=profile,
                         workspace_mb=o.workspace_mb, opt_level=o.opt_level,
                         timing_cache=ctx.out / "timing.cache" if flavor is Flavor.tensorrt else None,
                         compute_capabilities=ccs)
        t = e.target
        return EngineEntry(p, e.path.name, e.sha256, e.size_bytes, source_sha256=e.source_sha256,
                           flavor=flavor, trt_version=t.trt_version, profile=t.profile, source_file=src.file,
                           compute_capabilities=t.compute_capabilities, gpu=t.gpu,
                           compute_capability=t.compute_capability, strongly_typed=e.strongly_typed,
                           opt_level=e.opt_level, tf32=e.tf32,
                           network=LayerCounts.from_dict(e.network) if e.network else None)

    return make


def _note(entry: Entry) -> str:
    if not isinstance(entry, EngineEntry):
        return ""
    counts = entry.network.note(entry.precision.value) if entry.network else "network precision not recorded"
    return f"{entry.flavor.value} {entry.trt_version}; {counts}"
