"""SFM, statistical flow matching (docs/methods/sfm.md).

The real flow F*_c = nu_c - mu_c (non-target centre minus class centre) is computed once from cached class
means; each step matches the synthetic flow of the rendered, augmented images by cosine over the whole
C x F matrix. No real image is loaded in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..core import dist
from ..core.errors import ConfigError
from ..core.options import option
from ..data.augment import StandardAugment
from ..synset.params import ImageParam
from .base import Method, PixelOptions, RunContext, register


def non_target_centres(centres: torch.Tensor, denominator: float) -> torch.Tensor:
    """nu_c = (sum_j centres_j - centres_c) / denominator, for all c at once."""
    return (centres.sum(dim=0, keepdim=True) - centres) / denominator


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    sums = torch.zeros(num_classes, features.shape[1], device=features.device, dtype=features.dtype)
    sums = sums.index_add(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).to(features)
    return sums / counts[:, None]


def augmented_views(
    ctx: RunContext[PixelOptions], images: torch.Tensor, augs: int, augment: StandardAugment
) -> torch.Tensor:
    """Backbone features of ``augs`` independently augmented views of every image: (augs * N) x F, view-major.

    Under torchrun every rank draws the parameters of every view and augments and embeds its share only; the
    features are gathered with autograd (the backward pass then needs ``dist.average_gradients``, done by the
    engine's step). With ``--view-chunk K`` the share is augmented and embedded K views at a time under activation
    checkpointing, so the backward holds one chunk's activations, not all of them.
    """
    n = augs * len(images)
    draw = augment.draw(n, ctx.generator)
    share = dist.part(n)
    inputs, mine = images.repeat(augs, 1, 1, 1)[share], draw[share]
    chunk = ctx.opts.view_chunk

    def embed(x: torch.Tensor, rows: slice) -> torch.Tensor:
        return ctx.backbone(augment.apply(x, mine[rows]))

    if not chunk or len(inputs) <= chunk or not torch.is_grad_enabled():
        return dist.gather_parts(embed(inputs, slice(None)), n)
    parts = [
        checkpoint(embed, inputs[i : i + chunk], slice(i, i + chunk), use_reentrant=False)
        for i in range(0, len(inputs), chunk)
    ]
    return dist.gather_parts(torch.cat(parts), n)


@dataclass
class SFMOptions(PixelOptions):
    flow_norm: str = option(
        "classes", "non-target centre: divide by C-1 (the paper) or by mC-1 (official code)", ("classes", "images")
    )
    decouple_alpha: float | None = option(None, "decoupled TCDD/NCDD loss weight (1 = TCDD only, 0 = NCDD only)")

    def validate(self) -> None:
        super().validate()
        if self.decouple_alpha is not None and not 0 <= self.decouple_alpha <= 1:
            raise ConfigError("--decouple-alpha must lie in [0, 1]")


@register
class SFM(Method[SFMOptions]):
    name = "sfm"
    summary = "statistical flow matching: match the class-to-non-class flow of cached real class means"
    Options = SFMOptions
    stepwise = True
    needs_stats = True

    def init_param(self, ctx: RunContext[SFMOptions]) -> ImageParam:
        opts = ctx.opts
        mu = ctx.stats.means.to(ctx.device)
        c = len(mu)
        self.real_centres = mu
        self.real_non_target = non_target_centres(mu, c - 1)
        self.real_flow = self.real_non_target - mu
        self.labels = ctx.class_labels().to(ctx.device)
        self.augment = StandardAugment(out_size=ctx.crop, noise_mean=opts.noise_mean)
        self.denominator = (c - 1) if opts.flow_norm == "classes" else (len(self.labels) - 1)
        return ctx.initial_param()

    def loss(self, ctx: RunContext[SFMOptions], images: torch.Tensor) -> torch.Tensor:
        opts = ctx.opts
        z = augmented_views(ctx, images, opts.augs, self.augment).view(opts.augs, len(images), -1).mean(dim=0)
        centres = class_means(z, self.labels, len(self.real_centres))
        non_target = non_target_centres(centres, self.denominator)
        if opts.decouple_alpha is not None:
            a = opts.decouple_alpha
            return a * F.mse_loss(centres, self.real_centres) + (1 - a) * F.mse_loss(non_target, self.real_non_target)
        flow = non_target - centres
        return 1 - F.cosine_similarity(flow.flatten(), self.real_flow.flatten(), dim=0)
