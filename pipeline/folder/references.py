"""The reference logits a folder stores, and the inputs they are of.

Export computes the reference logits for verify's default inputs while the model is in memory and stores them in
reports/reference.sample.512.npz (like Polygraphy's --save-outputs), so that verify compares against them instead of
running the source again; verify stores the ones for other inputs the same way (one file per dataset and sample
count). Each file is keyed by the source's hash and the exact input bytes, and records what computed it: with the
source at hand, another version of its framework recomputes it; without it (a folder copied to a machine that lacks
the checkpoint) it is the reference.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.defaults import DEFAULT_REFERENCE_SAMPLES as DEFAULT_SAMPLES
from pipeline.model.data import ImageSet, eval_indices, open_dataset, spread_over_classes, spread_words
from pipeline.model.preprocess import Preprocess
from resnetx.files import atomic_writer

__all__ = ["N_EXTREME", "DEFAULT_SAMPLES", "Inputs", "ArrayInputs", "StoredRows", "ReferenceLogits", "verify_inputs",
           "reference_file", "stored_or_computed", "store"]

N_EXTREME = 4  # zeros, unit noise, wide noise, a real image x5: the inputs real data never shows
REFERENCE_CHUNK = 64  # inputs decoded and run at a time: memory does not grow with --samples


def reference_file(data: str, samples: int) -> Path:
    """Where the reference for these inputs is stored, relative to the artifact folder."""
    tag = re.sub(r"[^A-Za-z0-9_-]+", "_", data).strip("_")[:40] or "data"
    return Path("reports") / f"reference.{tag}.{samples}.npz"


@dataclass(frozen=True)
class Inputs:
    """verify's inputs: real images (read a chunk at a time: memory does not grow with their number), then up to
    N_EXTREME extreme ones."""

    images: ImageSet
    labels: np.ndarray | None  # for the real images, when the dataset's classes are the model's
    n_extreme: int
    drawn: str  # how the real images were chosen, in words
    seed: int = 0
    data_spec: str = ""  # what the user named (--data): the stored reference's file name comes from it

    @property
    def data(self) -> str:
        return self.images.ds.name

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.images.ds.class_names

    @property
    def n_real(self) -> int:
        return len(self.images)

    def __len__(self) -> int:
        return self.n_real + self.n_extreme

    @property
    def shape(self) -> tuple[int, int, int, int]:
        pre = self.images.pre
        return (len(self), pre.channels, pre.image_size, pre.image_size)

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """Every input in order, at most `size` at a time (float32 NCHW): the real images, then the extreme ones."""
        yield from self.images.chunks(size)
        if self.n_extreme:
            yield self._extremes()

    def head(self, n: int) -> np.ndarray:
        """The first n inputs, in memory."""
        out, have = [], 0
        for c in self.chunks(min(max(n, 1), 64)):
            out.append(c[: n - have])
            have += len(out[-1])
            if have >= n:
                break
        return np.concatenate(out)

    def _extremes(self) -> np.ndarray:
        """Zeros, unit noise, wide noise, the first real image x5: what real data never shows."""
        shape = self.shape[1:]
        rng = np.random.default_rng(self.seed)
        first = next(self.images.chunks(1))[0]
        made = [np.zeros(shape), rng.standard_normal(shape), 3.0 * rng.standard_normal(shape), 5.0 * first]
        return np.stack(made[: self.n_extreme]).astype(np.float32)


@dataclass(frozen=True)
class ArrayInputs:
    """Inputs already in memory (a fleet node gets them from the object store, shipped once by the driver): the
    same reading interface as Inputs."""

    x: np.ndarray  # float32 NCHW: the real images first
    labels: np.ndarray | None
    n_real: int
    data: str
    drawn: str = ""
    class_names: tuple[str, ...] | None = None
    data_spec: str = ""

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        for i in range(0, len(self.x), size):
            yield self.x[i : i + size]

    def head(self, n: int) -> np.ndarray:
        return self.x[:n]

    @classmethod
    def of(cls, inputs: Inputs) -> ArrayInputs:
        """Every input of `inputs` read into memory (what a fleet ships to its nodes)."""
        return cls(inputs.head(len(inputs)), inputs.labels, inputs.n_real, inputs.data, inputs.drawn,
                   inputs.class_names, inputs.data_spec)


def verify_inputs(data: str, data_dir: Path | None, samples: int, pre: Preprocess, num_classes: int,
                  *, seed: int = 0) -> Inputs:
    """`samples` inputs: real test-split images, then up to N_EXTREME extreme ones. An image folder (read in class
    order) gets a seeded draw spread over its classes; the other datasets' first images are already mixed."""
    ds = open_dataset(data, split="test", data_dir=data_dir, preprocess=pre)
    n_real = min(max(samples - N_EXTREME, 1), len(ds))
    n_extreme = min(N_EXTREME, max(0, samples - n_real))
    index = eval_indices(ds, n_real, seed)
    if spread_over_classes(ds, n_real):
        drawn = f"{n_real} of {len(ds)} images {spread_words(ds.labels[index], len(ds.class_names or ()))}"
    else:
        drawn = f"the first {n_real} of {len(ds)} images" if n_real < len(ds) else f"all {n_real} images"
    images = ImageSet(ds, pre, index)
    labels = images.labels if len(ds.class_names or ()) == num_classes else None
    return Inputs(images, labels, n_extreme, drawn, seed, data)


