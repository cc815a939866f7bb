"""The artifact folder: atomic writes, manifest.json, sha256 provenance, an export lock."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporters.onnx import atomic_write
from runtimes.errors import BadInput, CheckFailed

__all__ = [
    "MANIFEST",
    "MANIFEST_VERSION",
    "Manifest",
    "atomic_write_bytes",
    "atomic_write_text",
    "export_lock",
    "read_manifest",
    "write_manifest",
    "tool_versions",
    "check_sha",
    "audit_folder",
    "layer_note",
    "system_info",
]

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_TMP_PREFIX = ".tmp-"


def atomic_write_bytes(dst: Path, data: bytes) -> None:
    atomic_write(Path(dst), data)


def atomic_write_text(dst: Path, text: str) -> None:
    atomic_write_bytes(dst, text.encode())


@contextlib.contextmanager
def export_lock(folder: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the folder so two exports never interleave their writes."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(f, flags)
        except BlockingIOError as e:
            raise BadInput(f"another resnetx export is writing {folder}; wait for it to finish") from e
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def tool_versions() -> dict[str, str]:
    """Versions of everything that shapes an artifact's bytes; stored in the manifest."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("resnetx", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu",
                 "numpy", "tensorrt", "tensorrt-rtx-cu13", "tensorrt-cu13"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_info() -> dict[str, Any]:
    """Where a run happened: CPU, cores, platform, GPU and driver, library versions (bench and verify reports)."""
    info: dict[str, Any] = {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                            "versions": tool_versions(), "gpu": None}
    import torch

    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                       "compute_capability": f"{p.major}.{p.minor}", "cuda": torch.version.cuda,
                       "driver": _driver_version()}
    return info


