"""K-means with empty-cluster refill, on the device of its input."""

from __future__ import annotations

import torch

from ..core.errors import DataError


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd k-means with k-means++ seeding. Returns centres (k x F) and masses (k, summing to 1).

    No mass is 0 while ``x`` has at least k distinct points: an emptied cluster is re-seeded (``lloyd``)."""
    if len(x) < k:
        raise DataError(f"k-means with k={k} needs at least {k} points, got {len(x)}")
    g = torch.Generator().manual_seed(seed)
    centers = x[torch.randint(len(x), (1,), generator=g)]
    for _ in range(1, k):
        d2 = torch.cdist(x, centers).min(dim=1).values.pow(2)
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
        centers = torch.cat([centers, x[torch.multinomial(probs, 1, generator=g)]])
    return lloyd(x, centers, iters)


def lloyd(x: torch.Tensor, centers: torch.Tensor, iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd iterations from ``centers``; returns the centres and the masses of their clusters (the centres are
    the means of those clusters). A cluster left empty is re-seeded with a far point (``_fill_empty_clusters``)."""
    k = len(centers)

    def clusters(centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assign = _fill_empty_clusters(x, centers, torch.cdist(x, centers).argmin(dim=1))
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        # A cluster can stay empty only when x has fewer than k distinct points: it keeps its centre.
        return torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers), counts

    for _ in range(iters):
        new, _ = clusters(centers)
        if torch.allclose(new, centers):
            break
        centers = new
    centers, counts = clusters(centers)
    return centers, counts.float() / len(x)


def _fill_empty_clusters(x: torch.Tensor, centers: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Move to each empty cluster the point farthest from its own centre, as scikit-learn relocates empty
    clusters, but only from a cluster that keeps another point, so no cluster empties another. With at least k
    distinct points such a point always exists (a cluster holding two distinct points has one off its centre)."""
    k = len(centers)
    counts = torch.bincount(assign, minlength=k)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if not empty:
        return assign
    assign = assign.clone()
    d2 = (x - centers[assign]).pow(2).sum(dim=1)
    for cluster in empty:
        movable = (counts[assign] > 1) & (d2 > 0)
        if not movable.any():  # fewer distinct points than clusters
            break
        far = int(torch.where(movable, d2, -1.0).argmax())
        counts[assign[far]] -= 1
        counts[cluster] += 1
        assign[far] = cluster
        d2[far] = 0.0  # it is its new cluster's only point
    return assign
