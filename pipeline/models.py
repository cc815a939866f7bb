"""ResNet zoo with torchvision's parameter names, CIFAR ResNets, and checkpoint loading."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.data import Preprocess
from runtimes.errors import BadInput, first_line

__all__ = [
    "ModelInfo",
    "ModelSpec",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "CifarResNet",
    "PreActCifarResNet",
    "IMAGENET_ARCHS",
    "DEFAULT_WEIGHTS",
    "known_models",
    "build_model",
    "load_model",
    "load_state_dict",
    "file_sha256",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
ASSETS = Path(__file__).with_name("assets")
DEFAULT_WEIGHTS = ASSETS / "default_resnet20_fmnist.pt"


# --------------------------------------------------------------------------- blocks
def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, groups=groups, bias=False, dilation=dilation)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


# --------------------------------------------------------------------------- ImageNet ResNet
class ResNet(nn.Module):
    """torchvision's ResNet; attribute names are the state_dict keys and the ONNX node names."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        in_chans: int = 3,
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init_weights(self)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [
            block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
            for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------- CIFAR ResNets
class CifarResNet(nn.Module):
    """He et al. 2015 CIFAR ResNet v1, depth 6n+2, widths 16/32/64.

    Shortcuts that change shape use a 1x1 conv + BN ("option B"), named like torchvision's
    `downsample.0/1`, so the whole zoo shares one naming scheme.
    """

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        n = _blocks_for_depth(depth, 6, "v1", "6n+2")
        self.inplanes = 16
        self.conv1 = conv3x3(in_chans, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (He et al. 2016, "Identity Mappings")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = conv1x1(inplanes, out, stride) if stride != 1 or inplanes != out else None

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        identity = x if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + identity


class PreActCifarResNet(nn.Module):
    """CIFAR ResNet v2 (pre-activation, bottleneck), depth 9n+2: 29, 56, 110, 164, ..."""

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        n = _blocks_for_depth(depth, 9, "v2", "9n+2")
        self.inplanes = 16
        self.conv1 = conv3x3(in_chans, 16)
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.bn_final = nn.BatchNorm2d(64 * PreActBottleneck.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64 * PreActBottleneck.expansion, num_classes)
        _init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [PreActBottleneck(self.inplanes, planes, stride)]
        self.inplanes = planes * PreActBottleneck.expansion
        layers += [PreActBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn_final(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _blocks_for_depth(depth: int, per_block: int, version: str, rule: str) -> int:
    if depth < per_block + 2 or (depth - 2) % per_block:
        examples = ", ".join(str(d) for d in (CIFAR_V1_DEPTHS if per_block == 6 else CIFAR_V2_DEPTHS))
        raise BadInput(
            f"CIFAR ResNet {version} depth must be {rule} (e.g. {examples}); got {depth}"
        )
    return (depth - 2) // per_block


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ModelInfo:
    """What every later step needs to know about a model, stored in the manifest."""

    arch: str
    family: str  # "imagenet" | "cifar"
    num_classes: int
    in_chans: int
    image_size: int
    preprocess: Preprocess
    weights: str | None = None  # path of the loaded weights, or None for random init
    weights_sha256: str | None = None
    trained: bool = False
    class_names: tuple[str, ...] | None = None
    reference_accuracy: dict[str, float] = field(default_factory=dict)

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


IMAGENET_ARCHS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int], dict[str, int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], {}),
    "resnet34": (BasicBlock, [3, 4, 6, 3], {}),
    "resnet50": (Bottleneck, [3, 4, 6, 3], {}),
    "resnet101": (Bottleneck, [3, 4, 23, 3], {}),
    "resnet152": (Bottleneck, [3, 8, 36, 3], {}),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], {"width_per_group": 128}),
}
CIFAR_V1_DEPTHS = (20, 32, 44, 56, 110)
CIFAR_V2_DEPTHS = (29, 56, 110, 164)
_CIFAR_V1 = re.compile(r"^resnet(\d+)$")
_CIFAR_V2 = re.compile(r"^preact_resnet(\d+)$")


