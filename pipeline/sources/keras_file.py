"""A Keras model file (`--keras FILE`, `.keras` or legacy `.h5`) as a source: Keras 3 on its torch backend (no
TensorFlow) loads it, exports its ONNX graph itself (`model.export(..., format="onnx")`), and is its own reference:
the model's forward pass on the preprocessed inputs, NHWC as it takes them."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from exporters.onnx import OnnxArtifact, import_onnx
from pipeline.model.preprocess import Declares
from pipeline.model.zoo import ModelInfo, read_class_names
from pipeline.sources.base import Fp32Request, OneFile
from resnetx.errors import BackendUnavailable, BadInput, first_line
from resnetx.files import file_sha256

__all__ = ["KerasSpec", "KerasSource", "import_keras", "KERAS_PIP"]

KERAS_PIP = "pip install 'resnetx[keras]' (Keras 3 and h5py; it runs on the torch backend, no TensorFlow)"
SUFFIXES = (".keras", ".h5", ".hdf5")
REFERENCE_BATCH = 32


def import_keras() -> Any:
    """Keras on the torch backend (unless KERAS_BACKEND names another), or BackendUnavailable with the pip line."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        with _quiet():
            import keras
    except ImportError as e:
        backend = os.environ["KERAS_BACKEND"]
        if backend != "torch" and "keras" not in str(e).split("'")[1:2]:
            raise BackendUnavailable(f"KERAS_BACKEND={backend} but Keras cannot import that backend ({first_line(e)}); "
                                     "unset KERAS_BACKEND (resnetx runs Keras on torch) or install the backend") from e
        raise BackendUnavailable(f"--keras needs Keras: {KERAS_PIP}") from e
    return keras


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keras and torch's exporter talk on stdout, stderr, warnings and absl logging: none of it is the user's."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        absl.setLevel(level)


@dataclass(frozen=True)
class KerasSpec(OneFile, Declares):
    """A Keras model file (`export --keras FILE`) and what is declared about its input (Keras files record none of
    it: the preprocessing is the training script's)."""

    file: Path  # type: ignore[misc]  # a field here, a property of the protocol
    image_size: int | None = None  # only for a model whose input leaves its height and width open

    format: ClassVar[str] = "keras"
    flag: ClassVar[str] = "--keras"
    describe: ClassVar[str] = "Keras model"
    reference_name: ClassVar[str] = "keras-torch-fp32"
    static_batch: ClassVar[bool] = True
    cli_help: ClassVar[str] = ("A Keras model file (.keras or .h5; one image input, NHWC or NCHW, one (N, classes) "
                               "output) instead of --model: Keras on torch exports it and is its reference; declare "
                               "its preprocessing (--preprocess, --mean/--std, --mean-image).")
    cli_takes: ClassVar[tuple[str, ...]] = ("image_size",)

    def cli_args(self) -> list[str]:
        size = ["--image-size", str(self.image_size)] if self.image_size else []
        return ["--keras", str(self.file), *size, *self.declared_args()]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "file": str(self.file.resolve()), "image_size": self.image_size,
                **self.declared_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KerasSpec:
        return cls(Path(d["file"]), d.get("image_size"), **cls.declared_from(d))

    def open(self) -> KerasSource:
        return KerasSource.open(self)


def _load(spec: KerasSpec) -> Any:
    if not spec.file.is_file():
        raise BadInput(f"--keras {spec.file} does not exist")
    if spec.file.suffix.lower() not in SUFFIXES:
        raise BadInput(f"--keras {spec.file}: give a Keras model file ({', '.join(SUFFIXES)}); for an ONNX file use "
                       "--onnx, for a PyTorch checkpoint --model NAME --weights FILE")
    keras = import_keras()
    try:
        with _quiet():
            return keras.models.load_model(str(spec.file), compile=False)
    except Exception as e:  # noqa: BLE001 - Keras raises many kinds for a file it cannot read
        raise BadInput(f"--keras {spec.file}: Keras cannot load it ({first_line(e, 200)}); give a model saved with "
                       "model.save('m.keras') or model.save('m.h5')") from e


def _shape(model: Any, spec: KerasSpec) -> tuple[str, int, int, int]:
    """(layout, channels, size, classes) of a model with one image input and one (N, classes) output."""
    ins, outs = list(model.inputs or []), list(model.outputs or [])
    found = (f"it has inputs {[tuple(t.shape) for t in ins]} and outputs {[tuple(t.shape) for t in outs]}")
    if len(ins) != 1 or len(outs) != 1:
        raise BadInput(f"--keras {spec.file.name} must have one image input and one (N, classes) output; {found}")
    dx, dy = tuple(ins[0].shape), tuple(outs[0].shape)
    if len(dx) != 4 or len(dy) != 2 or not dy[1]:
        raise BadInput(f"--keras {spec.file.name} must take a rank-4 image batch and give (N, classes); {found}")
    nchw = dx[1] in (1, 3, 4) and dx[3] not in (1, 3, 4)
    c, h, w = (dx[1], dx[2], dx[3]) if nchw else (dx[3], dx[1], dx[2])
    if c not in (1, 3, 4):
        raise BadInput(f"--keras {spec.file.name}: the input is not an image batch with 1, 3 or 4 channels; {found}")
    if h is None or w is None:
        if spec.image_size is None:
            raise BadInput(f"--keras {spec.file.name} leaves its input size open ({found}): give --image-size")
        h = w = spec.image_size
    elif spec.image_size not in (None, h):
        raise BadInput(f"--image-size {spec.image_size}: {spec.file.name} takes {h}x{w} images; leave it out")
    if h != w:
        raise BadInput(f"--keras {spec.file.name} takes {h}x{w} images; resnetx handles square inputs (H = W) only")
    return ("NCHW" if nchw else "NHWC"), int(c), int(h), int(dy[1])


