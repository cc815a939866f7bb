"""Which runtime runs which artifact on which device, and why not: one place for verify and bench."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.check.reference import Reference
from pipeline.folder.audit import holdings
from pipeline.folder.manifest import EngineEntry, Entry, Manifest, checked_file
from pipeline.folder.remake import remake_command
from pipeline.precisions import PRECISIONS, Precision
from resnetx.errors import BackendUnavailable, BadInput, IncompatibleArtifact
from runtimes.base import Runtime
from runtimes.registry import RUNTIMES, RuntimeSpec, open_runtime, row_options, runtime_spec

__all__ = ["Candidate", "default_runtimes", "check_device", "select_candidates", "open_candidate", "opener_options",
           "check_runtime_options"]

_VERB = {"verify": "verify", "bench": "benchmark"}


@dataclass(frozen=True)
class Candidate:
    key: str  # the artifact it runs: "fp16", "int8.rtx", or "torch-fp32" for the PyTorch model itself
    runtime: RuntimeSpec
    precision: Precision
    device: str
    entry: Entry | None  # None: the torch runtime runs the PyTorch model

    @property
    def label(self) -> str:
        """The runtime's name before it is opened (reports use the opened runtime's own name)."""
        return f"{self.runtime.name}-{self.device}-{self.precision.value}"


def default_runtimes(command: str, device: str) -> tuple[str, ...]:
    """What `command` runs unless --runtime says: the registry's defaults that run on `device` (engines: cuda)."""
    return tuple(n for n, s in RUNTIMES.items() if command in s.default_for and device in s.devices)


def opener_options(spec: RuntimeSpec, opts: Any, **known: Any) -> dict[str, Any]:
    """What a runtime's opener is given, for verify and bench alike: the attributes of the options object `opts`
    that the row `takes` (or `known`, per candidate), and the row's own options given on the command line
    (`opts.runtime_options`)."""
    out = {k: known[k] if k in known else getattr(opts, k) for k in spec.takes
           if k in known or getattr(opts, k, None) is not None}
    own = getattr(opts, "runtime_options", None) or {}
    return out | {o.attr: own[o.attr] for o in spec.options if o.attr in own}


def check_runtime_options(given: dict[str, Any], runtimes: tuple[str, ...] | None, command: str,
                          device: str) -> None:
    """A runtime's own option given while that runtime is not run is refused: it would change nothing."""
    chosen = set(runtimes or default_runtimes(command, device))
    for spec, o in row_options():
        if o.attr in given and spec.name not in chosen:
            raise BadInput(f"{o.flag} is an option of the {spec.name} runtime, which this {command} does not run: "
                           f"add --runtime {spec.name}, or leave {o.flag} out")


def check_device(spec: RuntimeSpec, device: str) -> None:
    """Refuse a runtime on a device it does not run on (an engine runtime is never refused here: an engine runs
    on its GPU or not at all, and its runner says why not)."""
    if spec.runs != "engine" and device not in spec.devices:
        raise BadInput(f"--runtime {spec.name} ({spec.help}) needs --device {' or '.join(spec.devices)}")


def _device_of(spec: RuntimeSpec, device: str) -> str:
    check_device(spec, device)
    return "cuda" if spec.runs == "engine" else device


def select_candidates(manifest: Manifest, folder: Path, *, command: str, runtimes: tuple[str, ...] | None,
                   precisions: tuple[Precision, ...] | None, device: str) -> list[Candidate]:
    """Every (artifact, runtime) pair to run, graphs then engines then the PyTorch model, or the one-line reason
    there is none. The torch runtime runs fp32 and fp16, but not fp16 on a CPU for timing (PyTorch emulates it
    there: a parity check, not a speed)."""
    specs = [runtime_spec(n) for n in (runtimes or default_runtimes(command, device))]
    wanted = precisions or tuple(Precision)
    out: list[Candidate] = []
    for entry in manifest.entries():
        out += [Candidate(entry.name, s, entry.precision, _device_of(s, device), entry)
                for s in specs if s.runs == entry.form and entry.precision in wanted]
    for s in (s for s in specs if s.runs == "module"):
        dev = _device_of(s, device)
        out += [Candidate(f"{s.name}-{p.value}", s, p, dev, None) for p in wanted if PRECISIONS[p].torch_runs
                and not (command == "bench" and dev == "cpu" and p is not Precision.fp32)]
    if not out:
        names = ", ".join(s.name for s in specs)
        raise BadInput(f"nothing to {_VERB.get(command, command)} in {folder} for precision(s) "
                       f"{', '.join(p.value for p in wanted)} and runtime(s) {names}: it holds {holdings(manifest)}; "
                       f"export more with resnetx export --precision ... --out {folder}, or use --runtime torch "
                       "(torch runs fp32, and fp16)")
    return out


def open_candidate(t: Candidate, folder: Path, manifest: Manifest, reference: Reference | None, **opts: Any) -> Runtime:
    """The runtime for a target, its file checked against the manifest first. An engine made for another GPU or
    TensorRT says how to rebuild it here."""
    if t.entry is None:
        if reference is None:
            raise BackendUnavailable(f"the {t.runtime.name} runtime runs the PyTorch model, which is not here")
        model = reference.require_model(f"the {t.runtime.name} runtime runs the PyTorch model")
        return open_runtime(t.runtime.name, model, device=t.device, precision=t.precision.value, **opts)
    path = checked_file(folder, t.entry)
    if not isinstance(t.entry, EngineEntry):
        return open_runtime(t.runtime.name, path, device=t.device, precision=t.precision.value, **opts)
    try:
        return open_runtime(t.runtime.name, path, device="cuda", target=t.entry.target, **opts)
    except IncompatibleArtifact as e:
        cmd = remake_command(manifest, folder, (t.precision,), engines_only=True, gpu_cc=e.gpu_cc)
        raise IncompatibleArtifact(f"{e}; rebuild it here with: {cmd}", gpu_cc=e.gpu_cc) from e
