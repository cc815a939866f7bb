"""A small, seeded trainer for zoo models; it made the built-in default model."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.data import (
    Dataset,
    ImageSet,
    Preprocess,
    calibration_split,
    drawn_across,
    open_dataset,
    stratified_indices,
)
from pipeline.model.zoo import build_model, save_checkpoint
from resnetx.errors import BadInput
from resnetx.files import atomic_write_text

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate"]

log = logging.getLogger(__name__)
# of a dataset with one set of images (an image folder), the share held out of training to score it: drawn seeded
# across its classes
HELD_OUT = 0.1


@dataclass(frozen=True)
class TrainConfig:
    model: str = "resnet20"
    data: str = "fashion-mnist"
    data_dir: Path | None = None
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step
    warmup_epochs: float = 0.5
    pad: int | None = None  # random-crop padding; default image_size // 8
    image_size: int | None = None  # train at this size (images resized once, bilinear); default: the data's
    flip: bool = True
    seed: int = 0
    limit: int | None = None  # train on N images only (tests, quick runs): the first, or drawn across the classes
    eval_limit: int | None = None  # ... and score on N
    device: str = "auto"
    out: Path = Path("model.pt")

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "step"):
            raise BadInput(f"unknown schedule {self.schedule!r}; use cosine or step")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise BadInput("--epochs and --batch-size must be >= 1 and --lr > 0")
        if self.model == "default":
            raise BadInput("--model default is the shipped model; train an architecture, e.g. --model resnet20")
        if self.data == "sample":  # its one split is a slice of the test set: the score would be on training images
            raise BadInput("--data sample is 1,000 Fashion-MNIST test images with no train split of its own; "
                           "train on fashion-mnist, cifar10 or imagefolder:DIR")


@dataclass
class TrainResult:
    checkpoint: Path
    best_top1: float
    best_epoch: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


StepCallback = Callable[[int, int, dict[str, float]], None]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        from runtimes.base import require_cuda

        require_cuda()
    return torch.device(name)


def _stats(ds: Dataset, train: np.ndarray, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of the training images (on a seeded subset of up to 10,000 of them)."""
    idx = np.sort(train[np.random.default_rng(0).permutation(len(train))[:10_000]])
    x = ds.raw(idx).astype(np.float32) / 255.0
    x = x if x.ndim == 4 else x[..., None]
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    if len(mean) != channels:
        mean, std = np.full(channels, mean.mean()), np.full(channels, std.mean())
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def _augment(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per image, on a NCHW batch."""
    n, _, h, w = x.shape
    if pad:
        xp = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
        xp = torch.gather(xp, 2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
        x = torch.gather(xp, 3, cols)
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def evaluate(model: nn.Module, ds: Dataset, pre: Preprocess, *, batch_size: int = 256,
             limit: int | None = None, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy (%) of a PyTorch model on a labelled dataset (its first `limit` images)."""
    if ds.labels is None:
        raise BadInput(f"dataset {ds.name} has no labels; accuracy needs a labelled dataset")
    return _top1(model, ImageSet(ds, pre, np.arange(len(ds) if limit is None else min(limit, len(ds)))),
                 batch_size, device)


@torch.no_grad()
def _top1(model: nn.Module, images: ImageSet, batch_size: int, device: torch.device | str) -> float:
    model.eval()
    labels, correct = images.labels, 0
    for start, x in zip(range(0, len(images), batch_size), images.chunks(batch_size), strict=True):
        logits = model(torch.from_numpy(x).to(device))
        correct += int((logits.argmax(1).cpu().numpy() == labels[start : start + len(x)]).sum())
    return 100.0 * correct / max(len(images), 1)


def _lr_at(cfg: TrainConfig, step: int, total: int, per_epoch: int) -> float:
    warm = int(cfg.warmup_epochs * per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "cosine":
        t = (step - warm) / max(1, total - warm)
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t))
    epoch = step // per_epoch
    return cfg.lr * (0.1 ** sum(epoch >= m * cfg.epochs for m in (0.5, 0.75)))


@dataclass
class _Data:
    """The training images in memory as uint8 tensors, the images that score them, and the preprocessing learned
    from them."""

    train: Dataset
    test: ImageSet
    scored_on: str  # what scores the model, in words (the checkpoint's accuracy record)
    pre: Preprocess
    images: torch.Tensor  # N x C x H x W uint8
    labels: torch.Tensor
    class_names: tuple[str, ...]


def _split(cfg: TrainConfig, train: Dataset, test: Dataset) -> tuple[np.ndarray, np.ndarray, str]:
    """The images trained on and those that score (indices of `train` and of `test`), and what scores, in words.
    A dataset with a test split: the first --limit of its train split, the first --eval-limit of its test split.
    An image folder has one set of images, read in class order: HELD_OUT of it, drawn seeded across its classes,
    scores and is never trained on; --limit and --eval-limit draw seeded across the classes too."""
    if calibration_split(cfg.data) == "train":
        n, m = (len(d) if k is None else min(k, len(d)) for d, k in ((train, cfg.limit), (test, cfg.eval_limit)))
        return np.arange(n), np.arange(m), f"{cfg.data}:test"
    labels = train.labels
    held = stratified_indices(labels, max(1, round(HELD_OUT * len(labels))), cfg.seed)
    rest = np.setdiff1d(np.arange(len(labels)), held)
    return drawn_across(labels, rest, cfg.limit, cfg.seed), drawn_across(labels, held, cfg.eval_limit, cfg.seed), (
        f"{cfg.data}: {len(held)} of its {len(labels)} images held out of training, drawn seeded across its classes")


