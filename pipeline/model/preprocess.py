"""What a model's input expects, as data: the preprocessing of an image into the model's input (size, crop, channel
order, scaling, a per-channel mean or a per-pixel mean image, std), declared once and read by everything that feeds
the model: calibration, the accuracy search, verify, bench, predict, Triton's client and DeepStream.

An image is decoded as RGB (or grey) uint8, its shorter side resized to `resize` and centre-cropped to `image_size`,
its channels put in the model's order, divided by `divide` (255: pixels in [0, 1]), less `mean` (one value per
channel, or a mean image per pixel), over `std`. Keras's `imagenet_utils.preprocess_input` modes are three settings
of these (`MODES`). The graphs resnetx writes take this NCHW float32 input whatever layout the source model took.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from resnetx.errors import BadInput, CheckFailed

__all__ = ["Preprocess", "MeanImage", "Declares", "MODES", "CHANNEL_ORDERS", "IMAGENET_MEAN", "IMAGENET_STD",
           "per_channel"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHANNEL_ORDERS = ("rgb", "bgr")
# keras.applications.imagenet_utils.preprocess_input's modes, exactly: caffe flips RGB to BGR and subtracts the
# ImageNet means from 0-255 pixels; tf scales to [-1, 1]; torch is ImageNet mean/std on [0, 1]
MODES: dict[str, dict[str, Any]] = {
    "caffe": {"divide": 1.0, "mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0), "channel_order": "bgr"},
    "tf": {"divide": 127.5, "mean": (1.0, 1.0, 1.0), "std": (1.0, 1.0, 1.0), "channel_order": "rgb"},
    "torch": {"divide": 255.0, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "channel_order": "rgb"},
}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class MeanImage:
    """A per-pixel mean (C, H, W) in units of pixels scaled to [0, 1], in the model's channel order: subtracted after
    resizing, as Keras's CIFAR ResNet example does (`x / 255 - mean`). The folder keeps it in `FILE`; the manifest
    keeps its hash, and a folder whose file differs is refused."""

    sha256: str
    shape: tuple[int, int, int]
    array: np.ndarray | None = field(default=None, compare=False, repr=False)

    FILE: ClassVar[str] = "preprocess.mean_image.npy"

    @classmethod
    def of(cls, array: np.ndarray) -> MeanImage:
        a = np.ascontiguousarray(array, np.float32)
        return cls(_sha(a), tuple(int(d) for d in a.shape), a)  # type: ignore[arg-type]

    @classmethod
    def read(cls, path: Path, channels: int, size: int, flag: str = "--mean-image") -> MeanImage:
        """An (H, W, C) or (C, H, W) .npy file of the model's input size, as a MeanImage."""
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInput(f"{flag} {path} cannot be read as a .npy array ({e}); save it with numpy.save") from e
        hwc, chw = (size, size, channels), (channels, size, size)
        if a.shape == hwc and a.shape != chw:
            a = a.transpose(2, 0, 1)
        elif a.shape != chw:
            raise BadInput(f"{flag} {path} has shape {a.shape}; the model's input takes ({size}, {size}, {channels}) "
                           f"or ({channels}, {size}, {size}): a mean of the images at the model's input size")
        if not np.isfinite(a).all():
            raise BadInput(f"{flag} {path} holds NaN or Inf values")
        return cls.of(a)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.FILE, "sha256": self.sha256, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MeanImage:
        return cls(str(d["sha256"]), tuple(int(v) for v in d["shape"]))  # type: ignore[arg-type]

    def loaded(self, folder: Path) -> MeanImage:
        """This mean image with its array read from `folder`, checked against the recorded hash."""
        path = Path(folder) / self.FILE
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInput(f"{path}, the mean image the model's preprocessing subtracts, cannot be read ({e}); "
                           "restore it, or re-run resnetx export") from e
        if _sha(np.ascontiguousarray(a, np.float32)) != self.sha256:
            raise CheckFailed(f"{path} changed after export (its hash differs from manifest.json): the "
                              "preprocessing is not the one exported; re-run resnetx export with --force")
        return replace(self, array=np.ascontiguousarray(a, np.float32))


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()


