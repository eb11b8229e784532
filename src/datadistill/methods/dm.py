"""DM, dataset condensation with distribution matching (Zhao & Bilen, WACV 2023; docs/methods/dm.md).

Every iteration draws a fresh randomly initialised ConvNet (frozen) and matches, for every class, the mean
embedding of 256 augmented real images with that of the class's synthetic images; one DSA draw per class is
shared by its real and synthetic images (Siamese). Loss = sum over classes of the squared L2 distance of the
means; one SGD step (lr 1, momentum 0.5) on the pixels per iteration. The DSA strategy is the code's
``color_crop_cutout_flip_scale_rotate``, without flip on digit datasets (the DSA / DM authors' advice for MNIST
and SVHN: "flip augmentation is not good for digit datasets"; it cost 1.9 points at MNIST IPC 1, BENCHMARKS.md).

The DM code optimises normalised images; ``--space normalized`` (default) stores the pixels normalised so the
same lr means the same step. The code never clamps: it optimises and evaluates unbounded pixel values and clamps
only the pictures it saves. ``--no-clamp`` (default) does the same: the set is saved unbounded
(``meta["unbounded"]``) and evaluated so, the PNG grid clamped for display. ``--clamp`` keeps the pixels in
[0, 1] after every step, so the set is exactly what an image file holds; at IPC 1 that cost DM about 2 points
on Fashion-MNIST and MNIST (BENCHMARKS.md).

Under torchrun every rank draws the same network and every class's real indices and DSA parameters, then embeds
the real and synthetic images of its share of the classes only; the loss is summed over ranks (with autograd),
so every rank's update is the single-process one. With batch norm (``--arch convnet-bn``) a class's features
depend on the other classes in the batch, so then every rank matches every class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core import dist
from ..core.errors import ConfigError
from ..core.options import option
from ..core.progress import log
from ..models.architectures import ModelSpec, build_model, init_parameters_
from ..synset.params import ImageParam, RawPixelParam
from ..training.supervised import no_grad_forward
from .base import Method, RunContext, register
from .matching import (
    MatchOptions,
    class_feature_means,
    class_rows,
    initial_images,
    norm_for,
    rank_classes,
    real_train,
    sample_real,
)


@dataclass
class DMOptions(MatchOptions):
    lr: float = option(1.0, "SGD lr on the pixels (DM code: 1.0, on normalised pixels with --space normalized)")
    space: str = option(
        "normalized", "pixels optimised in normalised space (DM code) or raw [0, 1] space", ("normalized", "raw")
    )
    clamp: bool = option(
        False,
        "keep the pixels in [0, 1] after every step; off (the DM code): the set is saved unbounded and evaluated so",
    )
    arch: str = option(
        "convnet", "random embedding network (instance norm in the DM code)", ("convnet", "convnet-bn", "convnet-nn")
    )

    def validate(self) -> None:
        super().validate()
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.init == "mix":
            raise ConfigError("DM has no multi-formation: --init real or noise")


@register
class DM(Method[DMOptions]):
    name = "dm"
    summary = "distribution matching: class feature means of real vs synthetic images through random ConvNets"
    Options = DMOptions
    stepwise = True

    def init_param(self, ctx: RunContext[DMOptions]) -> ImageParam:
        opts = ctx.opts
        self.real = real_train(ctx)
        self.norm = norm_for(ctx)
        self.dsa = opts.dsa(ctx.data.mirror_safe)
        log.info("DSA strategy %s, mode %s", self.dsa.strategy, self.dsa.mode)
        spec = ModelSpec(opts.arch, ctx.data.num_classes, self.real.channels, ctx.resolution, opts.width, opts.depth)
        self.net = build_model(spec, ctx.generator).to(ctx.device).requires_grad_(False)
        self.labels = ctx.class_labels()
        self.shares_classes = not any(isinstance(m, nn.BatchNorm2d) for m in self.net.modules())
        self.classes = rank_classes(ctx.data.num_classes) if self.shares_classes else range(ctx.data.num_classes)
        images = initial_images(ctx, opts.init)
        if opts.space == "normalized":
            return RawPixelParam(images, self.norm.mean, self.norm.std)
        return RawPixelParam(images)

    def make_optimizer(self, ctx: RunContext[DMOptions], param: ImageParam) -> torch.optim.Optimizer:
        return torch.optim.SGD(param.parameters(), lr=ctx.opts.lr, momentum=ctx.opts.momentum)

    def synset_meta(self, ctx: RunContext[DMOptions]) -> dict:
        return {} if ctx.opts.clamp else {"unbounded": True}

    def loss(self, ctx: RunContext[DMOptions], images: torch.Tensor) -> torch.Tensor:
        opts, c, mine = ctx.opts, ctx.data.num_classes, self.classes
        init_parameters_(self.net, ctx.generator)  # a fresh random network every iteration
        self.net.train()
        real, real_labels = sample_real(self.real, opts.batch_real, ctx.generator, mine)
        u = self.dsa.draw(c, ctx.generator)  # one draw per class, shared by its real and synthetic images
        if not len(mine):  # more ranks than classes: this one adds nothing
            return dist.sum_over_ranks(images[:0].sum())
        rows = class_rows(mine, ctx.config.ipc)
        real_x = self.norm(real.to(ctx.device))
        syn_x, syn_labels = self.norm(images[rows]), self.labels[rows]
        if self.dsa.ops:
            real_x, syn_x = self.dsa.apply(real_x, u[real_labels]), self.dsa.apply(syn_x, u[syn_labels])
        embed_real = lambda x: no_grad_forward(self.net, x, features=True)  # noqa: E731
        real_means = class_feature_means(embed_real, real_x, real_labels, c)
        syn_means = class_feature_means(self.net.embed, syn_x, syn_labels, c, chunk=len(syn_x))
        loss = (real_means - syn_means).pow(2).sum()
        return dist.sum_over_ranks(loss) if self.shares_classes else loss

    def train_step(
        self, ctx: RunContext[DMOptions], param: ImageParam, optimizer: torch.optim.Optimizer, autocast
    ) -> float:
        if ctx.opts.clamp:
            param.project_()
        return super().train_step(ctx, param, optimizer, autocast)
