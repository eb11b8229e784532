"""ConvNet-D, the network of the DC / DSA / DM / IDC / TGDD papers (docs/methods/dm.md, docs/methods/tgdd.md).

Blocks of [conv3x3 (width 128, pad 1) -> norm -> ReLU -> AvgPool2], then flatten -> linear. Instance norm is
GroupNorm with one group per channel (affine), as in the official code. For 28-px inputs the first conv pads by
3 (the code's rule for MNIST / Fashion-MNIST), so the maps are 32 -> 16 -> 8 -> 4 and the feature is 128x4x4.
``embed(x)`` is the flattened feature before the classifier ("return_features" in the code).
"""

from __future__ import annotations

import math

import torch
from torch import nn

NORMS = ("instance", "batch", "none")


def default_depth(resolution: int) -> int:
    """3 for 28-32 px, 4 for 64, 5 for 128 (the papers' choices), at least 1."""
    return max(1, round(math.log2(resolution)) - 2)


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{kind}' ({', '.join(NORMS)})")


class ConvNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        channels: int = 3,
        resolution: int = 32,
        width: int = 128,
        depth: int | None = None,
        norm: str = "instance",
    ):
        super().__init__()
        depth = depth or default_depth(resolution)
        first_pad = 3 if resolution == 28 else 1
        layers: list[nn.Module] = []
        size, c_in = resolution, channels
        for d in range(depth):
            pad = first_pad if d == 0 else 1
            layers += [
                nn.Conv2d(c_in, width, 3, padding=pad),
                norm_layer(norm, width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
            size = (size + 2 * pad - 2) // 2
            c_in = width
        if size < 1:
            raise ValueError(f"depth {depth} is too deep for {resolution}-px inputs")
        self.features = nn.Sequential(*layers)
        self.feat_dim = width * size * size
        self.classifier = nn.Linear(self.feat_dim, num_classes)
        self.norm = norm

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        """Logits, or the embedding with ``features=True`` (so ``torch.func.functional_call`` can ask for it)."""
        z = self.embed(x)
        return z if features else self.classifier(z)
