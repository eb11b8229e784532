"""A split held in memory as uint8 at one resolution, for methods and protocols that sample real batches every
step (DM, TGDD, expert training, from-scratch evaluation). Built once per (split, resolution) and process;
grayscale sets stay single-channel (a third of the memory; the networks take one channel for them)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import cached_property

import torch

from .datasets import LabelledImages, TensorImages, iter_batches, resize_center_crop

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class MemorySplit:
    images: torch.Tensor  # uint8 N x C x R x R, C = 1 (grayscale source) or 3
    labels: torch.Tensor
    num_classes: int
    _stats: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def batch(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Float images in [0, 1] (all of them when ``indices`` is None)."""
        x = self.images if indices is None else self.images[indices]
        return x.float().div_(255.0)

    @cached_property
    def by_class(self) -> list[torch.Tensor]:
        return [torch.nonzero(self.labels == c).flatten() for c in range(self.num_classes)]

    def sample_class(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` indices of class ``c`` drawn without replacement (all of them if the class is smaller)."""
        members = self.by_class[c]
        if n >= len(members):
            return members[torch.randperm(len(members), generator=generator)]
        return members[torch.randperm(len(members), generator=generator)[:n]]

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the pixels in [0, 1] (the normalisation of the ConvNet protocols)."""
        if not self._stats:
            total = torch.zeros(self.channels, dtype=torch.float64)
            sq = torch.zeros(self.channels, dtype=torch.float64)
            for start in range(0, len(self), 4096):
                x = self.batch(torch.arange(start, min(start + 4096, len(self)))).double()
                total += x.sum(dim=(0, 2, 3))
                sq += x.pow(2).sum(dim=(0, 2, 3))
            count = len(self) * self.images.shape[2] * self.images.shape[3]
            mean = total / count
            std = (sq / count - mean**2).clamp(min=1e-12).sqrt()
            self._stats.update(mean=mean.float(), std=std.float())
        return self._stats["mean"], self._stats["std"]


def in_memory(split: LabelledImages, resolution: int, num_classes: int) -> MemorySplit:
    """``split`` at ``resolution`` (resize + center crop) as uint8 in memory; cached for the split's lifetime."""
    per_split = _CACHE.setdefault(split, {})
    if resolution in per_split:
        return per_split[resolution]
    native = isinstance(split, TensorImages) and tuple(split.images.shape[-2:]) == (resolution, resolution)
    if native:
        images = split.images
    elif isinstance(split, TensorImages):
        images = torch.cat(
            [
                (resize_center_crop(split.images[i : i + 1024].float(), resolution, resolution))
                .round()
                .clamp(0, 255)
                .to(torch.uint8)
                for i in range(0, len(split), 1024)
            ]
        )
    else:  # image files arrive as uint8 (decoded by loader workers); other datasets as float
        images = None
        for b in iter_batches(split, 256, resolution, resolution, keep_uint8=True):
            x = b.images if b.images.dtype == torch.uint8 else b.images.mul(255).round().clamp(0, 255).to(torch.uint8)
            if images is None:
                images = torch.empty((len(split), *x.shape[1:]), dtype=torch.uint8)
            images[b.indices] = x
        if images is None:  # an empty split
            images = torch.empty((0, 3, resolution, resolution), dtype=torch.uint8)
    per_split[resolution] = MemorySplit(images, split.targets.clone(), num_classes)
    return per_split[resolution]