def _softmax_layer(model: Any) -> tuple[Any, str] | None:
    """(the last layer, how it ends in a softmax: "activation" or "layer"), or None when it gives logits."""
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    if getattr(activation, "__name__", "") == "softmax":
        return last, "activation"
    if type(last).__name__ == "Softmax":
        return last, "layer"
    return None


def _strip(model: Any, spec: KerasSpec) -> Any:
    """The model with its softmax head gone (--strip-softmax): a Dense layer's softmax made linear, or the model up
    to a final Softmax layer."""
    keras = import_keras()
    head = _softmax_layer(model)
    if head is None:
        raise BadInput(f"--strip-softmax: {spec.file.name} does not end in a softmax (its output is already logits); "
                       "leave it out")
    layer, how = head
    if how == "activation":
        layer.activation = keras.activations.linear
        return model
    return keras.Model(model.inputs, model.layers[-2].output)


@dataclass
class KerasSource:
    """A Keras model: the fp32 graph is Keras's own ONNX export, imported as an ONNX file is; the reference is the
    model's forward pass."""

    spec: KerasSpec
    info: ModelInfo
    model: Any
    sha256: str
    layout: str
    batch: None = None  # --static-batch decides
    module: None = None  # no PyTorch module: the torch runtime has nothing to run

    @classmethod
    def open(cls, spec: KerasSpec) -> KerasSource:
        model = _load(spec)
        layout, c, size, classes = _shape(model, spec)
        softmax = _softmax_layer(model) is not None
        if spec.strip_softmax:
            model = _strip(model, spec)
        where = f"--keras {spec.file.name}"
        pre, how = spec.preprocess_for(c, size, None, where) or _no_preprocessing(where)
        names = read_class_names(spec.class_names, classes) if spec.class_names else None
        arch = re.sub(r"[^A-Za-z0-9_-]+", "_", spec.file.stem).strip("_") or "model"
        info = ModelInfo(arch=arch, family="keras", num_classes=classes, in_chans=c, image_size=size, preprocess=pre,
                         weights=str(spec.file), trained=True, class_names=names, preprocess_source=how,
                         input_layout=layout,
                         output="probabilities" if softmax and not spec.strip_softmax else "logits")
        return cls(spec, info, model, file_sha256(spec.file), layout)

    @property
    def made_by(self) -> str:
        import torch

        return f"keras {import_keras().__version__} on torch {torch.__version__}"

    def logits(self, x: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if self.layout == "NHWC" else x
        out = []
        with _quiet():
            for i in range(0, len(feed), REFERENCE_BATCH):
                out.append(np.asarray(self.model.predict_on_batch(feed[i : i + REFERENCE_BATCH]), np.float32))
        return np.concatenate(out)

    def fp32_key(self, req: Fp32Request) -> dict[str, Any]:
        v = req.versions
        return {"source": self.sha256, "batch": req.batch, "strip_softmax": self.spec.strip_softmax,
                "keras": v.get("keras"), "torch": v.get("torch"), "onnx": v.get("onnx")}

    def _export(self, dst: Path, batch: int | None, metadata: dict[str, str]) -> OnnxArtifact:
        """Keras's own ONNX export, imported as resnetx's fp32 graph (NCHW input behind a Transpose)."""
        keras = import_keras()
        c, s = self.info.in_chans, self.info.image_size
        shape = (batch, s, s, c) if self.layout == "NHWC" else (batch, c, s, s)
        with tempfile.TemporaryDirectory(prefix=".tmp-keras-", dir=dst.parent) as tmp:
            raw = Path(tmp) / "keras.onnx"
            try:
                with _quiet():
                    self.model.export(str(raw), format="onnx", verbose=False,
                                      input_signature=[keras.InputSpec(shape=shape, dtype="float32", name="image")])
            except Exception as e:  # noqa: BLE001 - torch's exporters raise many kinds
                raise BadInput(f"Keras could not export {self.spec.file.name} to ONNX ({first_line(e, 300)})") from e
            return import_onnx(raw, dst, metadata=metadata)

    def make_fp32(self, req: Fp32Request) -> tuple[OnnxArtifact, str]:
        req.progress(f"fp32: Keras exports {self.spec.file.name} to ONNX")
        return self._export(req.dst, req.batch, {**req.metadata, "resnetx.source": "keras"}), "keras"

    def baseline(self, opset: int, tmp: Path) -> bytes:
        """The model exported again, as resnetx reads it: what localisation compares an fp32 graph with."""
        return self._export(tmp / "ref.onnx", None, {}).path.read_bytes()


def _no_preprocessing(where: str) -> tuple[Any, str]:
    raise BadInput(f"{where}: a Keras file records no preprocessing; declare the model's: --preprocess caffe|tf|torch "
                   "(keras.applications' preprocess_input mode), or --mean/--std on [0, 1] pixels (with "
                   "--channel-order bgr for a BGR model), or --mean-image FILE.npy (a per-pixel mean, as the CIFAR "
                   "ResNet example subtracts)")
