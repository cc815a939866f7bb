"""Each artifact's verdicts, with what they were measured on, and the one that stands.

Every verify appends one record per artifact it judged to reports/verdicts.json: pass or fail, the artifact's sha256,
the runtime, device and machine kind, the data, how many images, whether they were labelled with the model's classes,
the date. The verdict that stands for an artifact is decided per runtime and machine kind that judged its current file:
the latest record on the most representative data judged there (labelled data of the model's classes over unlabelled,
the user's data over the bundled sample over synthetic noise, more images over fewer); the artifact fails if any of
them fails. A later verify of other precisions, or on less representative data, adds records and clears nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.folder.manifest import Manifest, known_fields, read_manifest
from resnetx.errors import BadInput, ResnetxError
from resnetx.files import atomic_write_text

__all__ = ["VERDICTS", "Verdict", "Standing", "read_verdicts", "write_verdicts", "standing"]

VERDICTS = Path("reports") / "verdicts.json"


@dataclass(frozen=True)
class Verdict:
    artifact: str  # manifest name: "int8", "fp16.rtx"
    sha256: str  # of the file judged: a re-exported artifact starts afresh
    passed: bool
    runtime: str  # as reports print it: "ort-cpu-int8"
    device: str
    kind: str  # the machine kind it ran on: "cpu", "L4"
    data: str  # the dataset, as verify names it
    samples: int  # inputs compared (real images plus the extreme ones)
    labelled: bool  # the images carry labels of the model's classes: accuracy was judged, not only agreement
    date: str
    reasons: tuple[str, ...] = ()
    top1_agreement: float | None = None
    accuracy_drop: float | None = None

    @property
    def rank(self) -> tuple[bool, int, int]:
        """How representative the data was: labelled first, then the user's data, then the image count."""
        real = 0 if self.data == "synthetic" else 1 if self.data == "sample" else 2
        return (self.labelled, real, self.samples)

    @property
    def words(self) -> str:
        """'fail on 2000 imagefolder:/data/val images, labelled (ort-cpu-int8 on cpu, 2026-12-05)'"""
        what = "labelled" if self.labelled else "unlabelled: agreement only"
        when = f", {self.date[:10]}" if self.date else ""
        return (f"{'pass' if self.passed else 'fail'} on {self.samples} {self.data} inputs, {what} "
                f"({self.runtime} on {self.kind}{when})")

    @property
    def brief(self) -> str:
        """'fail (ort-cpu-int8, 2000 inputs)': for a table cell."""
        return f"{'pass' if self.passed else 'fail'} ({self.runtime}, {self.samples} inputs)"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(**{**known_fields(d, cls), "reasons": tuple(d.get("reasons", ()))})


@dataclass(frozen=True)
class Standing:
    """The verdict that stands for one artifact, and the record of each runtime x kind that decided it."""

    artifact: str
    deciding: tuple[Verdict, ...]  # per runtime and kind: the latest on the most representative data

    @property
    def passed(self) -> bool:
        return bool(self.deciding) and all(v.passed for v in self.deciding)

    @property
    def words(self) -> str:
        return "; ".join(v.words for v in self.deciding)

    @property
    def brief(self) -> str:
        return "; ".join(v.brief for v in self.deciding)


def read_verdicts(folder: Path) -> list[Verdict]:
    """Every record of the folder, oldest first. A folder verified before verdicts were kept has its last
    reports/verify.json read as records instead. A record file that cannot be read, or is not resnetx's, is refused
    (BadInput naming it): it holds every failure of the folder, and reading it as empty would clear them."""
    path = Path(folder) / VERDICTS
    if not path.is_file():
        return _from_last_verify(folder)
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict) or d.get("version") != 1 or not isinstance(d.get("verdicts"), list):
            raise ValueError("it is not a resnetx verdict record ({\"version\": 1, \"verdicts\": [...]})")
        return [Verdict.from_dict(_checked(v)) for v in d["verdicts"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise BadInput(f"{path} cannot be read ({e}); it holds every verdict of this folder, failures included: "
                       f"restore it from a backup, or move it aside (mv {path} {path}.damaged) and verify again, "
                       "which starts the record afresh") from e


def _checked(v: object) -> dict[str, Any]:
    """One record, its fields of the types the verdict rules read."""
    if not isinstance(v, dict):
        raise ValueError(f"a record is {type(v).__name__}, not an object")
    for key, kind in _FIELDS.items():
        if not isinstance(v.get(key), kind) or (kind is int and isinstance(v.get(key), bool)):
            raise ValueError(f"a record's {key!r} is {v.get(key)!r}")
    return v


_FIELDS: dict[str, type | tuple[type, ...]] = {"artifact": str, "sha256": str, "passed": bool, "runtime": str,
                                                "device": str, "kind": str, "data": str, "samples": int,
                                                "labelled": bool, "date": str}


def _from_last_verify(folder: Path) -> list[Verdict]:
    """reports/verify.json of resnetx before per-artifact verdicts (manifest v2): its rows, about its export (an
    old report that cannot be read holds no records to keep)."""
    try:
        v = json.loads((Path(folder) / "reports" / "verify.json").read_text())
        m = read_manifest(folder)
    except (OSError, ValueError, ResnetxError):
        return []
    if not isinstance(v, dict) or v.get("manifest_created") != m.created:
        return []  # about an earlier export
    sha = {e.name: e.sha256 for e in m.entries()}
    labelled = any((r.get("metrics") or {}).get("top1") is not None for r in v.get("rows", []))
    out = []
    for r in v.get("rows", []):
        if isinstance(r, dict) and r.get("artifact") and not r.get("skipped"):
            out.append(Verdict(r["artifact"], sha.get(r["artifact"], ""), bool(r.get("passed")),
                               r.get("runtime", ""), r.get("device", ""), (v.get("system") or {}).get("kind", "cpu"),
                               v.get("data", ""), int(v.get("samples") or 0), labelled, "",
                               tuple(r.get("failures", []))))
    return out


def write_verdicts(folder: Path, records: list[Verdict]) -> Path:
    """reports/verdicts.json holding `records` (written whole, atomically); the caller holds the folder's lock and
    read the records it extends with read_verdicts."""
    path = Path(folder) / VERDICTS
    atomic_write_text(path, json.dumps({"version": 1, "verdicts": [v.to_dict() for v in records]}, indent=1) + "\n")
    return path


def standing(folder: Path, manifest: Manifest, records: list[Verdict] | None = None) -> dict[str, Standing]:
    """The standing verdict of each artifact of the manifest that has records about its current file."""
    records = read_verdicts(folder) if records is None else records
    current = {e.name: e.sha256 for e in manifest.entries()}
    groups: dict[tuple[str, str, str], Verdict] = {}
    for v in records:  # oldest first: at equal rank the later record wins
        if current.get(v.artifact) != v.sha256:
            continue
        key = (v.artifact, v.runtime, v.kind)
        if key not in groups or v.rank >= groups[key].rank:
            groups[key] = v
    out: dict[str, Standing] = {}
    for (artifact, _, _), v in sorted(groups.items()):
        out[artifact] = Standing(artifact, (*out[artifact].deciding, v) if artifact in out else (v,))
    return out
