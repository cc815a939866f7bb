"""A small trained model with ImageNet-style preprocessing (3 channels, per-channel mean/std, resize then center crop),
for measuring what a deployment's own preprocessing costs (docs/deepstream.md): a CIFAR ResNet-20 trained on
Fashion-MNIST shown as RGB, resized to 36 and center-cropped to 32, normalised with ImageNet's mean and std.

    python scripts/imagenet_style_model.py --out imagenet_style.pt --images 20000 --epochs 1
    resnetx export --model resnet20 --weights imagenet_style.pt --precision fp32,fp16,int8 --out artifacts/inet
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.model.data import FASHION_MNIST_CLASSES, Preprocess, iter_batches, open_dataset  # noqa: E402
from pipeline.model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from pipeline.model.train import evaluate  # noqa: E402
from pipeline.model.zoo import build_model, save_checkpoint  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("imagenet_style.pt"))
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=1)
    a = ap.parse_args()
    torch.manual_seed(0)
    pre = Preprocess(image_size=32, resize=36, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    train, test = open_dataset("fashion-mnist", split="train"), open_dataset("fashion-mnist", split="test")
    model = build_model("resnet20", num_classes=10, in_chans=3)
    steps = a.epochs * (a.images // 128)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    start = time.time()
    for epoch in range(a.epochs):
        model.train()
        for b in iter_batches(train, pre, 128, limit=a.images, seed=epoch, shuffle=True):
            if len(b.x) < 128:
                continue
            loss = F.cross_entropy(model(torch.from_numpy(b.x)), torch.from_numpy(b.y))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        top1 = evaluate(model, test, pre)
        print(f"epoch {epoch + 1}: test top-1 {top1:.2f}% ({time.time() - start:.0f} s)", flush=True)
    meta = {"arch": "resnet20", "num_classes": 10, "in_chans": 3, "image_size": 32, "preprocess": pre.to_dict(),
            "class_names": list(FASHION_MNIST_CLASSES), "accuracy": {"top1": round(top1, 2)}}
    save_checkpoint(a.out, model.eval(), meta)
    print(f"saved {a.out}: test top-1 {top1:.2f}%")
    return 0 if np.isfinite(top1) else 1


if __name__ == "__main__":
    raise SystemExit(main())
