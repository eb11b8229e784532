"""Set-level metrics of a synthetic set that need no training.

Mode coverage (docs/methods/pgfm.md, the proposed definition for PGFM's "78 % mode coverage"): assign every generated
latent to the nearest of its class's K_eval k-means centres of the real latents; a class's coverage is the
fraction of its K_eval clusters hit at least once; the metric is the mean over classes.
"""

from __future__ import annotations

import torch


def mode_coverage(latents: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor) -> dict:
    """Coverage of ``centres`` (C x K x F real k-means centres per class) by ``latents`` (N x F) of classes
    ``labels`` (N,). Returns ``{"mean": float, "per_class": [float] * C, "k": K}``; a class without any
    sample has coverage 0."""
    latents = latents.flatten(1).float()
    num_classes, k, _ = centres.shape
    per_class = []
    for c in range(num_classes):
        mine = latents[labels == c]
        if len(mine) == 0:
            per_class.append(0.0)
            continue
        hits = torch.cdist(mine, centres[c].float()).argmin(dim=1).unique()
        per_class.append(len(hits) / k)
    return {"mean": sum(per_class) / num_classes, "per_class": per_class, "k": k}
