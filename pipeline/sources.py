"""Where a folder's fp32 graph comes from: a PyTorch model of the zoo (with its checkpoint), or a user's ONNX file.

Both are a `Source` (pipeline/export_options.py): what the model is (`info`), the hash the fp32 graph is keyed on,
the export step that makes the fp32 graph, and `logits(x)`, the fp32 reference: PyTorch eager on the CPU, or the
given graph run by onnxruntime on the CPU. Nothing downstream asks which one it has; a third kind of source (a
TorchScript file, say) is one more class here and one more spec in pipeline/zoo.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporters.onnx import cpu_session, export_onnx, graph_interface, import_onnx, load_onnx
from pipeline.artifacts import GraphEntry, ModelSection
from pipeline.data import Preprocess
from pipeline.export_options import ExportContext, Source
from pipeline.precisions import PRECISIONS, Precision
from pipeline.steps import Step
from pipeline.zoo import ModelInfo, ModelSpec, OnnxSpec, load_model, per_channel, read_class_names, state_sha256
from resnetx.batching import batch_chunks
from resnetx.errors import BadInput
from resnetx.files import file_sha256, sha256_bytes

__all__ = ["TorchSource", "OnnxSource", "open_source", "source_of", "reference_logits"]

FP32 = Precision.fp32.value


def _fp32_file(ctx: ExportContext) -> Path:
    return ctx.out / PRECISIONS[Precision.fp32].onnx_file


def _metadata(ctx: ExportContext, source: str) -> dict[str, str]:
    info = ctx.info
    return {"resnetx.arch": info.arch, "resnetx.num_classes": str(info.num_classes),
            "resnetx.input_shape": json.dumps(list(info.input_shape)),
            "resnetx.preprocess": json.dumps(info.preprocess.to_dict()), "resnetx.weights_sha256": ctx.source.sha256,
            "resnetx.source": source, "resnetx.class_names": json.dumps(list(info.class_names or []))}


# --------------------------------------------------------------------------- PyTorch
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


@dataclass
class TorchSource:
    """A zoo architecture with its checkpoint (or seeded random weights)."""

    spec: ModelSpec
    info: ModelInfo
    module: torch.nn.Module
    sha256: str  # the weights' state hash, whatever the checkpoint's format
    batch: None = None  # --static-batch decides

    @property
    def reference_name(self) -> str:
        return self.spec.reference_name

    @classmethod
    def open(cls, spec: ModelSpec) -> TorchSource:
        model, info = load_model(spec)
        return cls(spec, info, model, state_sha256(model))

    @property
    def made_by(self) -> str:
        return torch.__version__

    def logits(self, x: np.ndarray) -> np.ndarray:
        return reference_logits(self.module, x)

    def fp32_step(self, ctx: ExportContext) -> Step:
        o, v = ctx.opts, ctx.versions
        inputs = {"weights": self.sha256, "info": self.info.to_dict(), "exporter": o.exporter.value, "opset": o.opset,
                  "batch": o.batch, "torch": v.get("torch"), "onnx": v.get("onnx"), "onnxscript": v.get("onnxscript")}
        return Step(FP32, FP32, inputs, lambda made: self._make(ctx))

    def _make(self, ctx: ExportContext) -> GraphEntry:
        o = ctx.opts
        ctx.progress(f"fp32: exporting with the {o.exporter.value} exporter")
        meta = {**_metadata(ctx, "pytorch"), "resnetx.exporter": o.exporter.value}
        a = export_onnx(self.module, self.info.input_shape, _fp32_file(ctx), opset=o.opset, batch=o.batch,
                        exporter=o.exporter, metadata=meta)
        details = {k: v for k, v in a.details.items() if k != "exporter"}
        return GraphEntry(Precision.fp32, a.path.name, a.sha256, a.size_bytes, opset=a.opset,
                          static_batch=a.static_batch, exporter=o.exporter.value, details=details)

    def baseline(self, opset: int, tmp: Path) -> bytes:
        """A fresh export of the model: what localisation compares an fp32 graph's layers with."""
        return export_onnx(self.module, self.info.input_shape, tmp / "ref.onnx", exporter="legacy",
                           opset=opset).path.read_bytes()


# --------------------------------------------------------------------------- a user's ONNX file
def _file_sha(path: Path) -> str:
    """The file's sha256, and its external data files' (a graph past 2 GB keeps its weights beside it)."""
    model = load_onnx(path, external_data=False)
    extra = sorted({e.value for i in model.graph.initializer for e in i.external_data if e.key == "location"})
    parts = [file_sha256(path)] + [file_sha256(path.parent / f) for f in extra]
    return parts[0] if len(parts) == 1 else sha256_bytes("".join(parts).encode())


def _onnx_info(spec: OnnxSpec, model: Any) -> ModelInfo:
    """What the graph is: its shape from its input and output, its preprocessing from the options or the graph's
    metadata, refused without either (a silently wrong normalisation is the first cause of int8 collapse)."""
    io_ = graph_interface(model, spec.file.name)
    c, size, _ = io_.chw
    meta = {p.key: p.value for p in model.metadata_props}
    pre, how = _onnx_preprocess(spec, meta, c, size)
    names = read_class_names(spec.class_names, io_.classes) if spec.class_names else _meta_names(meta, io_.classes)
    arch = re.sub(r"[^A-Za-z0-9_-]+", "_", spec.file.stem).strip("_") or "model"
    return ModelInfo(arch=arch, family="onnx", num_classes=io_.classes, in_chans=c, image_size=size, preprocess=pre,
                     weights=str(spec.file), weights_sha256=None, trained=True, class_names=names,
                     preprocess_source=how)


