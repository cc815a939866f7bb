"""A user's ONNX classifier (`--onnx FILE`) as a source: the fp32 graph is the file, renamed to resnetx's I/O contract
(an NHWC input behind a Transpose); the reference is the file itself, run by onnxruntime on the CPU."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from exporters.onnx import OnnxArtifact, cpu_session, graph_interface, import_onnx, load_onnx, softmax_head
from pipeline.model.preprocess import Declares, Preprocess
from pipeline.model.zoo import ModelInfo, read_class_names
from pipeline.sources.base import Fp32Request, OneFile
from resnetx.batching import batch_chunks
from resnetx.errors import BadInput
from resnetx.files import file_sha256, sha256_bytes

__all__ = ["OnnxSpec", "OnnxSource", "graph_info", "file_sha"]


@dataclass(frozen=True)
class OnnxSpec(OneFile, Declares):
    """A user's ONNX classifier (`export --onnx FILE`) and the preprocessing declared for it."""

    file: Path  # type: ignore[misc]  # a field here, a property of the protocol

    format: ClassVar[str] = "onnx"
    flag: ClassVar[str] = "--onnx"
    describe: ClassVar[str] = "ONNX file"
    reference_name: ClassVar[str] = "onnx-cpu-fp32 (onnxruntime)"
    static_batch: ClassVar[bool] = False  # the file's own batch dimension is kept
    cli_help: ClassVar[str] = ("Your classifier as an ONNX file (one image input, NCHW or NHWC, one output: logits or "
                               "probabilities) instead of --model: the reference is the file itself on onnxruntime; "
                               "declare its preprocessing unless its metadata records it.")
    cli_takes: ClassVar[tuple[str, ...]] = ()  # the model options it takes beside the declarations

    def cli_args(self) -> list[str]:
        """The export options that name this source again (the re-make line)."""
        return ["--onnx", str(self.file), *self.declared_args()]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "file": str(self.file.resolve()), **self.declared_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OnnxSpec:
        return cls(Path(d["file"]), **cls.declared_from(d))

    def open(self) -> OnnxSource:
        return OnnxSource.open(self)


def file_sha(path: Path) -> str:
    """The file's sha256, and its external data files' (a graph past 2 GB keeps its weights beside it)."""
    model = load_onnx(path, external_data=False)
    extra = sorted({e.value for i in model.graph.initializer for e in i.external_data if e.key == "location"})
    parts = [file_sha256(path)] + [file_sha256(path.parent / f) for f in extra]
    return parts[0] if len(parts) == 1 else sha256_bytes("".join(parts).encode())


def graph_info(spec: Declares, model: Any, where: str, family: str, weights: str) -> ModelInfo:
    """What a classifier graph is: its shape from its input and output, its preprocessing from the options or the
    graph's metadata (refused without either: a silently wrong normalisation is the first cause of int8 collapse),
    whether it ends in a softmax."""
    io_ = graph_interface(model, where)
    c, size, _ = io_.chw
    meta = {p.key: p.value for p in model.metadata_props}
    pre, how = _preprocess(spec, meta, c, size, where)
    names = read_class_names(spec.class_names, io_.classes) if spec.class_names else _meta_names(meta, io_.classes)
    arch = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(where).stem).strip("_") or "model"
    softmax = softmax_head(model) is not None
    if spec.strip_softmax and not softmax:
        raise BadInput(f"--strip-softmax: {where} does not end in a softmax (its output is already logits); leave "
                       "it out")
    return ModelInfo(arch=arch, family=family, num_classes=io_.classes, in_chans=c, image_size=size, preprocess=pre,
                     weights=weights, weights_sha256=None, trained=True, class_names=names, preprocess_source=how,
                     input_layout=io_.layout,
                     output="probabilities" if softmax and not spec.strip_softmax else "logits")


