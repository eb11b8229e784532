"""What a method sees (``RunContext``) and what it must provide. Methods never open files or print.

A method declares its options as a dataclass (``Options``); the API and CLI expose every field. The shared
option sets live here: ``BackboneOptions`` (a frozen feature extractor) and ``PixelOptions`` (pixel / pyramid
optimisation through one, as in LGM and SFM).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, TypeVar

import torch

from ..core import dist
from ..core.config import DistillConfig
from ..core.options import at_least, option, positive
from ..core.progress import log
from ..core.registry import Registry
from ..data import RealData, iter_batches
from ..features.backbones import Backbone, load_backbone
from ..features.bank import FeatureBank, feature_bank, resize_for
from ..synset.params import ImageParam, make_param
from ..synset.set import SyntheticSet


@dataclass
class NoOptions:
    resolution: int | None = option(None, "size of the saved images (default: the dataset's own)")

    def validate(self) -> None:
        at_least(self, 1, "resolution")


@dataclass
class BackboneOptions:
    backbone: str = option("efficientnet_lite0", "frozen feature extractor (see `datadistill list backbones`)")
    weights: str | None = option(None, "local weights file or folder for the backbone")
    crop: int | None = option(None, "backbone input size (default: the backbone's own)")
    resolution: int | None = option(
        None, "size of the saved images (default: the dataset's own, or crop x 256/224 for optimised images)"
    )

    def validate(self) -> None:
        at_least(self, 1, "crop", "resolution")


# From noise the pyramid gains one level per --grow-every steps (1, 2, 4, ... px): by step 1000 it has had fine
# detail for a few hundred steps at most, and runs of 300 steps from noise stayed below random real images.
NOISE_MIN_STEPS = 1000


@dataclass
class PixelOptions(BackboneOptions):
    steps: int = option(
        5000,
        "optimisation steps (default: 5000, the papers' budget: at crop 224, IPC 1 and 10 classes on a 2-core CPU "
        "about 45 min with 1 view per step, the SFM default, and some 20 times longer with LGM's 10 views; from "
        f"noise, fewer than {NOISE_MIN_STEPS} steps give near-chance sets: start short runs from --init centroids)",
    )
    lr: float = option(2e-3, "Adam learning rate on the image parameters")
    augs: int = option(1, "augmented views of the synthetic set per step (A)")
    param: str = option("pyramid", "image parameterisation", ("pyramid", "pixel"))
    init: str = option(
        "noise",
        "start from noise (the papers; needs the full --steps budget), random real images, or the Centroids images "
        f"(good sets in a few hundred steps; use one of these two below {NOISE_MIN_STEPS} steps)",
        ("noise", "real", "centroids"),
    )
    grow_every: int = option(200, "pyramid: add a level every N steps")
    decorrelate: bool = option(True, "colour decorrelation of the parameterisation")
    noise_mean: float = option(
        0.0, "mean of the augmentation's additive noise (0 as in LGM's released code; its earlier releases used 0.5)"
    )
    view_chunk: int = option(
        0,
        "embed the synthetic views this many at a time and recompute each chunk's activations in the backward "
        "(activation checkpointing): the step holds one chunk's activations instead of all C x IPC x A views' "
        "(100 views at crop 224 on a CPU, chunks of 10: peak 9.3 -> 2.3 GB, and faster); 0: all at once. The "
        "result is the same up to float rounding, so a run may resume with another value",
    )

    def validate(self) -> None:
        super().validate()
        at_least(self, 0, "steps", "view_chunk")
        at_least(self, 1, "augs", "grow_every")
        positive(self, "lr")


# Covariant: a RunContext[SFMOptions] is a RunContext[PixelOptions], so shared blocks take the options they read.
ContextOptionsT = TypeVar("ContextOptionsT", covariant=True)
OptionsT = TypeVar("OptionsT")


@dataclass
class RunContext(Generic[ContextOptionsT]):
    """Everything one run of a method sees, typed by the method's options: ``RunContext[SFMOptions]``."""

    config: DistillConfig
    opts: ContextOptionsT
    data: RealData
    device: torch.device
    method: Method
    generator: torch.Generator = field(default_factory=torch.Generator)
    model: Backbone | None = None  # an already loaded backbone (API callers, the demo, benchmarks)

    @cached_property
    def backbone(self: RunContext[BackboneOptions]) -> Backbone:
        if self.model is not None and self.model.name == self.opts.backbone:
            return self.model.to(self.device)
        return load_backbone(self.opts.backbone, self.opts.weights, self.device)

    @property
    def crop(self: RunContext[BackboneOptions]) -> int:
        return self.opts.crop or self.backbone.input_size

    @property
    def resolution(self) -> int:
        return getattr(self.opts, "resolution", None) or self.method.default_resolution(self)

    @cached_property
    def stats(self: RunContext[BackboneOptions]) -> FeatureBank:
        """Train-split features and class statistics through the distillation backbone (cached on disk)."""
        return feature_bank(self.data, self.backbone, "train", crop=self.crop, device=self.device)

    def real_images(self, indices: torch.Tensor) -> torch.Tensor:
        """Train images at the synthetic resolution (resize + center crop)."""
        return torch.cat(list(self.real_batches(indices)))

    def real_batches(self, indices: torch.Tensor, batch_size: int = 256) -> Iterator[torch.Tensor]:
        """``real_images`` in batches of ``batch_size``, in order, decoded by the data loader's workers."""
        r = self.resolution
        for batch in iter_batches(self.data.train, batch_size, r, r, indices=indices):
            yield batch.images

    def synset(self, images: torch.Tensor, labels: torch.Tensor, **meta) -> SyntheticSet:
        meta = {"method": self.config.method, "dataset": self.data.name, "ipc": self.config.ipc, **meta}
        if isinstance(self.opts, BackboneOptions):
            meta.update(backbone=self.backbone.name, backbone_weights=self.backbone.weights, crop=self.crop)
        return SyntheticSet(images, labels, list(self.data.classes), meta)

    def initial_param(self: RunContext[PixelOptions]) -> ImageParam:
        """The parameterisation the options ask for, started from noise or from selected real images."""
        opts = self.opts
        init = None
        if opts.init == "noise" and opts.steps < NOISE_MIN_STEPS and dist.is_main():
            log.warning(
                "%s from noise with %d steps will give a near-chance set (the papers run 5000; below %d from noise "
                "is too few): for a short run, start from --init centroids or --init real",
                self.config.method,
                opts.steps,
                NOISE_MIN_STEPS,
            )
        if opts.init != "noise":
            init = get_method("random" if opts.init == "real" else "centroids").select(self).images
        return make_param(
            opts.param,
            self.data.num_classes * self.config.ipc,
            self.resolution,
            self.generator,
            opts.grow_every,
            opts.decorrelate,
            init_images=init,
        )

    def class_labels(self) -> torch.Tensor:
        """Labels of the synthetic set: IPC images per class, class-major."""
        return torch.arange(self.data.num_classes).repeat_interleave(self.config.ipc)


