"""Int8-hostile models for tests and the anchor comparison: a few activation channels carry most of the range.

The fp32 function is unchanged: inside a residual block, channels of bn1 (and so of the ReLU after it) are
scaled up by `factor` and conv2's weights that read them scaled down by the same factor (ReLU is positively
homogeneous). A per-tensor activation scale then spends its range on the few loud channels, and conv2's
per-output-channel weight scale on the many quiet ones: plain int8 loses accuracy at exactly those convs.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["make_int8_hostile", "make_residual_hostile", "HOSTILE_BLOCKS"]

HOSTILE_BLOCKS = ("layer1.1", "layer2.1", "layer3.1")  # a CIFAR ResNet-20's three stages


def make_int8_hostile(model: nn.Module, blocks: tuple[str, ...] = HOSTILE_BLOCKS, channels: int = 2,
                      factor: float = 40.0) -> nn.Module:
    """Scale `channels` of each block's bn1 up by `factor` and conv2's matching input weights down; in place."""
    with torch.no_grad():
        for name in blocks:
            block = model.get_submodule(name)
            idx = torch.arange(channels)
            block.bn1.weight[idx] *= factor
            block.bn1.bias[idx] *= factor
            block.conv2.weight[:, idx] /= factor
    return model


def make_residual_hostile(model: nn.Module, channels: int = 2, factor: float = 30.0) -> nn.Module:
    """Loud channels in a CIFAR ResNet's first-stage residual stream (stem output, every block's bn2, their sum),
    compensated in every conv that reads the stream (each block's conv1, stage 2's first conv and downsample).
    The Adds in between keep cross-layer equalization from undoing it: only keeping layers out of int8 can."""
    idx = torch.arange(channels)
    with torch.no_grad():
        for bn in [model.bn1, *(b.bn2 for b in model.layer1)]:
            bn.weight[idx] *= factor
            bn.bias[idx] *= factor
        readers = [b.conv1 for b in model.layer1] + [model.layer2[0].conv1, model.layer2[0].downsample[0]]
        for conv in readers:
            conv.weight[:, idx] /= factor
    return model
