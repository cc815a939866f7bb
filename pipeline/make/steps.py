"""Export as a list of steps, run by one runner: cached or built, timed, reported, recorded.

A step declares what shapes its bytes (`inputs`, plus the files of the steps it reads, `sources`) and how
to make its file (`make`). The runner turns that into a content key, reuses the folder's entry when the key
and the file's sha256 still match, else builds and times the build; either way it reports a StepEvent. Export
and `--engines-only` run their steps through `run_steps` (the int8 accuracy search runs inside the int8 step).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.folder.manifest import MANIFEST, Entry, GraphEntry, Manifest, intact
from pipeline.precisions import Precision
from resnetx.files import TMP_PREFIX, content_key

__all__ = ["Step", "StepEvent", "FolderWriter", "run_steps", "keep_earlier", "kept_event", "remove_strays"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepEvent:
    step: str  # "fp32", "fp16", "int8", "engine fp16", "reference"
    status: str  # "built" | "cached" | "kept" (from an earlier export, not asked for)
    file: str | None = None
    size_bytes: int = 0
    seconds: float = 0.0
    note: str = ""


def _no_note(entry: Entry) -> str:
    return ""


@dataclass(frozen=True)
class Step:
    name: str  # the entry's name in the manifest: "fp32", "int8", "fp16.rtx"
    label: str  # what the export table calls it: "fp32", "engine fp16"
    inputs: dict[str, Any]  # everything besides its sources' files that shapes its bytes
    make: Callable[[dict[str, Entry]], Entry]  # builds the file from the entries made so far; returns its entry
    sources: tuple[str, ...] = ()  # names of the steps whose files it reads
    describe: Callable[[Entry], str] = _no_note  # the export table's note on a built entry
    lookup: Callable[[], Entry | None] | None = None  # its own cache check, for files the manifest does not list

    def key(self, made: dict[str, Entry]) -> str:
        return content_key(step=self.name, inputs=self.inputs, sources={s: made[s].sha256 for s in self.sources})


@dataclass
class FolderWriter:
    """Writes into the artifact folder. Unless `keep_manifest`, the first write removes the old manifest, so a
    crash between here and the new manifest leaves a folder that every command reports as incomplete."""

    path: Path
    old: Manifest | None
    keep_manifest: bool = False  # the caller rewrites it after each step instead (--engines-only)
    written: bool = field(default=False, init=False)

    def cached(self, name: str, key: str) -> Entry | None:
        entry = self.old.entry(name) if self.old else None
        return entry if entry is not None and entry.key == key and intact(self.path, entry) else None

    def before_write(self) -> None:
        if not self.written and not self.keep_manifest:
            (self.path / MANIFEST).unlink(missing_ok=True)
        self.written = True


def run_steps(
    steps: Iterable[Step],
    writer: FolderWriter,
    *,
    force: bool = False,
    made: dict[str, Entry] | None = None,
    on_step: Callable[[StepEvent], None] | None = None,
    on_built: Callable[[dict[str, Entry]], None] | None = None,
) -> dict[str, Entry]:
    """Run each step, cached or built, in order; returns every entry by name (`made`, plus the new ones).

    on_step hears each step's event; on_built hears the entries so far after each build (to rewrite the
    manifest as it goes)."""
    made = dict(made or {})
    for step in steps:
        key = step.key(made)
        found = None if force else (step.lookup() if step.lookup else writer.cached(step.name, key))
        if found is not None:
            made[step.name] = found
            _emit(on_step, StepEvent(step.label, "cached", found.file, found.size_bytes))
            continue
        writer.before_write()
        start = time.perf_counter()  # the step's whole wall time (the int8 step: calibration, any search, the check)
        entry = replace(step.make(made), key=key, seconds=round(time.perf_counter() - start, 3))
        made[step.name] = entry
        _emit(on_step, StepEvent(step.label, "built", entry.file, entry.size_bytes, entry.seconds,
                                 step.describe(entry)))
        if on_built:
            on_built(made)
    return made


def _emit(on_step: Callable[[StepEvent], None] | None, ev: StepEvent) -> None:
    log.debug("%s: %s %s", ev.step, ev.status, ev.file or "")
    if on_step:
        on_step(ev)


def keep_earlier(old: Manifest | None, made: dict[str, Entry], folder: Path) -> list[Entry]:
    """What an earlier export made, this one was not asked for, and is still made from the same graphs, its
    file intact: it stays in the manifest (exporting int8 again, say with --keep-fp32, must not drop the
    folder's fp16 graph and engines). An fp32 graph made anew (other weights, exporter, batch) drops it all."""
    fp32 = made.get(Precision.fp32.value)
    if old is None or fp32 is None:
        return []
    graphs = {e.precision: e.sha256 for e in made.values() if isinstance(e, GraphEntry)}
    kept: list[Entry] = []
    for e in old.graphs.values():  # graphs first: an engine stays only if the graph it came from does
        if e.name not in made and e.source_sha256 == fp32.sha256 and intact(folder, e):
            kept.append(e)
            graphs[e.precision] = e.sha256
    for eng in old.engines.values():
        if eng.name not in made and eng.source_sha256 == graphs.get(eng.precision) and intact(folder, eng):
            kept.append(eng)
    return kept


def remove_strays(folder: Path) -> None:
    """Temporary files left by a killed export; nothing ever reads them."""
    for stray in folder.glob(TMP_PREFIX + "*"):
        if stray.is_file():
            stray.unlink()
        else:
            shutil.rmtree(stray, ignore_errors=True)


def kept_event(entry: Entry) -> StepEvent:
    label = entry.name if isinstance(entry, GraphEntry) else f"engine {entry.precision.value}"
    return StepEvent(label, "kept", entry.file, entry.size_bytes, note="from an earlier export")
