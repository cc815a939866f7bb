"""The model zoo: one registry of names users type, what a model is (ModelInfo), its weights and checkpoints.

timm's shape: every name resolves through one table (`model_entry`), which also feeds the CLI's help and
the "unknown model" message. The built-in default model is an entry like the others; its weights,
preprocessing and measured accuracy ship beside it (torchvision's Weights.meta).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from pipeline.model.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from pipeline.model.resnet import (
    CIFAR_V1_DEPTHS,
    CIFAR_V2_DEPTHS,
    IMAGENET_ARCHS,
    CifarResNet,
    PreActCifarResNet,
    ResNet,
)
from resnetx.errors import BadInput, first_line
from resnetx.files import atomic_write, file_sha256

__all__ = [
    "ModelInfo",
    "ZooRequest",
    "read_class_names",
    "ZooEntry",
    "DEFAULT_WEIGHTS",
    "known_models",
    "model_entry",
    "build_model",
    "load_model",
    "load_state_dict",
    "save_checkpoint",
    "state_sha256",
]

log = logging.getLogger(__name__)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
DEFAULT_WEIGHTS = Path(__file__).parents[1] / "assets" / "default_resnet20_fmnist.pt"


@dataclass(frozen=True)
class ModelInfo:
    """What every later step needs to know about a model, stored in the manifest."""

    arch: str
    family: str  # "imagenet" | "cifar"
    num_classes: int
    in_chans: int
    image_size: int
    preprocess: Preprocess
    weights: str | None = None  # the loaded weights' path ("default" for the built-in model), None: random init
    weights_sha256: str | None = None
    trained: bool = False
    class_names: tuple[str, ...] | None = None
    reference_accuracy: dict[str, float] = field(default_factory=dict)
    preprocess_source: str = "checkpoint"  # "checkpoint", "options" or "defaults" (the family's assumed statistics)
    input_layout: str = "NCHW"  # the layout the source model takes ("NHWC": a Keras or TF-style model); resnetx's
    # graphs take NCHW whatever it is (an NHWC model's graph starts with a Transpose)
    output: str = "logits"  # what the model outputs: "logits", or "probabilities" (it ends in a softmax)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocess"] = self.preprocess.to_dict()
        d["class_names"] = list(self.class_names) if self.class_names else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelInfo:
        d = dict(d)
        d["preprocess"] = Preprocess.from_dict(d["preprocess"])
        d["class_names"] = tuple(d["class_names"]) if d.get("class_names") else None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class ZooRequest(Protocol):
    """What `load_model` reads of a request for a zoo model (pipeline/sources/pytorch.py's ModelSpec is one): the
    architecture, the checkpoint, the shape options and what the command line declares about preprocessing."""

    arch: str
    num_classes: int | None
    in_chans: int | None
    image_size: int | None
    weights: Path | None
    trust_checkpoint: bool
    class_names: Path | None

    @property
    def declares_preprocessing(self) -> bool: ...

    def preprocess_for(self, channels: int, size: int, base: Preprocess | None,
                       source: str) -> tuple[Preprocess, str] | None: ...


@dataclass(frozen=True)
class ZooEntry:
    """One name of the zoo: how to build it, and the weights that ship with it (the built-in model)."""

    name: str
    family: str  # "imagenet" | "cifar": default input size and preprocessing
    build: Callable[..., nn.Module]  # build(num_classes=..., in_chans=...)
    weights: Path | None = None


_REGISTRY: dict[str, ZooEntry] = {}
_CIFAR = {re.compile(r"^resnet(\d+)$"): CifarResNet, re.compile(r"^preact_resnet(\d+)$"): PreActCifarResNet}


def _register(entry: ZooEntry) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} registered twice")
    _REGISTRY[entry.name] = entry


def _cifar_entry(name: str) -> ZooEntry | None:
    """CIFAR ResNets of any valid depth (resnet8, resnet1202, ...), not only the listed ones."""
    for pattern, cls in _CIFAR.items():
        if m := pattern.match(name):
            return ZooEntry(name, "cifar", partial(cls, int(m.group(1))))
    return None


for _name, (_block, _layers, _kw) in IMAGENET_ARCHS.items():
    _register(ZooEntry(_name, "imagenet", partial(ResNet, _block, _layers, **_kw)))
for _name in [f"resnet{d}" for d in CIFAR_V1_DEPTHS] + [f"preact_resnet{d}" for d in CIFAR_V2_DEPTHS]:
    _register(_cifar_entry(_name))  # type: ignore[arg-type]
_register(ZooEntry("default", "cifar", partial(CifarResNet, 20), weights=DEFAULT_WEIGHTS))


def known_models() -> list[str]:
    """Names --model accepts, built-in model first (CIFAR depths other than these also work if valid)."""
    return sorted(_REGISTRY, key=lambda n: (n != "default", list(_REGISTRY).index(n)))


def model_entry(name: str) -> ZooEntry:
    """The zoo entry for a name: the ONE place that resolves --model."""
    entry = _REGISTRY.get(name) or _cifar_entry(name)
    if entry is None:
        raise BadInput(f"unknown model {name!r}; known: {', '.join(known_models())}")
    return entry


def build_model(arch: str, *, num_classes: int, in_chans: int) -> nn.Module:
    """A freshly initialised network of the named architecture."""
    return model_entry(arch).build(num_classes=num_classes, in_chans=in_chans)


def state_sha256(model: nn.Module) -> str:
    """A content hash of the weights, independent of the checkpoint's file format."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode() + str(v.dtype).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _default_preprocess(family: str, in_chans: int, image_size: int) -> Preprocess:
    if family == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        resize = round(image_size / 0.875)
    else:
        mean, std = CIFAR_MEAN, CIFAR_STD
        resize = image_size
    if in_chans != 3:  # grayscale or other: one shared statistic per channel
        mean, std = (sum(mean) / 3,) * in_chans, (sum(std) / 3,) * in_chans
    return Preprocess(image_size=image_size, resize=resize, channels=in_chans, mean=tuple(mean), std=tuple(std))


def _shape(spec: ZooRequest, family: str, state: dict[str, Tensor], meta: dict[str, Any]) -> tuple[int, int, int]:
    """(classes, input channels, image size): the options, else the checkpoint's metadata, else its weights'
    shapes, else the family's defaults."""
    fc, stem = state.get("fc.weight"), state.get("conv1.weight")
    num_classes = spec.num_classes or meta.get("num_classes") or (
        fc.shape[0] if fc is not None and fc.ndim == 2 else (1000 if family == "imagenet" else 10))
    in_chans = spec.in_chans or meta.get("in_chans") or (stem.shape[1] if stem is not None and stem.ndim == 4 else 3)
    image_size = spec.image_size or meta.get("image_size") or (224 if family == "imagenet" else 32)
    smallest = 32 if family == "imagenet" else 8
    if image_size < smallest:
        raise BadInput(f"--image-size {image_size} is too small for {spec.arch}; use at least {smallest}")
    return int(num_classes), int(in_chans), int(image_size)


def load_model(spec: ZooRequest) -> tuple[nn.Module, ModelInfo]:
    """Build the named network, load its weights if given, and describe it. Eval mode, CPU."""
    entry = model_entry(spec.arch)
    if entry.weights is not None:
        return _load_bundled(entry, entry.weights, spec)
    state: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    if spec.weights is not None:
        state, meta = load_state_dict(spec.weights, trust=spec.trust_checkpoint)
        if meta.get("arch") and meta["arch"] != spec.arch:
            raise BadInput(f"checkpoint {spec.weights} was saved for {meta['arch']}, not {spec.arch}; "
                           f"use --model {meta['arch']}")
    num_classes, in_chans, image_size = _shape(spec, entry.family, state, meta)
    with torch.random.fork_rng():  # random init is seeded: the same spec gives the same weights
        torch.manual_seed(0)
        model = entry.build(num_classes=num_classes, in_chans=in_chans)
    preprocess, source = _preprocess(spec, entry.family, in_chans, image_size, meta)
    if spec.weights is not None:
        _load_checked(model, state, spec.weights)
    else:
        log.info("no weights given: %s is randomly initialised", spec.arch)
    names = read_class_names(spec.class_names, num_classes) if spec.class_names else meta.get("class_names")
    info = ModelInfo(
        arch=spec.arch, family=entry.family, num_classes=num_classes, in_chans=in_chans, image_size=image_size,
        preprocess=preprocess, weights=str(spec.weights) if spec.weights else None,
        weights_sha256=file_sha256(spec.weights) if spec.weights else None, trained=spec.weights is not None,
        class_names=tuple(names) if names else None, reference_accuracy=dict(meta.get("accuracy") or {}),
        preprocess_source=source,
    )
    return model.eval(), info


def _preprocess(spec: ZooRequest, family: str, in_chans: int, image_size: int,
                meta: dict[str, Any]) -> tuple[Preprocess, str]:
    """The checkpoint's preprocessing, else the family's defaults; what the command line declares wins."""
    pre, source = _default_preprocess(family, in_chans, image_size), "defaults"
    if meta.get("preprocess") and int(meta["preprocess"]["image_size"]) == image_size:
        pre, source = Preprocess.from_dict(meta["preprocess"]), "checkpoint"
    declared = spec.preprocess_for(in_chans, image_size, pre, f"{spec.arch} ({spec.weights or 'random init'})")
    if declared is None:
        return pre, source
    if source == "checkpoint":
        log.warning("note: the preprocessing options override the preprocessing recorded in %s", spec.weights)
    return declared


def read_class_names(path: Path, num_classes: int) -> tuple[str, ...]:
    """--class-names: one name per line, in logits order, as many as the model has classes."""
    try:
        names = tuple(line.strip() for line in Path(path).read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"--class-names {path} cannot be read ({e}); give a text file, one name per line") from e
    if len(names) != num_classes:
        raise BadInput(f"--class-names {path} has {len(names)} names; the model has {num_classes} classes (one name "
                       "per line, in logits order)")
    return names


def _load_bundled(entry: ZooEntry, weights: Path, spec: ZooRequest) -> tuple[nn.Module, ModelInfo]:
    """A built-in model: the architecture, class names and preprocessing its checkpoint records."""
    if spec.weights or spec.num_classes or spec.in_chans or spec.image_size or spec.declares_preprocessing \
            or spec.class_names:
        raise BadInput(f"--model {entry.name} takes no --weights/--num-classes/--in-chans/--image-size/--mean/--std/"
                       "--resize/--class-names or other preprocessing options; name an architecture (e.g. --model "
                       "resnet20) to change them")
    if weights.exists():
        _, meta = load_state_dict(weights)
        model, info = load_model(dataclasses.replace(spec, arch=meta["arch"], weights=weights))  # type: ignore
        return model, dataclasses.replace(info, weights=entry.name)
    # Only a checkout without the trained weights gets here; say so loudly.
    log.warning("note: the %s model's trained weights %s are missing; using a seeded RANDOM ResNet-20",
                entry.name, weights)
    return load_model(dataclasses.replace(spec, arch="resnet20", num_classes=10, in_chans=1,  # type: ignore
                                          image_size=28))


# --------------------------------------------------------------------------- checkpoints
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "ema")
_META_KEYS = ("arch", "num_classes", "in_chans", "image_size", "preprocess", "class_names", "accuracy")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def _unpickle(path: Path, trust: bool) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before failing clearly
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as e:  # weights_only raises UnpicklingError; corrupt files raise others
        # weights_only refuses with an UnpicklingError; one from a pickle that parses to its end is a refusal
        if not trust and isinstance(e, pickle.UnpicklingError) and _pickle_is_whole(path):
            raise BadInput(
                f"checkpoint {path} contains Python objects that could run code; refused. "
                "Save a plain state_dict, or pass --trust-checkpoint if you trust its source"
            ) from e
        raise BadInput(f"checkpoint {path} cannot be read: truncated, corrupt or not a PyTorch .pt/.pth file "
                       f"({_pickle_reason(e)})") from e