def _row_keys(state_sha256: str, x: np.ndarray) -> list[str]:
    """One hash per input: a stored reference serves any subset of its inputs (verify --samples 64 after an
    export stored 512: the first real images and the extreme ones are the same arrays)."""
    return [hashlib.sha256(state_sha256.encode() + str(r.shape).encode() + r.tobytes()).hexdigest() for r in x]


class StoredRows:
    """Every stored reference row in a reports folder (or in `files`), by its input's key: (logits, what computed
    them: a torch version, or 'onnxruntime X'). Only the rows `made_by` computed count, any when it is None (the
    source is not here to compute them again); `StoredRows(None)` holds none."""

    def __init__(self, reports: Path | None, *, made_by: str | None = None, files: list[Path] | None = None) -> None:
        self.rows: dict[str, tuple[np.ndarray, str]] = {}
        found = sorted(Path(reports).glob("reference.*.npz")) if reports is not None else []
        for f in files if files is not None else found:
            try:
                with np.load(f) as z:
                    computed_by = str(z["torch"])
                    if "rows" not in z.files or (made_by is not None and computed_by != made_by):
                        continue
                    logits = z["logits"]
                    for k, row in zip(z["rows"].tolist(), logits, strict=True):
                        self.rows.setdefault(k, (row, computed_by))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                continue  # unreadable, truncated or an older format: its rows are computed again

    def get(self, keys: list[str]) -> tuple[np.ndarray, str] | None:
        if keys and all(k in self.rows for k in keys):
            return np.stack([self.rows[k][0] for k in keys]), self.rows[keys[0]][1]
        return None


@dataclass(frozen=True)
class ReferenceLogits:
    logits: np.ndarray | None  # None: rows were missing and no model was here to compute them
    made_by: str | None  # the torch version that stored them; None when any were computed now
    rows: list[str]  # each input's key
    key: str  # all inputs' key


def stored_or_computed(inputs: Inputs, state_sha256: str, stored: StoredRows,
                       compute: Callable[[np.ndarray], np.ndarray] | None,
                       on_batch: Callable[[int], None] | None = None) -> ReferenceLogits:
    """The logits of every input, a chunk at a time: stored rows where there are, `compute` (the source's fp32
    logits) for the rest."""
    out: np.ndarray | None = None  # filled in place: one N x classes array, never a list of chunks and its copy
    made_by, computed, rows, done = None, False, [], 0
    whole = hashlib.sha256(state_sha256.encode() + str(inputs.shape).encode())
    for x in inputs.chunks(REFERENCE_CHUNK):
        keys = _row_keys(state_sha256, x)
        whole.update(x.tobytes())
        rows += keys
        found = stored.get(keys)
        if found is None and compute is None:
            return ReferenceLogits(None, None, rows, "")
        got = found[0] if found is not None else compute(x)
        made_by, computed = (made_by or found[1], computed) if found is not None else (made_by, True)
        if out is None:
            out = np.empty((len(inputs), got.shape[1]), np.float32)
        out[done : done + len(x)] = got
        done += len(x)
        if on_batch:
            on_batch(len(x))
    return ReferenceLogits(out, None if computed else made_by, rows, whole.hexdigest())


def store(path: Path, ref: ReferenceLogits, made_by: str) -> None:
    """Reference logits stored at `path`, keyed by the source's hash and each input's bytes (and all inputs': `key`),
    with what computed them (the `torch` field: a torch version, or 'onnxruntime X' for an ONNX source)."""
    with atomic_writer(path) as f:  # straight to the file: no in-memory copy of the logits
        np.savez(f, key=np.array(ref.key), torch=np.array(made_by), logits=ref.logits, rows=np.array(ref.rows))
