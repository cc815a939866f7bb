"""`resnetx predict DIR PATH...`: classify image files (or folders of them, read recursively, sorted) with one of the
folder's artifacts, with the model's own preprocessing from the manifest (size, crop, channel order, scaling, mean or
mean image) and its class names. A file that cannot be decoded is named and left out; the others are classified."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.check.candidates import open_candidate, opener_options, select_candidates
from pipeline.folder.manifest import Manifest, read_manifest
from pipeline.folder.verdicts import standing
from pipeline.model.data import IMAGE_EXTENSIONS, decode_image
from pipeline.precisions import Precision
from resnetx.errors import BadInput
from resnetx.files import atomic_write_text
from runtimes.registry import runners_of

__all__ = ["PredictOptions", "Prediction", "PredictResult", "predict_files", "image_files"]


@dataclass(frozen=True)
class PredictOptions:
    folder: Path
    paths: tuple[Path, ...]
    artifact: str | None = None  # a precision (fp32, fp16, int8) or an engine's name; None: fp32
    runtime: str | None = None  # None: the first runtime that runs that kind of artifact (ort for graphs)
    device: str = "cpu"
    top: int = 5
    json: Path | None = None
    batch_size: int = 16
    runtime_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        if not self.paths:
            raise BadInput("give image files or folders to classify: resnetx predict DIR IMAGE...")
        if self.top < 1 or self.batch_size < 1:
            raise BadInput("--top and --batch-size must be >= 1")
        if self.json is not None and Path(self.json).is_dir():
            raise BadInput(f"--json {self.json} is a folder; give a file name")


@dataclass(frozen=True)
class Prediction:
    file: str
    top: list[dict[str, Any]]  # {"index", "name", "score"}, best first
    outputs: list[float]  # the graph's raw output vector

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "top": self.top, "outputs": self.outputs}


@dataclass
class PredictResult:
    artifact: str
    runtime: str
    output: str  # "logits" (scores are their softmax) or "probabilities" (scores are the outputs)
    predictions: list[Prediction]
    bad: list[str]  # files that could not be decoded, and why
    notes: list[str] = field(default_factory=list)
    json: Path | None = None
    seconds: float = 0.0

    def raise_for_bad(self) -> None:
        """Exit 2 at the end when any file could not be decoded (the others were classified)."""
        if self.bad:
            raise BadInput(f"{len(self.bad)} file(s) could not be decoded and were left out (named above); the "
                           f"other {len(self.predictions)} were classified")


def image_files(paths: tuple[Path, ...]) -> list[Path]:
    """The files named, and the images under the folders named (recursively, sorted), in the order given."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise BadInput(f"{p} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise BadInput(f"{p} does not exist; give image files or folders of them")
    return out


def _entry_name(m: Manifest, asked: str | None) -> str:
    name = asked or Precision.fp32.value
    if m.entry(name) is None:
        names = ", ".join(e.name for e in m.entries())
        raise BadInput(f"--precision {name}: the folder holds no such artifact; it holds {names}")
    return name


def _scores(out: np.ndarray, output: str) -> np.ndarray:
    if output == "probabilities":
        return out
    z = out.astype(np.float64) - out.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


CHUNK = 256  # images decoded, preprocessed and classified at a time: memory stays flat for any number of files


def predict_files(opts: PredictOptions, on_progress: Callable[[int, int], None] | None = None) -> PredictResult:
    """Classify every image, CHUNK at a time (on_progress(done, total) after each); write --json (the images
    classified, in order) when asked."""
    start = time.perf_counter()
    m = read_manifest(opts.folder)
    name = _entry_name(m, opts.artifact)
    entry = m.entry(name)
    runtime = opts.runtime or runners_of(entry.form)[0]
    found = [c for c in select_candidates(m, opts.folder, command="predict", runtimes=(runtime,),
                                          precisions=(entry.precision,), device=opts.device) if c.key == name]
    if not found:
        raise BadInput(f"--runtime {runtime} does not run {name} ({entry.form}); use one of "
                       f"{', '.join(runners_of(entry.form))}")
    info = m.model.info
    files = image_files(opts.paths)
    result = PredictResult(name, runtime, info.output, [], [], _notes(opts.folder, m, name), opts.json)
    with open_candidate(found[0], opts.folder, m, None, **opener_options(found[0].runtime, opts)) as rt:
        result.runtime = rt.name
        for at in range(0, len(files), CHUNK):
            images, kept, bad = _decode(files[at : at + CHUNK], info.preprocess)
            result.bad += bad
            if kept:
                out = rt.infer_all(info.preprocess(np.stack(images)), opts.batch_size)
                result.predictions += _predictions(kept, out, info.output, info.class_names, opts.top)
            if on_progress is not None:
                on_progress(min(at + CHUNK, len(files)), len(files))
    if opts.json is not None:
        atomic_write_text(Path(opts.json), json.dumps([p.to_dict() for p in result.predictions], indent=1) + "\n")
    result.seconds = time.perf_counter() - start
    return result


def _predictions(files: list[Path], out: np.ndarray, output: str, names: list[str] | None,
                 top: int) -> list[Prediction]:
    preds = []
    for f, o, s in zip(files, out, _scores(out, output), strict=True):
        best = np.argsort(-s, kind="stable")[:top]
        preds.append(Prediction(str(f), [{"index": int(i), "name": names[i] if names else None,
                                          "score": float(s[i])} for i in best], [float(v) for v in o]))
    return preds


def _decode(files: list[Path], pre: Any) -> tuple[list[np.ndarray], list[Path], list[str]]:
    images, kept, bad = [], [], []
    for f in files:
        try:
            images.append(decode_image(f, pre))
            kept.append(f)
        except BadInput as e:
            bad.append(str(e))
    return images, kept, bad


def _notes(folder: Path, m: Manifest, name: str) -> list[str]:
    st = standing(folder, m).get(name)
    if st is None:
        return [f"{name} was never verified: resnetx verify {folder} judges it against the reference"]
    if not st.passed:
        return [f"{name}'s standing verdict is FAIL ({st.words}): its answers may differ from the model's"]
    return []
