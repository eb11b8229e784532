"""A split held in memory as uint8 at one resolution, for methods and protocols that sample real batches every
step (DM, TGDD, expert training, from-scratch evaluation). Built once per (split, resolution) and process;
grayscale sets stay single-channel (a third of the memory; the networks take one channel for them)."""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..core.errors import DataError
from ..core.io import cache_root, write_json
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
            mean, std = channel_moments(self.images[start : start + 4096] for start in range(0, len(self), 4096))
            self._stats.update(mean=mean, std=std)
        return self._stats["mean"], self._stats["std"]


class StreamedSplit:
    """A split read batch by batch as the pixels ``in_memory`` would hold, none of it kept (for single passes such
    as testing); ``batch`` and ``labels`` as in ``MemorySplit``."""

    def __init__(self, split: LabelledImages, resolution: int, num_classes: int):
        self.split, self.resolution, self.num_classes = split, resolution, num_classes
        self.labels = split.targets

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """Float images in [0, 1] (all of them when ``indices`` is None)."""
        indices = torch.arange(len(self)) if indices is None else indices
        return in_memory(self.split.subset(indices), self.resolution, self.num_classes).batch()


def channel_moments(batches: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (float32) of uint8 image batches read as pixels in [0, 1], as ``MemorySplit.batch``
    gives them; the sums are float64."""
    total = sq = None
    count = 0
    for images in batches:
        x = images.float().div_(255.0).double()
        if total is None:
            total, sq = x.new_zeros(x.shape[1]), x.new_zeros(x.shape[1])
        total += x.sum(dim=(0, 2, 3))
        sq += x.pow(2).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if not count:
        raise DataError("no images to compute the per-channel mean and std of")
    mean = total / count
    std = (sq / count - mean**2).clamp(min=1e-12).sqrt()
    return mean.float(), std.float()


CHANNEL_STATS_CHUNK_BYTES = 128 * 2**20  # pixels held at a time by the streaming pass


def channel_stats(split: LabelledImages, resolution: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``in_memory(split, resolution, num_classes).channel_stats()`` without holding the split: one pass over
    chunks of about 128 MB of the same uint8 pixels, cached on disk by the split's fingerprint and the resolution
    (a split this process already holds at that resolution is read directly)."""
    held = _CACHE.get(split, {}).get(resolution)
    if held is not None:
        return held.channel_stats()
    ident = {"split": split.fingerprint(), "resolution": resolution, "pixels": "uint8 resize + center crop", "v": 1}
    key = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_root() / "channel_stats" / f"{key}.json"
    if path.exists():
        saved = json.loads(path.read_text())
        return torch.tensor(saved["mean"]), torch.tensor(saved["std"])
    n, chunk = len(split), max(1, CHANNEL_STATS_CHUNK_BYTES // (3 * resolution * resolution))
    mean, std = channel_moments(
        in_memory(split.subset(torch.arange(start, min(start + chunk, n))), resolution, num_classes).images
        for start in range(0, n, chunk)
    )
    write_json(path, {"mean": mean.tolist(), "std": std.tolist(), "resolution": resolution, "images": n})
    return mean, std


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
