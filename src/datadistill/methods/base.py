"""What a method sees (``RunContext``) and what it must provide. Methods never open files or print."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..config import DistillConfig
from ..data import RealData, iter_batches
from ..errors import ConfigError
from ..models.backbones import Backbone
from ..stats import FeatureBank, feature_bank, resize_for
from ..synset import ImageParam, SyntheticSet, make_param


@dataclass
class RunContext:
    config: DistillConfig
    data: RealData
    backbone: Backbone
    device: torch.device
    generator: torch.Generator = field(default_factory=torch.Generator)

    @property
    def crop(self) -> int:
        return self.config.crop or self.backbone.input_size

    @property
    def resolution(self) -> int:
        return self.config.resolution or resize_for(self.crop)

    @cached_property
    def stats(self) -> FeatureBank:
        """Train-split features and class statistics through the distillation backbone (cached on disk)."""
        return feature_bank(self.data, self.backbone, "train", crop=self.crop, device=self.device)

    def real_images(self, indices: torch.Tensor) -> torch.Tensor:
        """Train images at the synthetic resolution (resize + center crop), for real-image baselines."""
        r = self.resolution
        return torch.cat([b.images for b in iter_batches(self.data.train, 256, r, r, indices=indices)])

    def synset(self, images: torch.Tensor, labels: torch.Tensor, **meta) -> SyntheticSet:
        meta = {"method": self.config.method, "dataset": self.data.name, "backbone": self.backbone.name,
                "backbone_weights": self.backbone.weights, "ipc": self.config.ipc, "crop": self.crop, **meta}
        return SyntheticSet(images, labels, list(self.data.classes), meta)

    def initial_param(self) -> ImageParam:
        """The parameterisation the config asks for, started from noise or from selected real images."""
        from . import get_method

        cfg = self.config
        init = None
        if cfg.init != "noise":
            selector = get_method("random" if cfg.init == "real" else "centroids")
            init = selector.select(self).images
        return make_param(cfg.param, self.data.num_classes * cfg.ipc, self.resolution, self.generator,
                          cfg.grow_every, cfg.decorrelate, init_images=init)

    def class_labels(self) -> torch.Tensor:
        """Labels of the synthetic set: IPC images per class, class-major."""
        return torch.arange(self.data.num_classes).repeat_interleave(self.config.ipc)


class Method:
    """Base class. Selection methods implement ``select``; optimisation methods ``init_param`` and ``loss``."""

    name: str = ""
    optimises: bool = False
    needs_stats: bool = False

    def select(self, ctx: RunContext) -> SyntheticSet:
        raise NotImplementedError

    def init_param(self, ctx: RunContext) -> ImageParam:
        raise NotImplementedError

    def loss(self, ctx: RunContext, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'. Known: {', '.join(sorted(METHODS))}")
    return METHODS[name]()