@dataclass(frozen=True)
class Preprocess:
    """uint8 HWC images -> float32 NCHW, already normalised: the model's input contract."""

    image_size: int
    resize: int  # shorter side is resized to this, then center-cropped to image_size
    channels: int
    mean: tuple[float, ...]  # per channel, in the model's channel order, in units of pixels / divide
    std: tuple[float, ...]
    channel_order: str = "rgb"  # "bgr": the decoded RGB image is flipped before normalising
    divide: float = 255.0  # pixels are divided by this first (255: [0, 1]; 1: raw 0-255; 127.5 with mean 1: [-1, 1])
    mode: str | None = None  # the Keras preprocess_input mode these settings are, if one
    mean_image: MeanImage | None = None  # a per-pixel mean, subtracted instead of `mean`

    def to_dict(self) -> dict[str, Any]:
        """As the manifest records it; the settings at their defaults are left out (the keys of folders written
        before they existed stay the same)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("mean_image", "channel_order", "divide", "mode")}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        if self.channel_order != "rgb":
            d["channel_order"] = self.channel_order
        if self.divide != 255.0:
            d["divide"] = self.divide
        if self.mode is not None:
            d["mode"] = self.mode
        if self.mean_image is not None:
            d["mean_image"] = self.mean_image.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        order = str(d.get("channel_order", "rgb"))
        if order not in CHANNEL_ORDERS:
            raise ValueError(f"preprocess.channel_order {order!r} is not one of {', '.join(CHANNEL_ORDERS)}")
        return cls(
            image_size=int(d["image_size"]),
            resize=int(d["resize"]),
            channels=int(d["channels"]),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
            channel_order=order,
            divide=float(d.get("divide", 255.0)),
            mode=d.get("mode"),
            mean_image=MeanImage.from_dict(d["mean_image"]) if d.get("mean_image") else None,
        )

    def loaded(self, folder: Path) -> Preprocess:
        """With its mean image read from the artifact folder (a no-op without one)."""
        return self if self.mean_image is None else replace(self, mean_image=self.mean_image.loaded(folder))

    @property
    def per_pixel(self) -> bool:
        return self.mean_image is not None

    def words(self) -> str:
        """'RGB / 255, mean 0.49,0.48,0.45, std 0.25,...', or the Keras mode it is."""
        if self.mode:
            return f"Keras preprocess_input mode {self.mode!r}"
        scale = "raw 0-255" if self.divide == 1.0 else f"/ {self.divide:g}"
        mean = "a per-pixel mean image" if self.mean_image else "mean " + ",".join(f"{m:g}" for m in self.mean)
        return f"{self.channel_order.upper()} {scale}, {mean}, std {','.join(f'{s:g}' for s in self.std)}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N,H,W) or (N,H,W,C) uint8 -> (N,channels,S,S) float32."""
        x = images if images.ndim == 4 else images[..., None]
        x = x.astype(np.float32) / np.float32(self.divide) if self.divide != 1.0 else x.astype(np.float32)
        if x.shape[-1] < self.channels:  # grayscale to 3 channels: repeat after resizing, 3x less work
            x = self._adapt_channels(self._resize_crop(x))
        else:
            x = self._resize_crop(self._adapt_channels(x))
        if self.channel_order == "bgr":
            x = x[..., ::-1]
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if self.mean_image is not None:
            if self.mean_image.array is None:
                raise BadInput("the model's preprocessing subtracts a mean image that is not loaded here (give "
                               "--mean-image FILE.npy, or read the folder's manifest)")
            x -= self.mean_image.array[None]
        else:
            x -= np.asarray(self.mean, np.float32)[:, None, None]  # in place: these arrays are large
        x /= np.asarray(self.std, np.float32)[:, None, None]
        return x

    def _adapt_channels(self, x: np.ndarray) -> np.ndarray:
        c = x.shape[-1]
        if c == self.channels:
            return x
        if c == 1:  # grayscale feeds a 3-channel model by repetition
            return np.repeat(x, self.channels, axis=-1)
        if c == 3 and self.channels == 1:
            return (x @ _LUMA)[..., None]
        raise BadInput(f"images have {c} channels; the model takes {self.channels}")

    def _resize_crop(self, x: np.ndarray) -> np.ndarray:
        h, w = x.shape[1:3]
        if h == w == self.image_size:
            return x
        import torch
        import torch.nn.functional as F

        scale = self.resize / min(h, w)
        nh, nw = max(self.image_size, round(h * scale)), max(self.image_size, round(w * scale))
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - self.image_size) // 2, (nw - self.image_size) // 2
        t = t[:, :, top : top + self.image_size, left : left + self.image_size]
        return t.permute(0, 2, 3, 1).numpy()


