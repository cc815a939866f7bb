"""The folder audit: every file against its recorded sha256, files the manifest no longer lists, tool versions then
and now, stored reference logits, and each artifact's standing verdict (`resnetx info DIR`, verify, triton)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.folder.manifest import Entry, GraphEntry, Manifest, intact, read_manifest, tool_versions
from pipeline.folder.verdicts import Standing, standing
from pipeline.precisions import Precision
from resnetx.errors import BadInput
from runtimes.registry import runners_of

__all__ = ["AuditRow", "FolderAudit", "audit_folder", "stale_files", "serving_gate", "holdings", "ARTIFACT_FILE"]

# the names of the files resnetx makes in a folder: one it does not list is left over from an earlier export
ARTIFACT_FILE = re.compile(r"^(model\.[A-Za-z0-9_.-]+\.(onnx|engine|runtime_cache)|calib\.[A-Za-z0-9_.-]+\.json)$")


@dataclass(frozen=True)
class AuditRow:
    entry: Entry
    status: str  # "ok" | "changed" | "missing"
    source: str  # the file it was made from, or "PyTorch model"


@dataclass(frozen=True)
class KindSummary:
    """What the folder's reports say of one machine kind: its last verify there, and its fleet record."""

    kind: str
    passed: int
    failed: int
    not_run: int
    samples: int | None
    data: str | None
    cc: str | None = None
    flavor: str | None = None
    engines: tuple[str, ...] = ()
    error: str | None = None  # its last fleet task failed: why


@dataclass(frozen=True)
class FolderAudit:
    """What a folder holds and whether it is still what export made."""

    folder: Path
    manifest: Manifest
    rows: list[AuditRow]
    version_drift: dict[str, tuple[str, str | None]]  # tool -> (at export, now)
    references: list[str]  # stored reference logits
    verdicts: dict[str, Standing]  # artifact name -> its standing verdict, for those verify judged
    stale: list[str]  # files resnetx made that the manifest no longer lists
    kinds: list[KindSummary] = field(default_factory=list)  # machine kinds the folder holds reports of

    @property
    def intact(self) -> bool:
        return all(r.status == "ok" for r in self.rows)

    @property
    def static_batch(self) -> int | None:
        fp32 = self.manifest.graphs.get(Precision.fp32)
        return fp32.static_batch if fp32 else None


def holdings(manifest: Manifest) -> str:
    """'fp32 (ort, openvino), int8 (trt)': the precisions of what the folder holds and the runtimes that run them
    (from the runtime rows), for messages that say what a folder can do."""
    return ", ".join(sorted({f"{e.precision.value} ({', '.join(runners_of(e.form))})" for e in manifest.entries()}))


def stale_files(folder: Path, manifest: Manifest) -> list[str]:
    """Files of resnetx's naming in the folder that the manifest does not list (an engine of a graph exported again
    without --engine, a runtime cache of a removed engine); the calibration caches the int8 graph names stay."""
    listed = {e.file for e in manifest.entries()}
    listed |= {Path(e.file).with_suffix(".runtime_cache").name for e in manifest.engines.values()}
    cal = manifest.calibration
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and ARTIFACT_FILE.match(p.name)
                  and p.name not in listed and not (cal and p.name.startswith("calib.")))


def audit_folder(folder: Path) -> FolderAudit:
    """Every artifact's file checked against its recorded sha256, stale files, the tool versions then and now, the
    stored reference logits, and each artifact's standing verdict."""
    folder = Path(folder)
    m = read_manifest(folder)
    by_sha = {e.sha256: e.file for e in m.entries()}
    rows = []
    for e in m.entries():
        status = "missing" if not (folder / e.file).is_file() else "ok" if intact(folder, e) else "changed"
        source = by_sha.get(e.source_sha256 or "") or getattr(e, "source_file", "") or m.model.spec.describe
        rows.append(AuditRow(e, status, source))
    now = tool_versions()
    drift = {k: (v, now.get(k)) for k, v in m.versions.items() if k != "resnetx" and now.get(k) != v}
    refs = sorted(p.name for p in (folder / "reports").glob("reference.*.npz"))
    return FolderAudit(folder, m, rows, drift, refs, standing(folder, m), stale_files(folder, m),
                       kind_summaries(folder))


def _json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def kind_summaries(folder: Path) -> list[KindSummary]:
    """One summary per machine kind whose reports the folder holds (reports/<kind>/verify.json or fleet.json)."""
    out = []
    for kind_dir in sorted(p for p in (Path(folder) / "reports").glob("*") if p.is_dir()):
        v, fleet = _json(kind_dir / "verify.json"), _json(kind_dir / "fleet.json")
        if not v and not fleet:
            continue
        rows = [r for r in v.get("rows", []) if isinstance(r, dict)]
        out.append(KindSummary(kind_dir.name, sum(1 for r in rows if not r.get("skipped") and r.get("passed")),
                               sum(1 for r in rows if not r.get("skipped") and not r.get("passed")),
                               sum(1 for r in rows if r.get("skipped")), v.get("samples"), v.get("data"),
                               fleet.get("cc"), fleet.get("flavor"), tuple(fleet.get("engines") or ()),
                               fleet.get("error")))
    return out


def serving_gate(audit: FolderAudit, names: list[str], allow_unverified: bool, notes: list[str],
                 command: str) -> dict[str, Standing]:
    """What a hand-off (a Triton repository, a DeepStream config) may ship of the artifacts `names`: never a file
    that fails its audit; unless allowed, no artifact whose standing verdict is a fail, and not a folder none of
    whose artifacts was ever verified. The standing verdict of each, for the hand-off to name its data."""
    if bad := [f"{r.entry.file} ({r.status})" for r in audit.rows if r.status != "ok"]:
        raise BadInput(f"{audit.folder} fails its sha256 audit: {', '.join(bad)}; {command} would ship files of "
                       f"unknown provenance: re-run the resnetx export that made it with --force")
    verdicts = {n: audit.verdicts[n] for n in names if n in audit.verdicts}
    failed = [f"{n} ({v.words})" for n, v in verdicts.items() if not v.passed]
    # an ONNX graph verifies on any machine; an engine only on its GPU, so an unverified one gets a note instead
    unverified = [n for n in names if n not in verdicts and isinstance(audit.manifest.entry(n), GraphEntry)]
    problem = (f"has a failing verdict for {'; '.join(failed)}" if failed
               else "has never been verified" if not verdicts
               else f"has never verified {', '.join(unverified)}" if unverified else None)
    if problem is None:
        return verdicts
    if not allow_unverified:
        hint = ("leave it out with --precision, re-export it, or verify it on at least as representative data "
                "until it passes" if failed else f"run 'resnetx verify {audit.folder}' first")
        raise BadInput(f"{audit.folder} {problem}: {hint}; or give --allow-unverified to ship it anyway")
    notes.append(f"--allow-unverified: {audit.folder} {problem}; shipped anyway")
    return verdicts
