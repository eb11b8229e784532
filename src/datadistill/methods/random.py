"""Random real images: IPC images per class drawn uniformly (the floor every method must beat)."""

from __future__ import annotations

import torch

from ..synset.set import SyntheticSet
from .base import Method, NoOptions, RunContext, register


@register
class RandomReal(Method[NoOptions]):
    name = "random"
    summary = "IPC real training images per class, drawn uniformly (redraw with --seed)"

    def select(self, ctx: RunContext[NoOptions]) -> SyntheticSet:
        g = torch.Generator().manual_seed(ctx.config.seed)
        targets = ctx.data.train.targets
        picks = []
        for c in range(ctx.data.num_classes):
            members = torch.nonzero(targets == c).flatten()
            picks.append(members[torch.randperm(len(members), generator=g)[: ctx.config.ipc]])
        indices = torch.cat(picks)
        return ctx.synset(ctx.real_images(indices), targets[indices], train_indices=indices.tolist())
