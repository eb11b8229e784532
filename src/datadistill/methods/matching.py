"""Shared blocks of the pixel-space distribution-matching methods (DM, TGDD): options, the real-image sampler,
initialisation from real images, per-class feature means, and how classes are shared out under torchrun.

Images are raw pixels (``RawPixelParam``) initialised from random real images of each class, optimised by SGD
with momentum on the pixels. Networks see ``InputNorm(x)`` (per-channel normalisation with the real train
split's statistics, grayscale sets as one channel) followed by DSA, as in the official code.

Each class is matched on its own (its real batch, its synthetic images, its DSA draw), so under torchrun every
rank matches a contiguous share of the classes (``rank_classes``). Every rank still makes every random draw of
every class, in the single-process order, so the draws do not depend on the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core import dist
from ..core.errors import ConfigError
from ..core.options import at_least, option
from ..data.augment import DSA, DSA_CODE_STRATEGY, DSA_MODES, default_strategy
from ..data.memory import MemorySplit, in_memory
from ..synset.params import tile_images
from ..training.supervised import InputNorm
from .base import RunContext


@dataclass
class MatchOptions:
    steps: int = option(20000, "outer iterations")
    momentum: float = option(0.5, "SGD momentum on the pixels")
    batch_real: int = option(256, "real images per class per iteration")
    init: str = option(
        "real",
        "initial images: random real ones, noise, or 'mix' (factor^2 downscaled real images tiled; multi-formation)",
        ("real", "noise", "mix"),
    )
    dsa_strategy: str | None = option(
        None,
        "DSA strategy ('none': no augmentation; default: "
        "color_crop_cutout_flip_scale_rotate, without flip on digit datasets)",
    )
    dsa_mode: str = option(
        "one", "DSA operations per draw: all, one (DSA code), idc (flip+color, one geometric, cutout)", DSA_MODES
    )
    width: int | None = option(None, "ConvNet width (default 128)")
    depth: int | None = option(None, "ConvNet depth (default: from the resolution)")
    resolution: int | None = option(None, "size of the synthetic images (default: the dataset's own)")

    def validate(self) -> None:
        if self.steps < 0 or self.batch_real < 1:
            raise ConfigError("--steps must be >= 0 and --batch-real >= 1")
        if not 0 <= self.momentum < 1:
            raise ConfigError("--momentum must lie in [0, 1)")
        at_least(self, 1, "width", "depth", "resolution")
        self.dsa()

    def dsa(self, mirror_safe: bool = True) -> DSA:
        """The DSA of the run; ``mirror_safe`` is the dataset's (``RealData.mirror_safe``)."""
        strategy = self.dsa_strategy or default_strategy(DSA_CODE_STRATEGY, mirror_safe)
        return DSA(strategy, mode=self.dsa_mode)


def real_train(ctx: RunContext[MatchOptions]) -> MemorySplit:
    return in_memory(ctx.data.train, ctx.resolution, ctx.data.num_classes)


def rank_classes(num_classes: int) -> range:
    """The classes this rank matches: a contiguous share under torchrun, every class as one process."""
    return range(num_classes)[dist.part(num_classes)]


def class_rows(classes: range, ipc: int) -> slice:
    """The synthetic set's rows of ``classes`` (IPC images per class, class-major)."""
    return slice(classes.start * ipc, classes.stop * ipc)


def sample_real(
    split: MemorySplit, per_class: int, generator: torch.Generator, classes: range | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` random train images (float, [0, 1]) and their labels, class-major, of ``classes`` (default:
    every class). The indices of every class are drawn whatever ``classes`` holds, so the generator moves on as
    for all of them."""
    drawn = [split.sample_class(c, per_class, generator) for c in range(split.num_classes)]
    classes = classes if classes is not None else range(split.num_classes)
    idx = torch.cat([drawn[c] for c in classes]) if len(classes) else torch.zeros(0, dtype=torch.long)
    return split.batch(idx), split.labels[idx]


def initial_images(ctx: RunContext[MatchOptions], init: str, factor: int = 1) -> torch.Tensor:
    """IPC images per class (class-major) in [0, 1], with the real split's channels."""
    split = real_train(ctx)
    ipc, c = ctx.config.ipc, ctx.data.num_classes
    r = ctx.resolution
    if init == "noise":
        return (torch.randn(c * ipc, split.channels, r, r, generator=ctx.generator) / 4 + 0.5).clamp(0, 1)
    per = ipc * factor * factor if init == "mix" else ipc
    if int(min(len(m) for m in split.by_class)) < per:
        raise ConfigError(f"init '{init}' needs {per} real images per class; a class has fewer")
    images = []
    for cls in range(c):
        x = split.batch(split.sample_class(cls, per, ctx.generator))
        images.append(tile_images(x, factor) if init == "mix" else x)
    return torch.cat(images)


def class_feature_means(
    embed, x: torch.Tensor, labels: torch.Tensor, num_classes: int, chunk: int = 512
) -> torch.Tensor:
    """Per-class means of ``embed(x)`` computed in chunks (for real batches, under no_grad)."""
    sums, counts = None, torch.zeros(num_classes, device=x.device)
    for start in range(0, len(x), chunk):
        z = embed(x[start : start + chunk])
        y = labels[start : start + chunk].to(z.device)
        part = torch.zeros(num_classes, z.shape[1], device=z.device, dtype=z.dtype).index_add(0, y, z)
        sums = part if sums is None else sums + part
        counts = counts + torch.bincount(y, minlength=num_classes).to(counts)
    return sums / counts.clamp(min=1)[:, None]


def norm_for(ctx: RunContext[MatchOptions]) -> InputNorm:
    return InputNorm.of(real_train(ctx))
