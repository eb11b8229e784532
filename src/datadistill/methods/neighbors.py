"""Neighbors: for every image of a synthetic set, the same-class real training image with the highest cosine
similarity in the distillation backbone's features (docs/methods/baselines.md). It asks how much of a distilled set's
value a real image in the same place would keep."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..core import layout
from ..core.errors import ConfigError, DataError
from ..core.options import option
from ..data import resize_center_crop
from ..features.bank import resize_for
from ..synset.set import SyntheticSet
from .base import BackboneOptions, Method, RunContext, register


@dataclass
class NeighborsOptions(BackboneOptions):
    source: str | None = option(
        None,
        "the synthetic set to find neighbours for: a run directory, a synset folder or a folder of PNGs (required)",
    )
    backbone: str | None = option(None, "feature extractor (default: the source run's distillation backbone)")

    def validate(self) -> None:
        super().validate()
        if not self.source:
            raise ConfigError("neighbors needs --source RUN (the synthetic set whose neighbours to pick)")


@register
class Neighbors(Method[NeighborsOptions]):
    name = "neighbors"
    summary = "for each image of a distilled set (--source), the nearest same-class real image (cosine features)"
    Options = NeighborsOptions
    needs_stats = True

    def resolve(self, opts: NeighborsOptions) -> NeighborsOptions:
        """Backbone, weights and crop default to the ones the source set was distilled with."""
        meta = SyntheticSet.load(opts.source).meta
        if opts.backbone is None and not meta.get("backbone"):
            raise ConfigError(f"{opts.source} does not say which backbone made it: pass --backbone")
        if opts.backbone in (None, meta.get("backbone")):
            weights = opts.weights or _source_weights(Path(opts.source))
            return replace(opts, backbone=meta["backbone"], weights=weights, crop=opts.crop or meta.get("crop"))
        return opts

    def select(self, ctx: RunContext[NeighborsOptions]) -> SyntheticSet:
        source = SyntheticSet.load(ctx.opts.source)
        if list(source.classes) != list(ctx.data.classes):
            raise DataError(f"{ctx.opts.source} was not distilled from '{ctx.data.name}' (its classes differ)")
        if source.ipc != ctx.config.ipc:
            raise ConfigError(f"{ctx.opts.source} has {source.ipc} images per class: pass --ipc {source.ipc}")
        crop = ctx.crop
        with torch.inference_mode():
            queries = torch.cat(
                [
                    ctx.backbone(resize_center_crop(chunk, resize_for(crop), crop).to(ctx.device)).cpu()
                    for chunk in source.images.split(100)
                ]
            )
        indices = ctx.stats.nearest(queries, source.labels, metric="cos")
        return ctx.synset(
            ctx.real_images(indices), source.labels, train_indices=indices.tolist(), source=str(ctx.opts.source)
        )


def _source_weights(source: Path) -> str | None:
    """The ``--weights`` a source run directory was distilled with (None for a set folder or default weights)."""
    config = source / layout.RUN_CONFIG
    if not config.is_file():
        return None
    return json.loads(config.read_text()).get("distill", {}).get("options", {}).get("weights")