def per_channel(values: tuple[float, ...], channels: int, flag: str) -> tuple[float, ...]:
    """One value for every channel, or one per channel."""
    if len(values) == 1:
        return tuple(values) * channels
    if len(values) != channels:
        raise BadInput(f"{flag} takes 1 or {channels} values (one per input channel); got {len(values)}")
    return tuple(float(v) for v in values)


@dataclass(frozen=True, kw_only=True)
class Declares:
    """What the command line declares about a model's input and output, for every source (the flags after the
    source's own): its preprocessing, class names, and whether to strip a softmax head."""

    mean: tuple[float, ...] | None = None  # per channel, in the model's channel order, on [0, 1] pixels
    std: tuple[float, ...] | None = None
    resize: int | None = None  # shorter side before the center crop
    class_names: Path | None = None  # a text file, one name per line, in logits order
    preprocess: str | None = None  # caffe | tf | torch: Keras's preprocess_input mode
    channel_order: str | None = None  # rgb | bgr
    mean_image: Path | None = None  # an .npy per-pixel mean on [0, 1] pixels
    strip_softmax: bool = False  # export logits where the model ends in a softmax

    @property
    def declares_preprocessing(self) -> bool:
        return any(v is not None for v in (self.mean, self.std, self.resize, self.preprocess, self.channel_order,
                                           self.mean_image))

    def declared_args(self) -> list[str]:
        """These declarations as export options (the re-make line)."""
        pairs = (("--mean", ",".join(map(str, self.mean)) if self.mean else None),
                 ("--std", ",".join(map(str, self.std)) if self.std else None), ("--resize", self.resize),
                 ("--preprocess", self.preprocess), ("--channel-order", self.channel_order),
                 ("--mean-image", self.mean_image), ("--class-names", self.class_names))
        return [part for flag, value in pairs if value is not None for part in (flag, str(value))] + (
            ["--strip-softmax"] if self.strip_softmax else [])

    def declared_dict(self) -> dict[str, Any]:
        """These declarations for the manifest (paths made absolute, unset ones left out)."""
        d = {"mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None,
             "resize": self.resize, "preprocess": self.preprocess, "channel_order": self.channel_order,
             "mean_image": str(Path(self.mean_image).resolve()) if self.mean_image else None,
             "class_names": str(Path(self.class_names).resolve()) if self.class_names else None,
             "strip_softmax": self.strip_softmax or None}
        return {k: v for k, v in d.items() if v is not None}

    @staticmethod
    def declared_from(d: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of these declarations, read back from `declared_dict`."""
        return {"mean": tuple(d["mean"]) if d.get("mean") else None, "std": tuple(d["std"]) if d.get("std") else None,
                "resize": d.get("resize"), "preprocess": d.get("preprocess"), "channel_order": d.get("channel_order"),
                "mean_image": Path(d["mean_image"]) if d.get("mean_image") else None,
                "class_names": Path(d["class_names"]) if d.get("class_names") else None,
                "strip_softmax": bool(d.get("strip_softmax"))}

    def preprocess_for(self, channels: int, size: int, base: Preprocess | None,
                       source: str) -> tuple[Preprocess, str] | None:
        """The preprocessing these flags declare for a model of `channels` x `size`, on top of `base` (a checkpoint's
        or a family's, which fills in what is not given), and where it came from; None when nothing is declared.
        `source` names the model in messages. Without a base, a normalisation must be declared whole."""
        if not self.declares_preprocessing:
            return None
        self._check_flags(channels)
        if self.preprocess is not None:
            m = MODES[self.preprocess]
            pre = Preprocess(size, size, channels, m["mean"], m["std"], m["channel_order"], m["divide"],
                             self.preprocess)
        elif self.mean_image is not None:
            std = per_channel(self.std, channels, "--std") if self.std else (1.0,) * channels
            pre = Preprocess(size, size, channels, (0.0,) * channels, std,
                             mean_image=MeanImage.read(self.mean_image, channels, size))
        elif self.mean or self.std or base is not None:
            pre = self._per_channel(channels, size, base, source)
        else:  # only --resize or --channel-order: no normalisation to go with it
            raise BadInput(f"{source} records no normalisation: give --mean and --std (or --preprocess caffe|tf|torch, "
                           "or --mean-image FILE.npy) with --resize/--channel-order")
        order = self.channel_order or pre.channel_order
        resize = self.resize or (base.resize if base is not None and base.image_size == size else size)
        if resize < size:
            raise BadInput(f"--resize {resize} is smaller than the crop (the model's input, {size}); use >= {size}")
        if any(s <= 0 for s in pre.std):
            raise BadInput(f"--std must be > 0 for every channel; got {','.join(map(str, pre.std))}")
        return replace(pre, resize=resize, channel_order=order), "options"

    def _check_flags(self, channels: int) -> None:
        if self.preprocess is not None and self.preprocess not in MODES:
            raise BadInput(f"--preprocess {self.preprocess!r}: use one of {', '.join(MODES)}")
        if self.channel_order is not None and self.channel_order not in CHANNEL_ORDERS:
            raise BadInput(f"--channel-order {self.channel_order!r}: use rgb or bgr")
        given = [f for f, on in (("--preprocess", self.preprocess), ("--mean-image", self.mean_image),
                                 ("--mean", self.mean)) if on is not None]
        if len(given) > 1:
            raise BadInput(f"{' and '.join(given)} each declare the mean the model subtracts: give one of them")
        if self.preprocess is not None and self.std is not None:
            raise BadInput(f"--preprocess {self.preprocess} sets the std too: leave --std out")
        if self.preprocess == "caffe" and self.channel_order == "rgb":
            raise BadInput("--preprocess caffe feeds BGR (as Keras's caffe mode does): leave --channel-order rgb out")
        if channels != 3 and (self.preprocess or self.channel_order == "bgr"):
            raise BadInput(f"the model takes {channels} channel(s): --preprocess and --channel-order bgr are for RGB "
                           "models")

    def _per_channel(self, channels: int, size: int, base: Preprocess | None, source: str) -> Preprocess:
        if base is None and not (self.mean and self.std):
            raise BadInput(f"{source}: --mean needs --std too (and the other way round)")
        mean = per_channel(self.mean, channels, "--mean") if self.mean else base.mean  # type: ignore[union-attr]
        std = per_channel(self.std, channels, "--std") if self.std else base.std  # type: ignore[union-attr]
        if base is not None:  # a checkpoint's preprocessing, with what is declared in its place
            return replace(base, image_size=size, channels=channels, mean=mean, std=std, mode=None)
        return Preprocess(size, size, channels, mean, std)
