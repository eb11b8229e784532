"""ResNet-10 / ResNet-18 for cross-architecture evaluation, and ResNet-10-AP (docs/protocols.md, hard-label).

One class covers both families:
- ``avgpool_down=False``: the usual ResNet with strided 3x3 convs and a strided 1x1 conv shortcut (the DC / IDC
  "ResNet" used for low-resolution cross-architecture tests); batch or instance norm.
- ``avgpool_down=True`` (ResNet-AP, IDC's ``resnet_ap``): every conv has stride 1; a block that downsamples
  average-pools by 2 after its first conv + ReLU, and its shortcut is conv1x1 -> AvgPool2 -> norm. Used with
  instance norm by the Minimax / MGD3 / DMGD ImageNet-subset protocols.

The stem depends on the input size: 3x3 conv without pooling up to 64 px; above, ResNet-AP uses a 3x3 conv
then AvgPool2 (up to 128 px) or a 7x7 stride-1 conv then AvgPool4, and the plain ResNet uses the usual
7x7 stride-2 conv then 3x3 max-pool. Widths 64-128-256-512, global average pooling, then a linear head.
``embed(x)`` is the pooled feature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .convnet import norm_layer

LAYERS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2)}


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, avgpool_down: bool):
        super().__init__()
        conv_stride = 1 if avgpool_down else stride
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=conv_stride, padding=1, bias=False)
        self.bn1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = norm_layer(norm, c_out)
        self.pool = stride if avgpool_down and stride > 1 else 0
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if avgpool_down:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, bias=False), nn.AvgPool2d(stride), norm_layer(norm, c_out)
                )
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm_layer(norm, c_out)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.pool:
            out = F.avg_pool2d(out, self.pool)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stem(channels: int, width: int, resolution: int, norm: str, avgpool_down: bool) -> nn.Sequential:
    if resolution <= 64:
        return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), norm_layer(norm, width), nn.ReLU())
    if avgpool_down:
        if resolution <= 128:
            return nn.Sequential(
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                norm_layer(norm, width),
                nn.ReLU(),
                nn.AvgPool2d(2),
            )
        return nn.Sequential(
            nn.Conv2d(channels, width, 7, padding=3, bias=False), norm_layer(norm, width), nn.ReLU(), nn.AvgPool2d(4)
        )
    return nn.Sequential(
        nn.Conv2d(channels, width, 7, stride=2, padding=3, bias=False),
        norm_layer(norm, width),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


class ResNet(nn.Module):
    def __init__(
        self,
        depth: int,
        num_classes: int,
        channels: int = 3,
        resolution: int = 32,
        norm: str = "batch",
        avgpool_down: bool = False,
        width: int = 64,
    ):
        super().__init__()
        if depth not in LAYERS:
            raise ValueError(f"ResNet depth must be one of {sorted(LAYERS)}, got {depth}")
        self.stem = _stem(channels, width, resolution, norm, avgpool_down)
        blocks: list[nn.Module] = []
        c_in = width
        for stage, n in enumerate(LAYERS[depth]):
            c_out = width * 2**stage
            for k in range(n):
                blocks.append(BasicBlock(c_in, c_out, 2 if (stage > 0 and k == 0) else 1, norm, avgpool_down))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.feat_dim = c_in
        self.fc = nn.Linear(c_in, num_classes)
        self.norm = norm
        self.avgpool_down = avgpool_down

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        z = self.embed(x)
        return z if features else self.fc(z)


def resnet_ap_init_(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """IDC's ResNet-AP initialisation: conv weights N(0, 2 / (k*k*out_channels)), norm weight 1 and bias 0
    (the linear head keeps PyTorch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            with torch.no_grad():
                m.weight.normal_(0, math.sqrt(2.0 / n), generator=generator)
