"""LGM, linear gradient matching (docs/methods/lgm.md).

Each step draws a fresh random linear head W ~ N(0, head_std^2), b = 0, and matches the head gradient of
cross-entropy on a real batch (m*A*C images drawn uniformly from train, one augmented view each) with the
one on A augmented views of the synthetic set, by cosine over the flattened [vec(dW); db].

The head gradient has a closed form, dL/dW = (1/B)(softmax(ZW^T + b) - Y)^T Z and dL/db = (1/B) 1^T (P - Y),
which is differentiable in Z: no double backward through autograd is needed (``--grad closed-form``,
default). ``--grad autograd`` builds it with ``torch.autograd.grad(create_graph=True)`` as the original code;
a test shows both agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core import dist
from ..core.errors import ConfigError
from ..core.options import option
from ..data.augment import StandardAugment
from ..synset.params import ImageParam
from .base import Method, PixelOptions, RunContext, register
from .sfm import augmented_views


def head_gradient_closed_form(
    z: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """[vec(dL/dW); dL/db] of mean cross-entropy for the linear head (W, b) on features z, in closed form."""
    residual = F.softmax(z @ weight.T + bias, dim=1)
    residual = (residual - F.one_hot(labels, weight.shape[0]).to(residual)) / len(z)
    return torch.cat([(residual.T @ z).flatten(), residual.sum(dim=0)])


def head_gradient_autograd(
    z: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """The same gradient through ``torch.autograd.grad`` (with a graph when z requires grad)."""
    w = weight.detach().requires_grad_(True)
    b = bias.detach().requires_grad_(True)
    loss = F.cross_entropy(z @ w.T + b, labels)
    gw, gb = torch.autograd.grad(loss, (w, b), create_graph=z.requires_grad)
    return torch.cat([gw.flatten(), gb])


REAL_CHUNK = 256  # real images decoded, augmented and embedded at a time

HEAD_GRADIENTS = {"closed-form": head_gradient_closed_form, "autograd": head_gradient_autograd}


@dataclass
class LGMOptions(PixelOptions):
    augs: int = option(10, "augmented views of the synthetic set per step (A; 3 for ImageNet-1k in the paper)")
    grad: str = option("closed-form", "how the head gradient is computed", tuple(HEAD_GRADIENTS))
    head_std: float = option(0.01, "std of the random linear head drawn every step")
    real_batch: int | None = option(None, "real images per step (default: IPC x A x C, as the original)")

    def validate(self) -> None:
        super().validate()
        if self.head_std <= 0 or (self.real_batch is not None and self.real_batch < 1):
            raise ConfigError("--head-std must be positive and --real-batch at least 1")


@register
class LGM(Method[LGMOptions]):
    name = "lgm"
    summary = "linear gradient matching: match random linear-head gradients of real and synthetic features"
    Options = LGMOptions
    stepwise = True

    def init_param(self, ctx: RunContext[LGMOptions]) -> ImageParam:
        opts = ctx.opts
        self.labels = ctx.class_labels().to(ctx.device)
        self.augment = StandardAugment(out_size=ctx.crop, noise_mean=opts.noise_mean)
        self.real_batch = opts.real_batch or len(self.labels) * opts.augs
        self.head_gradient = HEAD_GRADIENTS[opts.grad]
        return ctx.initial_param()

    def real_gradient(self, ctx: RunContext[LGMOptions], weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Head gradient on a fresh uniform real batch (not class-balanced), one augmented view per image."""
        train = ctx.data.train
        indices = torch.randperm(len(train), generator=ctx.generator)[: self.real_batch]
        n = len(indices)
        # Under torchrun every rank draws the whole batch's augmentation and decodes, augments and embeds its share.
        draw = self.augment.draw(n, ctx.generator)
        share = dist.part(n)  # (empty when the batch is smaller than the number of processes)
        features = [torch.zeros(0, ctx.backbone.feat_dim, device=ctx.device)]
        with torch.no_grad():
            # in chunks: the batch is IPC x A x C images (10,000 at ImageNet-1k), too many to decode at once
            start = share.start
            for real in ctx.real_batches(indices[share], REAL_CHUNK):
                rows = slice(start, start + len(real))
                features.append(ctx.backbone(self.augment.apply(real.to(ctx.device), draw[rows])).float())
                start = rows.stop
            z = dist.gather_parts(torch.cat(features), n)
        return self.head_gradient(z, train.targets[indices].to(ctx.device), weight, bias).detach()

    def loss(self, ctx: RunContext[LGMOptions], images: torch.Tensor) -> torch.Tensor:
        opts = ctx.opts
        c, dim = ctx.data.num_classes, ctx.backbone.feat_dim
        weight = (torch.randn(c, dim, generator=ctx.generator) * opts.head_std).to(ctx.device)
        bias = torch.zeros(c, device=ctx.device)
        g_real = self.real_gradient(ctx, weight, bias)
        z = augmented_views(ctx, images, opts.augs, self.augment).float()
        g_syn = self.head_gradient(z, self.labels.repeat(opts.augs), weight, bias)
        return 1 - F.cosine_similarity(g_real, g_syn, dim=0)