def _driver_version() -> str | None:
    try:
        import subprocess

        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Manifest:
    """manifest.json: what was built, from what, with which tools; the contract between commands."""

    model: dict[str, Any]
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=tool_versions)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    version: int = MANIFEST_VERSION

    def holdings(self) -> str:
        """'fp32 (ort), int8 (trt)': the precisions and runners of what the folder holds, for messages."""
        return ", ".join(sorted({f"{e['precision']} ({'ort' if e['kind'] == 'onnx' else 'trt'})"
                                 for e in self.artifacts.values()}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created": self.created,
            "model": self.model,
            "artifacts": self.artifacts,
            "calibration": self.calibration,
            "versions": self.versions,
        }


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Written last and atomically: its presence means every file it names is complete."""
    path = folder / MANIFEST
    atomic_write_text(path, json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(folder: Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BadInput(f"artifact folder {folder} does not exist; create it with 'resnetx export --out {folder}'")
    if not path.is_file():
        stray = [p.name for p in folder.glob("*.onnx")] + [p.name for p in folder.glob(_TMP_PREFIX + "*")]
        hint = f" but holds {', '.join(sorted(stray)[:4])}: an export into it failed or was interrupted, or it is not an artifact folder" if stray else ""
        raise BadInput(f"{folder} has no {MANIFEST}{hint}; run 'resnetx export --out {folder}'")
    try:
        d = json.loads(path.read_text())
        if d.get("version") != MANIFEST_VERSION:
            raise BadInput(f"{path} has manifest version {d.get('version')}; this resnetx reads {MANIFEST_VERSION}")
        m = Manifest(model=d["model"], artifacts=d.get("artifacts", {}), calibration=d.get("calibration"),
                     versions=d.get("versions", {}), created=d.get("created", ""), version=d["version"])
        _check_fields(m)
        return m
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise BadInput(f"{path} is not a valid resnetx manifest ({e}); re-run resnetx export") from e


_MODEL_FIELDS = ("arch", "family", "num_classes", "in_chans", "image_size", "preprocess")
_ENTRY_FIELDS = ("file", "sha256", "precision", "kind")


def _check_fields(m: Manifest) -> None:
    """Every field later steps read is there: a hand-edited manifest fails here in one line, not deep in a step."""
    from pipeline.models import ModelInfo

    missing = [f"model.{k}" for k in _MODEL_FIELDS if k not in m.model]
    missing += [f"artifacts.{name}.{k}" for name, e in m.artifacts.items() for k in _ENTRY_FIELDS if k not in e]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    try:
        ModelInfo.from_dict(m.model)  # the preprocessing spec and field types
    except KeyError as e:
        raise ValueError(f"missing model.preprocess.{e.args[0]}") from e


def check_sha(folder: Path, entry: dict[str, Any]) -> Path:
    """The artifact's file, after checking it still has the sha256 the manifest recorded."""
    from pipeline.models import file_sha256

    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise BadInput(f"{path} named in the manifest is missing; restore it, or re-run the resnetx export that made "
                       f"{folder} (--out {folder}, with its model options)")
    if file_sha256(path) != entry["sha256"]:
        raise CheckFailed(
            f"{path.name} changed after export (sha256 differs from manifest.json); "
            f"its provenance is unknown: re-run the resnetx export that made {folder} (--out {folder}, with its "
            "model options) with --force"
        )
    return path


def audit_folder(folder: Path) -> dict[str, Any]:
    """What the folder holds and whether it is still what export made: every artifact's file checked
    against its recorded sha256 (ok / changed / missing), the tool versions then and now, the stored
    reference logits, and the last verify verdict with whether it is about this export."""
    from pipeline.models import file_sha256

    folder = Path(folder)
    m = read_manifest(folder)
    by_sha = {e["sha256"]: e["file"] for e in m.artifacts.values()}
    rows = []
    for key, e in m.artifacts.items():
        path = folder / e["file"]
        status = "missing" if not path.is_file() else "ok" if file_sha256(path) == e["sha256"] else "changed"
        rows.append({"artifact": key, "file": e["file"], "kind": e["kind"], "precision": e["precision"],
                     "size_bytes": e.get("size_bytes"), "sha256": e["sha256"], "status": status,
                     "source": by_sha.get(e.get("source_sha256") or "", e.get("source_file")) or "PyTorch model",
                     "target": _engine_target(e) if e["kind"] == "engine" else None})
    now = tool_versions()
    drift = {k: [v, now.get(k)] for k, v in m.versions.items() if k != "resnetx" and now.get(k) != v}
    verify: dict[str, Any] | None = None
    vpath = folder / "reports" / "verify.json"
    if vpath.is_file():
        try:
            v = json.loads(vpath.read_text())
            verify = {"passed": v.get("passed"), "data": v.get("data"), "samples": v.get("samples"),
                      "current": v.get("manifest_created") == m.created}
        except (json.JSONDecodeError, AttributeError):
            verify = {"passed": None, "error": "reports/verify.json is unreadable"}
    return {"folder": str(folder), "created": m.created, "model": m.model, "artifacts": rows,
            "calibration": m.calibration, "int8_check": m.artifacts.get("int8", {}).get("check"),
            "static_batch": m.artifacts.get("fp32", {}).get("static_batch"),
            "versions": m.versions, "version_drift": drift,
            "references": sorted(p.name for p in (folder / "reports").glob("reference.*.npz")),
            "verify": verify, "intact": all(r["status"] == "ok" for r in rows)}


def layer_note(counts: dict[str, int] | None, precision: str) -> str:
    """'22/22 conv/matmul in fp16': what an engine's network computes in, from the check before its build."""
    if not counts:
        return "network precision not recorded"
    n = {"fp16": counts["fp16_compute_layers"], "int8": counts["int8_compute_layers"]}.get(
        precision, counts["compute_layers"] - counts["fp16_compute_layers"])
    return f"{n}/{counts['compute_layers']} conv/matmul in {precision}"


def _engine_target(e: dict[str, Any]) -> str:
    """Where an engine runs: the TensorRT flavour and version it needs, its GPUs, its batch profile."""
    flavor = "TensorRT-RTX" if e.get("flavor") == "rtx" else "TensorRT"
    gpus = ", ".join(e.get("compute_capabilities") or []) or (
        f"{e.get('gpu') or 'the build GPU'} (compute capability {e.get('compute_capability') or 'unknown'})")
    lo, opt, hi = e.get("profile") or (None, None, None)
    return (f"{flavor} {e.get('trt_version')}, {gpus}, batch {lo}..{hi} (opt {opt}), "
            f"{layer_note(e.get('network'), e.get('precision', '?'))}")