def known_models() -> list[str]:
    """Names the CLI accepts for --model (CIFAR depths other than these also work if valid)."""
    return (
        ["default"]
        + list(IMAGENET_ARCHS)
        + [f"resnet{d}" for d in CIFAR_V1_DEPTHS]
        + [f"preact_resnet{d}" for d in CIFAR_V2_DEPTHS]
    )


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: an architecture name plus the options that shape it."""

    arch: str = "default"
    num_classes: int | None = None
    in_chans: int | None = None
    image_size: int | None = None
    weights: Path | None = None
    trust_checkpoint: bool = False


def _family(arch: str) -> str:
    if arch in IMAGENET_ARCHS:
        return "imagenet"
    if _CIFAR_V1.match(arch) or _CIFAR_V2.match(arch):
        return "cifar"
    raise BadInput(f"unknown model {arch!r}; known: {', '.join(known_models())}")


def build_model(arch: str, *, num_classes: int, in_chans: int) -> nn.Module:
    """A freshly initialised network of the named architecture."""
    if arch in IMAGENET_ARCHS:
        block, layers, kw = IMAGENET_ARCHS[arch]
        return ResNet(block, layers, num_classes=num_classes, in_chans=in_chans, **kw)
    if m := _CIFAR_V1.match(arch):
        return CifarResNet(int(m.group(1)), num_classes=num_classes, in_chans=in_chans)
    if m := _CIFAR_V2.match(arch):
        return PreActCifarResNet(int(m.group(1)), num_classes=num_classes, in_chans=in_chans)
    raise BadInput(f"unknown model {arch!r}; known: {', '.join(known_models())}")


def _default_preprocess(family: str, in_chans: int, image_size: int) -> Preprocess:
    if family == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        resize = round(image_size / 0.875)
    else:
        mean, std = CIFAR_MEAN, CIFAR_STD
        resize = image_size
    if in_chans != 3:  # grayscale or other: one shared statistic per channel
        mean, std = (sum(mean) / 3,) * in_chans, (sum(std) / 3,) * in_chans
    return Preprocess(
        image_size=image_size, resize=resize, channels=in_chans, mean=tuple(mean), std=tuple(std)
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(spec: ModelSpec) -> tuple[nn.Module, ModelInfo]:
    """Build the named network, load its weights if given, and describe it. Eval mode, CPU.

    Class count, input channels, image size and preprocessing come, in this order, from the
    options, from metadata saved with the checkpoint (resnetx train writes it), from the
    weights' shapes, and from the family's defaults.
    """
    if spec.arch == "default":
        return _load_default(spec)
    family = _family(spec.arch)
    state: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    if spec.weights is not None:
        state, meta = load_state_dict(spec.weights, trust=spec.trust_checkpoint)
        if meta.get("arch") and meta["arch"] != spec.arch:
            raise BadInput(f"checkpoint {spec.weights} was saved for {meta['arch']}, not {spec.arch}; "
                           f"use --model {meta['arch']}")
    fc, stem = state.get("fc.weight"), state.get("conv1.weight")
    num_classes = spec.num_classes or meta.get("num_classes") or (
        fc.shape[0] if fc is not None and fc.ndim == 2 else (1000 if family == "imagenet" else 10))
    in_chans = spec.in_chans or meta.get("in_chans") or (
        stem.shape[1] if stem is not None and stem.ndim == 4 else 3)
    image_size = spec.image_size or meta.get("image_size") or (224 if family == "imagenet" else 32)
    _check_image_size(spec.arch, family, image_size)
    with torch.random.fork_rng():  # random init is seeded: the same spec gives the same weights
        torch.manual_seed(0)
        model = build_model(spec.arch, num_classes=int(num_classes), in_chans=int(in_chans))
    preprocess = _default_preprocess(family, int(in_chans), int(image_size))
    if meta.get("preprocess") and int(meta["preprocess"]["image_size"]) == image_size:
        preprocess = Preprocess.from_dict(meta["preprocess"])
    sha = None
    if spec.weights is not None:
        _load_checked(model, state, spec.weights)
        sha = file_sha256(spec.weights)
    else:
        log.info("no weights given: %s is randomly initialised", spec.arch)
    info = ModelInfo(
        arch=spec.arch,
        family=family,
        num_classes=int(num_classes),
        in_chans=int(in_chans),
        image_size=int(image_size),
        preprocess=preprocess,
        weights=str(spec.weights) if spec.weights else None,
        weights_sha256=sha,
        trained=spec.weights is not None,
        class_names=tuple(meta["class_names"]) if meta.get("class_names") else None,
        reference_accuracy=dict(meta.get("accuracy") or {}),
    )
    return model.eval(), info


def _check_image_size(arch: str, family: str, size: int) -> None:
    smallest = 32 if family == "imagenet" else 8
    if size < smallest:
        raise BadInput(f"--image-size {size} is too small for {arch}; use at least {smallest}")


def _load_default(spec: ModelSpec) -> tuple[nn.Module, ModelInfo]:
    """The built-in model: CIFAR ResNet-20 trained on Fashion-MNIST (28x28 grayscale)."""
    if spec.weights or spec.num_classes or spec.in_chans or spec.image_size:
        raise BadInput(
            "--model default takes no --weights/--num-classes/--in-chans/--image-size; "
            "name an architecture (e.g. --model resnet20) to change them"
        )
    if DEFAULT_WEIGHTS.exists():
        _, meta = load_state_dict(DEFAULT_WEIGHTS)
        model, info = load_model(ModelSpec(arch=meta["arch"], weights=DEFAULT_WEIGHTS))
        return model, dataclasses.replace(info, weights="default")
    # Only a checkout without the trained weights gets here; say so loudly.
    log.warning("default model weights %s are missing: using a seeded random ResNet-20", DEFAULT_WEIGHTS)
    model, info = load_model(ModelSpec(arch="resnet20", num_classes=10, in_chans=1, image_size=28))
    return model, dataclasses.replace(info, weights="default-untrained")


# --------------------------------------------------------------------------- checkpoints
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "ema")
_META_KEYS = ("arch", "num_classes", "in_chans", "image_size", "preprocess", "class_names", "accuracy")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_state_dict(path: Path, *, trust: bool = False) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read weights from a state_dict, a wrapped checkpoint or a TorchScript archive.

    Returns the tensors and any metadata stored beside them (preprocess, class names).
    Pickles are read with weights_only=True: a file that would run code is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"checkpoint {path} does not exist")
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise BadInput(f"checkpoint {path} looks like TorchScript but cannot be loaded: {e}") from e
        return dict(module.state_dict()), {}
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before failing clearly
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as e:  # weights_only raises UnpicklingError; corrupt files raise others
        first = _pickle_reason(e)
        if any(k in str(e) for k in ("Unsupported global", "GLOBAL", "REDUCE", "Unsupported class")):
            raise BadInput(
                f"checkpoint {path} contains Python objects that could run code; refused. "
                "Save a plain state_dict, or pass --trust-checkpoint if you trust its source"
            ) from e
        raise BadInput(f"checkpoint {path} cannot be read: truncated, corrupt or not a PyTorch .pt/.pth file ({first})") from e
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
    if missing or unexpected:
        raise BadInput(
            f"checkpoint {path} does not fit this model: "
            f"{len(missing)} missing key(s) {_few(missing)}, "
            f"{len(unexpected)} unexpected key(s) {_few(unexpected)}; check --model"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise BadInput(
            f"checkpoint {path} has other shapes than this model: {_few(wrong)}; "
            "check --model, --num-classes and --in-chans"
        )
    model.load_state_dict(state, strict=True)


def _few(items: list[str], n: int = 4) -> str:
    return "[" + ", ".join(items[:n]) + (", ..." if len(items) > n else "") + "]"


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write a checkpoint that load_model reads back (weights_only-safe types only), atomically."""
    from pipeline.artifacts import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), **meta}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())

