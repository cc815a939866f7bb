"""What this machine has, for `resnetx info`: library versions, CUDA, each runtime and where it runs here, the
TensorRT flavours, the zoo."""

from __future__ import annotations

from pipeline.folder.manifest import tool_versions
from pipeline.model.zoo import DEFAULT_WEIGHTS, known_models
from resnetx.errors import BackendUnavailable
from resnetx.flavors import FLAVORS, import_flavor
from runtimes.registry import RUNTIMES, available_devices

__all__ = ["machine_facts"]


def machine_facts() -> list[tuple[str, str]]:
    """(what, value) rows: versions, CUDA, runtimes, TensorRT flavours, the default model and the zoo."""
    import torch

    rows = list(tool_versions().items())
    cuda = torch.cuda.is_available()
    rows.append(("torch CUDA", f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})" if cuda else
                 "no CUDA device"))
    for name, spec in RUNTIMES.items():
        devices = available_devices(spec)
        rows.append((f"runtime {name}", f"runs on {', '.join(devices)}" if devices else "not available here"))
    for flavor, spec in FLAVORS.items():
        try:
            mod = import_flavor(flavor)
            run = "" if cuda else "; running them needs a GPU"
            rows.append((f"TensorRT ({flavor.value})", f"{spec.module} {mod.__version__}: builds engines{run}"))
        except BackendUnavailable as e:
            rows.append((f"TensorRT ({flavor.value})", f"not available: {e}"))
    rows.append(("default model", str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.exists() else "missing (random ResNet-20)"))
    rows.append(("models", ", ".join(known_models())))
    return rows
