"""The fp32 PyTorch reference: the inputs verify compares on, and their logits, stored per folder.

Export computes the reference logits for verify's default inputs while the model is in memory and
stores them in reports/reference.sample.512.npz (like Polygraphy's --save-outputs), so that verify
compares against them instead of re-running PyTorch; verify stores the ones for other inputs the same
way (one file per dataset and sample count). Each file is keyed by the weights and the exact input
bytes, and records the torch version that computed it: with the weights at hand, another torch
recomputes it; without them (a folder copied to a machine that lacks the checkpoint) it is the reference.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.artifacts import Manifest
from pipeline.data import Preprocess, iter_batches, open_dataset
from pipeline.export_options import DEFAULT_REFERENCE_SAMPLES as DEFAULT_SAMPLES
from pipeline.zoo import ModelInfo, load_model, state_sha256
from resnetx.errors import BackendUnavailable, BadInput
from resnetx.files import atomic_write

__all__ = ["N_EXTREME", "DEFAULT_SAMPLES", "Inputs", "Reference", "verify_inputs", "reference_logits",
           "reference_file", "load_stored", "compute_and_store"]

N_EXTREME = 4  # zeros, unit noise, wide noise, a real image x5: the inputs real data never shows


@dataclass
class Reference:
    """The fp32 PyTorch model the artifacts came from, or why it is not on this machine.

    A weights file absent here (a folder copied elsewhere) is not an error: the stored logits stand in for
    the model where they can. Weights that differ from the ones exported always are.
    """

    info: ModelInfo
    state_sha256: str
    model: torch.nn.Module | None
    why_missing: str = ""

    @classmethod
    def of(cls, manifest: Manifest) -> Reference:
        section = manifest.model
        weights = section.spec.weights
        if weights and not Path(weights).is_file():
            return cls(section.info, section.state_sha256, None,
                       f"the reference weights {weights} are not on this machine")
        model, info = load_model(section.spec)
        if state_sha256(model) != section.state_sha256:
            raise BadInput("the reference model's weights differ from the ones exported (state sha256 mismatch); "
                           "re-run resnetx export --force")
        return cls(info, section.state_sha256, model)

    def require_model(self, purpose: str) -> torch.nn.Module:
        """The model, or BackendUnavailable saying what cannot run without it."""
        if self.model is None:
            raise BackendUnavailable(f"{purpose}: {self.why_missing}")
        return self.model

    def logits(self, folder: Path, inputs: Inputs, *, samples: int,
               on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, str | None]:
        """(reference logits for the inputs, the torch version that computed them when they were stored, else
        None). Stored logits count only if this torch computed them, unless the model is not here: then stored
        logits for these inputs are the reference, whatever torch computed them, and anything else is an error."""
        path = Path(folder) / reference_file(inputs.data_spec, samples)
        if found := load_stored(path, self.state_sha256, inputs.x, any_torch=self.model is None):
            return found
        if self.model is None:
            raise BadInput(f"{self.why_missing}, and no stored reference logits match these inputs (export stores "
                           f"them for --data sample --samples {DEFAULT_SAMPLES}, which serve any smaller --samples "
                           "too); restore the weights, or verify with those")
        return compute_and_store(path, self.state_sha256, self.model, inputs.x, on_batch), None


def reference_file(data: str, samples: int) -> Path:
    """Where the reference for these inputs is stored, relative to the artifact folder."""
    tag = re.sub(r"[^A-Za-z0-9_-]+", "_", data).strip("_")[:40] or "data"
    return Path("reports") / f"reference.{tag}.{samples}.npz"


@dataclass(frozen=True)
class Inputs:
    x: np.ndarray  # float32 NCHW, real images first, then the extreme ones
    labels: np.ndarray | None  # for the real images, when the dataset's classes are the model's
    data: str
    n_real: int
    class_names: tuple[str, ...] | None = None  # the dataset's, in label order
    data_spec: str = ""  # what the user named (--data): the stored reference's file name comes from it


def verify_inputs(data: str, data_dir: Path | None, samples: int, pre: Preprocess, num_classes: int,
                  *, seed: int = 0, batch_size: int = 64) -> Inputs:
    """`samples` inputs: real test-split images, then up to N_EXTREME extreme ones."""
    n_real = max(samples - N_EXTREME, 1)
    ds = open_dataset(data, split="test", data_dir=data_dir, preprocess=pre)
    n_real = min(n_real, len(ds))
    n_extreme = min(N_EXTREME, max(0, samples - n_real))
    x = np.empty((n_real + n_extreme, pre.channels, pre.image_size, pre.image_size), np.float32)
    ys, filled = [], 0
    for b in iter_batches(ds, pre, batch_size, limit=n_real):
        x[filled : filled + len(b.x)] = b.x  # filled in place: no concatenated copies of a large array
        filled += len(b.x)
        if b.y is not None:
            ys.append(b.y)
    labels = np.concatenate(ys) if ys and len(ds.class_names or ()) == num_classes else None
    rng = np.random.default_rng(seed)
    shape = x.shape[1:]
    extremes = [np.zeros(shape), rng.standard_normal(shape), 3.0 * rng.standard_normal(shape), 5.0 * x[0]]
    for i in range(n_extreme):
        x[n_real + i] = extremes[i]
    return Inputs(x, labels, ds.name, n_real, ds.class_names, data)


def reference_logits(model: torch.nn.Module, x: np.ndarray, batch: int = 16,
                     on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """fp32 PyTorch eager on the CPU. channels_last and small batches: oneDNN runs a ResNet-50 1.8x
    faster that way here (95 vs 170 ms/image at 224x224), and it is still the unmodified model."""
    ref = model.to(memory_format=torch.channels_last)
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                xb = torch.from_numpy(x[i : i + batch]).contiguous(memory_format=torch.channels_last)
                out.append(ref(xb).float().numpy())
                if on_batch:
                    on_batch(len(xb))
    finally:
        model.to(memory_format=torch.contiguous_format)
    return np.concatenate(out)


def _key(state_sha256: str, x: np.ndarray) -> str:
    return hashlib.sha256(state_sha256.encode() + str(x.shape).encode() + x.tobytes()).hexdigest()


def _row_keys(state_sha256: str, x: np.ndarray) -> list[str]:
    """One hash per input: a stored reference serves any subset of its inputs (verify --samples 64 after an
    export stored 512: the first real images and the extreme ones are the same arrays)."""
    return [hashlib.sha256(state_sha256.encode() + str(r.shape).encode() + r.tobytes()).hexdigest() for r in x]


def _from_stored_rows(folder: Path, state_sha256: str, torch_version: str | None,
                      x: np.ndarray) -> tuple[np.ndarray, str] | None:
    """Logits for x gathered from a stored reference whose inputs include every row of x, if one does (computed
    by `torch_version`, unless it is None)."""
    wanted: list[str] | None = None
    for f in sorted(folder.glob("reference.*.npz")):
        try:
            with np.load(f) as z:
                made_by = str(z["torch"])
                if "rows" not in z.files or (torch_version is not None and made_by != torch_version):
                    continue
                index = {k: i for i, k in enumerate(z["rows"].tolist())}
                wanted = wanted or _row_keys(state_sha256, x)
                if all(k in index for k in wanted):
                    return z["logits"][[index[k] for k in wanted]], made_by
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue
    return None


def load_stored(path: Path, state_sha256: str, x: np.ndarray, *,
                any_torch: bool = False) -> tuple[np.ndarray, str] | None:
    """(logits, torch version) for x from the stored reference at `path`, or from another stored one whose inputs
    include every row of x; None when none does. Unless `any_torch`, only logits this torch computed count."""
    key = _key(state_sha256, x)
    if path.is_file():
        try:
            with np.load(path) as z:
                made_by = str(z["torch"])
                if str(z["key"]) == key and (any_torch or made_by == torch.__version__):
                    return z["logits"], made_by
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # unreadable, truncated or an older format: recompute
    return _from_stored_rows(path.parent, state_sha256, None if any_torch else torch.__version__, x)


def compute_and_store(path: Path, state_sha256: str, model: torch.nn.Module, x: np.ndarray,
                      on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """fp32 PyTorch logits for x, stored at `path` keyed by the weights and the input bytes (whole and per row)."""
    ref = reference_logits(model, x, on_batch=on_batch)
    buf = io.BytesIO()
    np.savez(buf, key=np.array(_key(state_sha256, x)), torch=np.array(torch.__version__), logits=ref,
             rows=np.array(_row_keys(state_sha256, x)))
    atomic_write(path, buf.getvalue())
    return ref