def load_state_dict(path: Path, *, trust: bool = False) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read weights from a state_dict, a wrapped checkpoint or a TorchScript archive.

    Returns the tensors and any metadata stored beside them (preprocess, class names).
    Pickles are read with weights_only=True: a file that would run code is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise BadInput(f"checkpoint {path} looks like TorchScript but cannot be loaded: {e}") from e
        return dict(module.state_dict()), {}
    obj = _unpickle(path, trust)
    if isinstance(obj, nn.Module):  # only possible with trust=True
        return dict(obj.state_dict()), {}
    if not isinstance(obj, dict):
        raise BadInput(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict")
    meta = {k: obj[k] for k in _META_KEYS if k in obj}
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
        if isinstance(obj.get(key), nn.Module):
            obj = obj[key].state_dict()
            break
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise BadInput(f"checkpoint {path} contains no tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, meta


def _load_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A .safetensors checkpoint (timm's and the hubs' format): tensors only, no pickle, so nothing to trust. resnetx
    metadata (preprocessing, class names) is read from its `resnetx` metadata entry when it has one."""
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file
    except ImportError as e:
        from resnetx.errors import BackendUnavailable

        raise BackendUnavailable("reading .safetensors needs safetensors: pip install safetensors") from e
    try:
        with safe_open(str(path), "pt") as f:
            meta_text = (f.metadata() or {}).get("resnetx")
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - its header errors and others
        raise BadInput(f"checkpoint {path} is not a readable .safetensors file ({first_line(e, 200)})") from e
    meta = {}
    if meta_text:
        try:
            meta = {k: v for k, v in json.loads(meta_text).items() if k in _META_KEYS}
        except (ValueError, AttributeError):
            log.warning("%s: its resnetx metadata is not readable; ignored", path)
    return state, meta


def _pickle_is_whole(path: Path) -> bool:
    """Whether the checkpoint's pickle parses to its end: told apart from a corrupt file by its structure, not by
    the words of torch's error."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if name is None:
                    return False
                stream: Any = io.BytesIO(z.read(name))
            pickles = 1
        else:  # torch's legacy format: magic number, protocol, system info, the objects, the storage keys
            stream, pickles = io.BytesIO(path.read_bytes()), 5
        for _ in range(pickles):
            for _ in pickletools.genops(stream):
                pass
        return True
    except Exception:  # noqa: BLE001 - zipfile and pickletools raise many kinds for a broken file
        return False


def _pickle_reason(e: Exception) -> str:
    """torch's weights_only errors bury the cause after a long preamble; keep just the cause."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        return first_line(Exception(text.split("WeightsUnpickler error:", 1)[1]), 200)
    return first_line(e, 200).split(". ", 1)[0]  # the cause, not the advice torch appends (cut mid-sentence)


def _load_checked(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    unexpected.sort(key=lambda k: (k.endswith("num_batches_tracked"), k))  # the telling keys first
    if unexpected and path.suffix == ".safetensors":  # timm's ResNet-D, SE-ResNets...: another architecture
        raise BadInput(f"checkpoint {path} holds keys of another architecture than this {type(model).__name__} "
                       f"(first unknown: {_few(unexpected)}); export it to ONNX with its own library (timm: "
                       "torch.onnx.export) and bring that with resnetx export --onnx FILE")
    if missing or unexpected:
        raise BadInput(
            f"checkpoint {path} does not fit this model: "
            f"{len(missing)} missing key(s) {_few(missing)}, "
            f"{len(unexpected)} unexpected key(s) {_few(unexpected)}; check --model"
        )
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise BadInput(f"checkpoint {path} has other shapes than this model: {_few(wrong)}; "
                       "check --model, --num-classes and --in-chans")
    model.load_state_dict(state, strict=True)


def _few(items: list[str], n: int = 4) -> str:
    return "[" + ", ".join(items[:n]) + (", ..." if len(items) > n else "") + "]"


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write a checkpoint that load_model reads back (weights_only-safe types only), atomically."""
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), **meta}, buf)
    atomic_write(Path(path), buf.getvalue())