def _load(cfg: TrainConfig) -> _Data:
    train_ds = open_dataset(cfg.data, split="train", data_dir=cfg.data_dir)
    # an image folder is one set of images (_split holds some out): listed once, not walked again
    one_set = calibration_split(cfg.data) != "train"
    test_ds = train_ds if one_set else open_dataset(cfg.data, split="test", data_dir=cfg.data_dir)
    if train_ds.labels is None or train_ds.class_names is None:
        raise BadInput(f"dataset {cfg.data} has no labels; training needs a labelled dataset")
    train_idx, test_idx, scored_on = _split(cfg, train_ds, test_ds)
    sample = train_ds.raw(np.arange(1))
    channels = 1 if sample.ndim == 3 else sample.shape[-1]
    size = cfg.image_size or sample.shape[1]
    mean, std = _stats(train_ds, train_idx, channels)
    images = train_ds.raw(train_idx)
    images_t = torch.from_numpy(images if images.ndim == 4 else images[..., None]).permute(0, 3, 1, 2)
    if size != images_t.shape[-1]:  # the same resize evaluation's Preprocess applies
        images_t = F.interpolate(images_t.float(), size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=True).round().clamp(0, 255).to(torch.uint8)
    pre = Preprocess(image_size=size, resize=size, channels=channels, mean=mean, std=std)
    return _Data(train_ds, ImageSet(test_ds, pre, test_idx), scored_on, pre, images_t,
                 torch.from_numpy(train_ds.labels[train_idx].astype(np.int64)), train_ds.class_names)


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum; weight decay on conv/linear weights only."""
    decay = [p for _, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for _, p in model.named_parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
    )


def _epoch(cfg: TrainConfig, d: _Data, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, step: int,
           gen: torch.Generator, device: torch.device, on_step: StepCallback | None) -> tuple[float, float, int]:
    """One pass over the training images: (mean loss, accuracy %, the global step after it)."""
    n_train = len(d.labels)
    per_epoch = math.ceil(n_train / cfg.batch_size)
    total = per_epoch * cfg.epochs
    pad = cfg.pad if cfg.pad is not None else max(1, d.pre.image_size // 8)
    mean_t = torch.tensor(d.pre.mean).view(1, -1, 1, 1)
    std_t = torch.tensor(d.pre.std).view(1, -1, 1, 1)
    model.train()
    order = torch.randperm(n_train, generator=gen)
    seen = correct = 0
    loss_sum = 0.0
    for i in range(per_epoch):
        idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        x = _augment(d.images[idx].float().div_(255.0), pad, cfg.flip, gen)
        x = ((x - mean_t) / std_t).to(device).contiguous(memory_format=torch.channels_last)
        y = d.labels[idx].to(device)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step, total, per_epoch)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seen += len(y)
        correct += int((logits.argmax(1) == y).sum())
        loss_sum += float(loss.detach()) * len(y)
        if on_step:
            on_step(epoch, i + 1, {"loss": loss_sum / seen, "acc": 100.0 * correct / seen,
                                   "lr": opt.param_groups[0]["lr"]})
    return loss_sum / seen, 100.0 * correct / seen, step


def _checkpoint_meta(cfg: TrainConfig, d: _Data, top1: float, epoch: int) -> dict[str, Any]:
    """What the checkpoint carries beside its weights: the model's shape, preprocessing, classes, accuracy."""
    return {"arch": cfg.model, "num_classes": len(d.class_names), "in_chans": d.pre.channels,
            "image_size": d.pre.image_size, "preprocess": d.pre.to_dict(), "class_names": list(d.class_names),
            "accuracy": {"dataset": d.scored_on, "top1": round(top1, 2), "images": len(d.test)}, "epoch": epoch}


def train(cfg: TrainConfig, *, on_step: StepCallback | None = None,
          on_epoch: Callable[[dict[str, float]], None] | None = None,
          command: str | None = None) -> TrainResult:
    """Train cfg.model on cfg.data, score each epoch on its held-out images (see _split), keep the best
    checkpoint."""
    torch.manual_seed(cfg.seed)
    device = _device(cfg.device)
    d = _load(cfg)
    model = build_model(cfg.model, num_classes=len(d.class_names), in_chans=d.pre.channels)
    model = model.to(device).to(memory_format=torch.channels_last)
    opt = _optimizer(cfg, model)
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_epoch, history, start, step = -1.0, -1, [], time.perf_counter(), 0
    for epoch in range(cfg.epochs):
        loss, acc, step = _epoch(cfg, d, model, opt, epoch, step, gen, device, on_step)
        top1 = _top1(model, d.test, 256, device)
        row = {"epoch": epoch + 1, "train_loss": round(loss, 4), "train_acc": round(acc, 2),
               "test_top1": round(top1, 2), "seconds": round(time.perf_counter() - start, 1)}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if top1 > best:
            best, best_epoch = top1, epoch + 1
            save_checkpoint(cfg.out, model.to("cpu").to(memory_format=torch.contiguous_format),
                            _checkpoint_meta(cfg, d, top1, epoch + 1))
            model.to(device).to(memory_format=torch.channels_last)
    seconds = time.perf_counter() - start
    card = {"command": command, "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
            "best_top1": round(best, 2), "best_epoch": best_epoch, "train_seconds": round(seconds, 1),
            "torch": torch.__version__, "device": str(device), "history": history}
    atomic_write_text(Path(cfg.out).with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    return TrainResult(Path(cfg.out), best, best_epoch, seconds, history)
