"""Differentiable augmentations. LGM's "standard" one: flip + RandomResizedCrop + additive noise, per sample.

The flip is folded into the crop's affine matrix, so one ``grid_sample`` does both. Random draws come from a
CPU ``torch.Generator`` so a run is reproducible on any device and resumable from its saved generator state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class StandardAugment:
    """LGM's distillation augmentation (METHODS.md 1.5). ``noise_p = 0`` gives AugBasic (probe training)."""

    out_size: int
    flip_p: float = 0.5
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    noise_p: float = 0.5
    noise_std: float = 0.2
    noise_mean: float = 0.0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        draw = torch.rand(b, 6, generator=generator)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * draw[:, 0]
        log_r = math.log(self.ratio[0]) + (math.log(self.ratio[1]) - math.log(self.ratio[0])) * draw[:, 1]
        aspect = torch.exp(log_r)
        # Crop width and height as fractions of the image side (normalised coordinates span 2).
        w = torch.sqrt(area * aspect).clamp(max=1.0)
        h = torch.sqrt(area / aspect).clamp(max=1.0)
        cx = (2 * draw[:, 2] - 1) * (1 - w)
        cy = (2 * draw[:, 3] - 1) * (1 - h)
        flip = torch.where(draw[:, 4] < self.flip_p, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = w * flip
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, [b, x.shape[1], self.out_size, self.out_size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.noise_p > 0:
            noise = torch.randn(out.shape, generator=generator) * self.noise_std + self.noise_mean
            mask = (draw[:, 5] < self.noise_p).float().view(b, 1, 1, 1)
            out = out + (noise * mask).to(device=x.device, dtype=x.dtype)
        return out


def aug_basic(out_size: int) -> StandardAugment:
    """Flip + RandomResizedCrop, no noise: the probe-training augmentation of LGM/SFM."""
    return StandardAugment(out_size=out_size, noise_p=0.0)
