"""SFM, statistical flow matching (METHODS.md 2.4).

The real flow F*_c = nu_c - mu_c (non-target centre minus class centre) is computed once from cached class
means; each step matches the synthetic flow of the rendered, augmented images by cosine over the whole
C x F matrix. No real image is loaded in the loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..augment import StandardAugment
from ..synset import ImageParam
from .base import Method, RunContext, register


def non_target_centres(centres: torch.Tensor, denominator: float) -> torch.Tensor:
    """nu_c = (sum_j centres_j - centres_c) / denominator, for all c at once."""
    return (centres.sum(dim=0, keepdim=True) - centres) / denominator


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    sums = torch.zeros(num_classes, features.shape[1], device=features.device, dtype=features.dtype)
    sums = sums.index_add(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).to(features)
    return sums / counts[:, None]


def augmented_features(ctx: RunContext, images: torch.Tensor, augs: int, augment: StandardAugment) -> torch.Tensor:
    """Features of ``augs`` independently augmented views per image, averaged per image (one batched pass)."""
    views = augment(images.repeat(augs, 1, 1, 1), ctx.generator)
    return ctx.backbone(views).view(augs, len(images), -1).mean(dim=0)


@register
class SFM(Method):
    name = "sfm"
    optimises = True
    needs_stats = True

    def init_param(self, ctx: RunContext) -> ImageParam:
        cfg = ctx.config
        mu = ctx.stats.means.to(ctx.device)
        c = len(mu)
        self.real_centres = mu
        self.real_non_target = non_target_centres(mu, c - 1)
        self.real_flow = self.real_non_target - mu
        self.labels = ctx.class_labels().to(ctx.device)
        self.augment = StandardAugment(out_size=ctx.crop, noise_mean=cfg.noise_mean)
        n_syn = len(self.labels)
        self.denominator = (c - 1) if cfg.flow_norm == "classes" else (n_syn - 1)
        return ctx.initial_param()

    def loss(self, ctx: RunContext, images: torch.Tensor) -> torch.Tensor:
        cfg = ctx.config
        z = augmented_features(ctx, images, cfg.augs, self.augment)
        centres = class_means(z, self.labels, len(self.real_centres))
        non_target = non_target_centres(centres, self.denominator)
        if cfg.decouple_alpha is not None:
            a = cfg.decouple_alpha
            return a * F.mse_loss(centres, self.real_centres) + (1 - a) * F.mse_loss(non_target, self.real_non_target)
        flow = non_target - centres
        return 1 - F.cosine_similarity(flow.flatten(), self.real_flow.flatten(), dim=0)
