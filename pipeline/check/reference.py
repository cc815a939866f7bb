"""The reference a folder's artifacts are judged against: the source they were exported from, opened again here
(a PyTorch model, a user's ONNX file on onnxruntime, a Keras model), or the logits the folder stored of it when it is
not on this machine."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.folder.manifest import Manifest, ModelSection
from pipeline.folder.references import (
    DEFAULT_SAMPLES,
    N_EXTREME,
    ArrayInputs,
    Inputs,
    StoredRows,
    reference_file,
    store,
    stored_or_computed,
    verify_inputs,
)
from pipeline.model.zoo import ModelInfo
from pipeline.sources import ModelSpec, Source, SourceSpec, reference_logits
from resnetx.errors import BackendUnavailable, BadInput

__all__ = ["Reference", "source_of", "N_EXTREME", "DEFAULT_SAMPLES", "Inputs", "ArrayInputs", "verify_inputs",
           "reference_logits", "reference_file"]

log = logging.getLogger(__name__)


def source_of(section: ModelSection) -> tuple[Source | None, str]:
    """The source a folder was exported from, or (None, why it is not on this machine): a checkpoint or model file
    absent here (a folder copied elsewhere) is not an error; one that differs from what was exported is."""
    spec = section.spec
    path = spec.file
    if path and not Path(path).is_file():
        return None, f"the {spec.describe} file {path} is not on this machine"
    source = spec.open()
    if source.sha256 != section.state_sha256:
        raise BadInput(f"the reference {spec.describe}'s weights differ from the ones exported ({path or spec.name}: "
                       "sha256 mismatch); re-run resnetx export --force")
    return source, ""


@dataclass
class Reference:
    """The fp32 reference the artifacts are judged against: the source they were exported from (a PyTorch model, or
    a user's ONNX file run by onnxruntime), or why it is not on this machine.

    A source absent here (a folder copied elsewhere) is not an error: the stored logits stand in for it where they
    can. A source that differs from the one exported always is.
    """

    info: ModelInfo
    state_sha256: str  # the source's hash, as the manifest records it
    source: Source | None
    why_missing: str = ""
    spec: SourceSpec = field(default_factory=ModelSpec)  # what the manifest says it came from

    @classmethod
    def of(cls, manifest: Manifest) -> Reference:
        section = manifest.model
        source, why = source_of(section)
        return cls(source.info if source else section.info, section.state_sha256, source, why, section.spec)

    @property
    def model(self) -> torch.nn.Module | None:
        """The PyTorch model, where the source is one and it is here."""
        return self.source.module if self.source is not None else None

    @property
    def name(self) -> str:
        """How reports name the reference: 'torch-cpu-fp32', 'onnx-cpu-fp32 (onnxruntime)', 'keras-torch-fp32'."""
        return self.spec.reference_name

    def require_model(self, purpose: str) -> torch.nn.Module:
        """The PyTorch model, or BackendUnavailable saying what cannot run without it."""
        if self.model is None:
            why = self.why_missing or f"this folder's source is not a PyTorch model ({self.spec.describe} " \
                                      f"{self.info.weights})"
            raise BackendUnavailable(f"{purpose}: {why}")
        return self.model

    def logits(self, folder: Path, inputs: Inputs, *, samples: int,
               on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, str | None]:
        """(reference logits for the inputs, what computed them when they were stored, else None). Stored logits
        count only if this machine's torch (or onnxruntime, for an ONNX source) computed them, unless the source
        is not here: then stored logits for these inputs are the reference, and anything else is an error."""
        path = Path(folder) / reference_file(inputs.data_spec, samples)
        made_by = self.source.made_by if self.source else None
        stored = StoredRows(path.parent, made_by=made_by)
        ref = stored_or_computed(inputs, self.state_sha256, stored, self.source.logits if self.source else None,
                                 on_batch)
        if ref.logits is None:
            raise BadInput(f"{self.why_missing}, and no stored reference logits match these inputs (export stores "
                           f"them for --data sample --samples {DEFAULT_SAMPLES}, which serve any smaller --samples "
                           "too); restore it, or verify with those")
        if ref.made_by is None:
            try:
                store(path, ref, made_by or "")
            except OSError as e:  # a cache: a read-only folder costs the next verify this pass, nothing else
                log.warning("could not store the reference logits in %s (%s)", path, e.strerror or e)
        return ref.logits, ref.made_by


