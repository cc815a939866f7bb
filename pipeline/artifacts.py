"""The artifact folder: atomic writes, manifest.json, sha256 provenance, an export lock."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
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


@dataclass
class Manifest:
    """manifest.json: what was built, from what, with which tools; the contract between commands."""

    model: dict[str, Any]
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=tool_versions)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    version: int = MANIFEST_VERSION

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
        hint = f" but holds {', '.join(sorted(stray)[:4])}: an export into it was interrupted, or it is not an artifact folder" if stray else ""
        raise BadInput(f"{folder} has no {MANIFEST}{hint}; run 'resnetx export --out {folder}'")
    try:
        d = json.loads(path.read_text())
        if d.get("version") != MANIFEST_VERSION:
            raise BadInput(f"{path} has manifest version {d.get('version')}; this resnetx reads {MANIFEST_VERSION}")
        return Manifest(model=d["model"], artifacts=d.get("artifacts", {}), calibration=d.get("calibration"),
                        versions=d.get("versions", {}), created=d.get("created", ""), version=d["version"])
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise BadInput(f"{path} is not a valid resnetx manifest ({e}); re-run resnetx export") from e


def check_sha(folder: Path, entry: dict[str, Any]) -> Path:
    """The artifact's file, after checking it still has the sha256 the manifest recorded."""
    from pipeline.models import file_sha256

    path = Path(folder) / entry["file"]
    if not path.is_file():
        raise BadInput(f"{path} named in the manifest is missing; re-run resnetx export")
    if file_sha256(path) != entry["sha256"]:
        raise CheckFailed(
            f"{path.name} changed after export (sha256 differs from manifest.json); "
            "its provenance is unknown: re-run resnetx export --force"
        )
    return path
