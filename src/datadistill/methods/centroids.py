"""Centroids: per class, the real image nearest (L2, backbone features) to the class mean; for IPC > 1,
the real images nearest to the centres of a k-means with k = IPC."""

from __future__ import annotations

from ..synset.set import SyntheticSet
from .base import BackboneOptions, Method, RunContext, register


@register
class Centroids(Method[BackboneOptions]):
    name = "centroids"
    summary = "per class, the real images nearest the class mean (k-means centres for IPC > 1) in backbone features"
    Options = BackboneOptions
    needs_stats = True

    def select(self, ctx: RunContext[BackboneOptions]) -> SyntheticSet:
        bank, ipc = ctx.stats, ctx.config.ipc
        targets = bank.means if ipc == 1 else bank.kmeans(ipc, seed=ctx.config.seed)[0].flatten(0, 1)
        labels = ctx.class_labels()
        indices = bank.nearest(targets, labels, metric="l2")
        return ctx.synset(ctx.real_images(indices), labels, train_indices=indices.tolist())
