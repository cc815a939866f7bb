"""What a DeepStream hand-off is made of (its options, its plan, the fidelity it measured) and nvinfer's preprocessing
reproduced on the CPU: its config values for a model's own preprocessing, and the pixels it would feed the network
(y = net-scale-factor * (x - offsets) after scaling the whole frame, or a centre ROI, straight to the network size)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.folder.manifest import EngineEntry, GraphEntry, Manifest
from pipeline.folder.verdicts import Standing
from pipeline.model.data import Preprocess
from pipeline.precisions import Precision
from resnetx.errors import BadInput

__all__ = ["DeepStreamOptions", "DeepStreamPlan", "Fidelity", "Variant", "NETWORK_MODE", "COLOR_FORMAT", "NCHW",
           "color_format",
           "SCALING_FILTER_BILINEAR", "FIDELITY_BAR", "LOGIT_THRESHOLD", "centre_roi", "nvinfer_inputs",
           "nvinfer_mapping"]

NETWORK_MODE = {Precision.fp32: 0, Precision.int8: 1, Precision.fp16: 2}  # nvinfer's network-mode values
COLOR_FORMAT = {"rgb": 0, "bgr": 1, "gray": 2}  # model-color-format's values
NCHW = 0  # network-input-order: the graphs resnetx writes take NCHW, whatever layout the source model took
SCALING_FILTER_BILINEAR = 1  # NvBufSurfTransformInter_Bilinear
FIDELITY_BAR = 0.5  # points of top-1 nvinfer's preprocessing may cost before the output says so loudly
LOGIT_THRESHOLD = -1e9  # the graph gives logits, not probabilities: nvinfer keeps its top class whatever it is


@dataclass(frozen=True)
class DeepStreamOptions:
    folder: Path
    out: Path
    precision: Precision = Precision.fp16
    kind: str | None = None  # the GPU kind it deploys to: names an enterprise engine built for it
    batch: int | None = None
    mode: str = "primary"  # primary: whole frames; secondary: objects a detector found
    fold: bool = False
    data: str = "sample"
    data_dir: Path | None = None
    samples: int = 512
    allow_unverified: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision(self.precision))
        if self.mode not in ("primary", "secondary"):
            raise BadInput(f"--mode {self.mode!r}: use primary or secondary")
        if self.batch is not None and self.batch < 1 or self.samples < 1:
            raise BadInput("--batch and --samples must be >= 1")


@dataclass(frozen=True)
class Variant:
    """One way of feeding the graph nvinfer's way: its top-1 agreement with the export's preprocessing, and accuracy."""

    agreement: float
    top1: float | None


@dataclass
class Fidelity:
    """The graph on the same images with the export's preprocessing and with nvinfer's: as configured, with a centre
    ROI (nvdspreprocess) where the model was evaluated on a centre crop, and with the folded graph."""

    data: str
    images: int
    top1_export: float | None  # accuracy (%) with the export's preprocessing
    variants: dict[str, Variant]  # "nvinfer", "nvinfer+roi", "folded", "folded+roi"
    fold_parity: dict[str, float] = field(default_factory=dict)  # folded vs original on the same resized pixels

    def cost(self, variant: str = "nvinfer") -> float | None:
        """Points of top-1 a variant costs against the export's preprocessing (None without labels)."""
        v = self.variants.get(variant)
        if self.top1_export is None or v is None or v.top1 is None:
            return None
        return self.top1_export - v.top1

    @property
    def agreement(self) -> float:
        return self.variants["nvinfer" if "nvinfer" in self.variants else "folded"].agreement


@dataclass
class DeepStreamPlan:
    name: str
    graph: GraphEntry
    engine: EngineEntry | None
    engine_why: str  # why no engine is named, in words
    props: dict[str, str]  # the [property] group
    scale: float
    offsets: tuple[float, ...]
    fold_scale: tuple[float, ...]  # per input channel: what the folded copy's first conv absorbs
    fidelity: Fidelity | None
    verdicts: dict[str, Standing]
    notes: list[str]
    manifest: Manifest


def centre_roi(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """(left, top, width, height) of the centred square whose side is `fraction` of the shorter side: the region a
    resize-the-shorter-side-then-centre-crop keeps, as an nvdspreprocess ROI in whole pixels (a side whose margins
    are equal on the shorter side, so the ROI's centre is the frame's)."""
    short = min(height, width)
    exact = short * fraction
    side = min(short, max(1, round(exact)))
    if (short - side) % 2 and side > 1:  # an odd margin puts the ROI half a pixel off centre: take the closer even one
        side = min((side - 1, side + 1), key=lambda s: (s > short, abs(s - exact)))
    return (width - side) // 2, (height - side) // 2, side, side


def color_format(pre: Preprocess) -> int:
    """model-color-format for the model's input: GRAY for one channel, else its channel order."""
    return COLOR_FORMAT["gray"] if pre.channels == 1 else COLOR_FORMAT[pre.channel_order]


def nvinfer_inputs(raw: np.ndarray, size: int, channels: int, offsets: tuple[float, ...], scale: float,
                   roi: float = 1.0, bgr: bool = False) -> np.ndarray:
    """uint8 RGB (N,H,W[,C]) frames as nvinfer feeds the network: scaled straight to size x size (bilinear, aspect
    ratio not kept, no crop), in BGR order for model-color-format 1, then net-scale-factor * (x - offsets) per
    channel; float32 NCHW. roi < 1: only the centred square of that fraction of the shorter side is scaled (an
    nvdspreprocess ROI)."""
    import torch
    import torch.nn.functional as F

    x = raw if raw.ndim == 4 else raw[..., None]
    if roi < 1.0:
        left, top, w, h = centre_roi(x.shape[1], x.shape[2], roi)
        x = x[:, top : top + h, left : left + w]
    if x.shape[-1] == 1 and channels == 3:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 3 and channels == 1:  # model-color-format GRAY: nvinfer takes the frame's luma
        x = (x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    if bgr:
        x = x[..., ::-1]
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    t = (t - torch.tensor(offsets, dtype=torch.float32).view(1, -1, 1, 1)) * scale
    return np.ascontiguousarray(t.numpy(), np.float32)


def nvinfer_mapping(pre: Preprocess) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    """(net-scale-factor, offsets, the per-channel factor a folded graph absorbs) for the model's (x / divide - mean)
    / std: offsets are divide x mean, in the model's channel order; the one factor is the mean of 1/(divide std),
    exact when the stds are equal. A per-pixel mean image has no offsets nvinfer can take (fold it)."""
    d = pre.divide
    offsets = tuple(round(d * m, 6) for m in pre.mean)
    scale = float(np.mean([1.0 / (d * s) for s in pre.std]))
    fold = tuple(1.0 / (d * s * scale) for s in pre.std)  # folded: nvinfer's scale times this is 1/(divide std)
    return scale, offsets, fold