def _preprocess(spec: Declares, meta: dict[str, str], channels: int, size: int, where: str) -> tuple[Preprocess, str]:
    declared = spec.preprocess_for(channels, size, None, where)
    if declared is not None:
        return declared
    if "resnetx.preprocess" in meta:
        try:
            pre = Preprocess.from_dict(json.loads(meta["resnetx.preprocess"]))
        except (ValueError, KeyError, TypeError) as e:
            raise BadInput(f"{where}: its resnetx.preprocess metadata is not readable ({e})") from e
        if (pre.image_size, pre.channels) == (size, channels) and pre.mean_image is None:
            return pre, "graph metadata"
    raise BadInput(f"{where} records no preprocessing: give --mean and --std (one value or one per channel, in the "
                   "model's channel order; --channel-order bgr for a BGR model, --resize if it was trained with a "
                   "center crop), or --preprocess caffe|tf|torch, or --mean-image FILE.npy; resnetx will not guess a "
                   "normalisation")


def _meta_names(meta: dict[str, str], classes: int) -> tuple[str, ...] | None:
    try:
        names = tuple(json.loads(meta.get("resnetx.class_names", "[]")))
    except (ValueError, TypeError):
        return None
    return names if len(names) == classes else None


def graph_logits(session: Any, layout: str, x: np.ndarray) -> np.ndarray:
    """An onnxruntime session's outputs for a float32 NCHW batch, transposed for an NHWC graph, in chunks of the
    graph's fixed batch (or 16)."""
    name, out, dim = session.get_inputs()[0].name, session.get_outputs()[0].name, session.get_inputs()[0].shape[0]
    fixed = dim if isinstance(dim, int) else 0
    feed = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x
    return np.concatenate([session.run([out], {name: c})[0][:n]
                           for c, n in batch_chunks(feed, fixed or 16, pad_to=fixed)])


@dataclass
class OnnxSource:
    """A user's ONNX classifier: the fp32 graph is the file, renamed to resnetx's I/O contract; the reference is the
    file itself (less its softmax with --strip-softmax), run by onnxruntime on the CPU."""

    spec: OnnxSpec
    info: ModelInfo
    sha256: str  # the file's (and its external data's)
    layout: str  # the file's input layout: NCHW, or NHWC (its inputs are transposed for it)
    batch: int | None = None  # the batch the file fixes, else None (dynamic)
    module: None = None  # no PyTorch model: the torch runtime has nothing to run
    _session: Any = field(default=None, repr=False)

    @classmethod
    def open(cls, spec: OnnxSpec) -> OnnxSource:
        if not spec.file.is_file():
            raise BadInput(f"--onnx {spec.file} does not exist")
        header = load_onnx(spec.file, external_data=False)
        model = load_onnx(spec.file) if any(i.external_data for i in header.graph.initializer) else header
        info = graph_info(spec, model, spec.file.name, "onnx", str(spec.file))
        io_ = graph_interface(model, spec.file.name)
        return cls(spec, info, file_sha(spec.file), io_.layout, io_.batch)

    @property
    def made_by(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__}"

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self._session is None:
            model: Any = self.spec.file
            if self.spec.strip_softmax:
                from exporters.onnx import strip_softmax_head

                model = load_onnx(self.spec.file)
                strip_softmax_head(model)
            self._session = cpu_session(model)
        return graph_logits(self._session, self.layout, x)

    def fp32_key(self, req: Fp32Request) -> dict[str, Any]:
        return {"source": self.sha256, "importer": 2, "strip_softmax": self.spec.strip_softmax,
                "onnx": req.versions.get("onnx")}

    def make_fp32(self, req: Fp32Request) -> tuple[OnnxArtifact, str]:
        req.progress(f"fp32: importing {self.spec.file.name}")
        a = import_onnx(self.spec.file, req.dst, metadata={**req.metadata, "resnetx.source": "onnx"},
                        strip_softmax=self.spec.strip_softmax)
        return a, "onnx"

    def baseline(self, opset: int, tmp: Path) -> bytes:
        """The given file as resnetx reads it (renamed, NCHW): what localisation compares an fp32 graph with."""
        return import_onnx(self.spec.file, tmp / "ref.onnx", strip_softmax=self.spec.strip_softmax).path.read_bytes()