class Method(Generic[OptionsT]):
    """Base class, generic in its options type. Selection methods implement ``select``; step-wise methods
    (``stepwise``: run by the engine's resumable loop) ``init_param`` and ``loss``, or ``train_step`` when one
    step is more than one loss and one optimizer update."""

    name: str = ""
    summary: str = ""
    Options: type[OptionsT] = NoOptions
    stepwise: bool = False
    needs_stats: bool = False
    step_unit: str = "step"  # what one engine step is, in logs and the progress bar
    progress_name: str = "loss"  # what ``train_step`` returns, in logs, the progress bar and errors

    def resolve(self, opts: OptionsT) -> OptionsT:
        """Fill option defaults that depend on other inputs (saved resolved in the run's config)."""
        return opts

    def default_resolution(self, ctx: RunContext[OptionsT]) -> int:
        if self.stepwise and isinstance(ctx.opts, BackboneOptions):
            return resize_for(ctx.crop)
        return ctx.data.native_size

    def steps(self, ctx: RunContext[OptionsT]) -> int:
        return ctx.opts.steps

    def synset_meta(self, ctx: RunContext[OptionsT]) -> dict:
        """What an evaluator needs to know about the optimised images, saved with the set (not the run)."""
        return {}

    def select(self, ctx: RunContext[OptionsT]) -> SyntheticSet:
        raise NotImplementedError

    def init_param(self, ctx: RunContext[OptionsT]) -> ImageParam:
        raise NotImplementedError

    def make_optimizer(self, ctx: RunContext[OptionsT], param: ImageParam) -> torch.optim.Optimizer | None:
        """The optimizer of the step-wise methods that optimise (None: nothing is optimised)."""
        return torch.optim.Adam(param.parameters(), lr=ctx.opts.lr)

    def loss(self, ctx: RunContext[OptionsT], images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_step(
        self, ctx: RunContext[OptionsT], param: ImageParam, optimizer: torch.optim.Optimizer | None, autocast: Any
    ) -> float:
        """One step; returns its value, a loss by default (the engine stops the run if it is not finite)."""
        assert optimizer is not None, "the default step optimises: make_optimizer must return an optimizer"
        with autocast:
            loss = self.loss(ctx, param.render())
        value = float(loss.detach())
        if torch.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            dist.average_gradients(param.parameters())
            optimizer.step()
        return value


METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: register a method under its ``name``."""
    return METHODS.register(cls.name, cls)


def get_method(name: str) -> Method:
    return METHODS.get(name)()