def _onnx_preprocess(spec: OnnxSpec, meta: dict[str, str], channels: int, size: int) -> tuple[Preprocess, str]:
    if spec.mean or spec.std:
        if not (spec.mean and spec.std):
            raise BadInput("--onnx with --mean needs --std too (and the other way round)")
        mean, std = per_channel(spec.mean, channels, "--mean"), per_channel(spec.std, channels, "--std")
        if any(s <= 0 for s in std):
            raise BadInput(f"--std must be > 0 for every channel; got {','.join(map(str, std))}")
        resize = spec.resize or size
        if resize < size:
            raise BadInput(f"--resize {resize} is smaller than the graph's input ({size}); use >= {size}")
        return Preprocess(size, resize, channels, mean, std), "options"
    if "resnetx.preprocess" in meta:
        try:
            pre = Preprocess.from_dict(json.loads(meta["resnetx.preprocess"]))
        except (ValueError, KeyError, TypeError) as e:
            raise BadInput(f"{spec.file.name}: its resnetx.preprocess metadata is not readable ({e})") from e
        if (pre.image_size, pre.channels) == (size, channels):
            return pre, "graph metadata"
    raise BadInput(f"{spec.file.name} records no preprocessing: give --mean and --std (one value or one per channel; "
                   "--resize too if it was trained with a center crop), or put a resnetx.preprocess entry in the "
                   "graph's metadata; resnetx will not guess a normalisation")


def _meta_names(meta: dict[str, str], classes: int) -> tuple[str, ...] | None:
    try:
        names = tuple(json.loads(meta.get("resnetx.class_names", "[]")))
    except (ValueError, TypeError):
        return None
    return names if len(names) == classes else None


@dataclass
class OnnxSource:
    """A user's ONNX classifier: the fp32 graph is the file, renamed to resnetx's I/O contract; the reference is the
    file itself, run by onnxruntime on the CPU."""

    spec: OnnxSpec
    info: ModelInfo
    sha256: str  # the file's (and its external data's)
    layout: str  # the file's input layout: NCHW, or NHWC (its inputs are transposed for it)
    batch: int | None = None  # the batch the file fixes, else None (dynamic)
    module: None = None  # no PyTorch model: the torch runtime has nothing to run
    _session: Any = field(default=None, repr=False)

    @property
    def reference_name(self) -> str:
        return self.spec.reference_name

    @classmethod
    def open(cls, spec: OnnxSpec) -> OnnxSource:
        if not spec.file.is_file():
            raise BadInput(f"--onnx {spec.file} does not exist")
        header = load_onnx(spec.file, external_data=False)
        model = load_onnx(spec.file) if any(i.external_data for i in header.graph.initializer) else header
        info = _onnx_info(spec, model)
        io_ = graph_interface(model, spec.file.name)
        return cls(spec, info, _file_sha(spec.file), io_.layout, io_.batch)

    @property
    def made_by(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__}"

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self._session is None:
            self._session = cpu_session(self.spec.file)
        sess = self._session
        name, out, dim = sess.get_inputs()[0].name, sess.get_outputs()[0].name, sess.get_inputs()[0].shape[0]
        fixed = dim if isinstance(dim, int) else 0
        feed = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if self.layout == "NHWC" else x
        return np.concatenate([sess.run([out], {name: c})[0][:n]
                               for c, n in batch_chunks(feed, fixed or 16, pad_to=fixed)])

    def fp32_step(self, ctx: ExportContext) -> Step:
        inputs = {"source": self.sha256, "info": self.info.to_dict(), "importer": 1, "onnx": ctx.versions.get("onnx")}
        return Step(FP32, FP32, inputs, lambda made: self._make(ctx))

    def _make(self, ctx: ExportContext) -> GraphEntry:
        if ctx.opts.batch is not None:
            raise BadInput("--static-batch does not apply to --onnx: the file's own batch dimension is kept")
        ctx.progress(f"fp32: importing {self.spec.file.name}")
        a = import_onnx(self.spec.file, _fp32_file(ctx), metadata=_metadata(ctx, "onnx"))
        return GraphEntry(Precision.fp32, a.path.name, a.sha256, a.size_bytes, opset=a.opset,
                          static_batch=a.static_batch, exporter="onnx", details=a.details)

    def baseline(self, opset: int, tmp: Path) -> bytes:
        """The given file as resnetx reads it (renamed, NCHW): what localisation compares an fp32 graph with."""
        return import_onnx(self.spec.file, tmp / "ref.onnx").path.read_bytes()


# --------------------------------------------------------------------------- opening
def open_source(spec: ModelSpec | OnnxSpec) -> Source:
    """The source the user named (export)."""
    return OnnxSource.open(spec) if isinstance(spec, OnnxSpec) else TorchSource.open(spec)


def source_of(section: ModelSection) -> tuple[Source | None, str]:
    """The source a folder was exported from, or (None, why it is not on this machine): a checkpoint or ONNX file
    absent here (a folder copied elsewhere) is not an error; one that differs from what was exported is."""
    spec = section.spec
    path = spec.file if isinstance(spec, OnnxSpec) else spec.weights
    if path and not Path(path).is_file():
        what = "source ONNX file" if isinstance(spec, OnnxSpec) else "reference weights"
        return None, f"the {what} {path} is not on this machine"
    source = open_source(spec)
    if source.sha256 != section.state_sha256:
        what = "ONNX file" if isinstance(spec, OnnxSpec) else "model's weights"
        raise BadInput(f"the reference {what} differ from the ones exported (sha256 mismatch); re-run resnetx "
                       "export --force")
    return source, ""
