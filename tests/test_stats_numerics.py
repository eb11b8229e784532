"""The float16 feature cache's range, and k-means against scikit-learn when Lloyd empties a cluster."""

import numpy as np
import pytest
import torch
from torch import nn

from datadistill.core.errors import DataError
from datadistill.features.backbones import Backbone, BackboneSpec
from datadistill.features.bank import feature_bank
from datadistill.features.kmeans import kmeans, lloyd


def _constant_backbone(name: str, value: float) -> Backbone:
    """A Backbone whose every feature is ``value`` (2-d), whatever the image."""
    spec = BackboneSpec(name, "test", 8, 2, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "none", builder=None)
    return Backbone(spec, nn.Identity(), lambda model, x: torch.full((len(x), 2), value), f"constant {value}")


def test_features_beyond_float16_are_a_clear_error(digits):
    # 1e5 is finite in float32 but inf in the float16 cache: it must be refused, naming the backbone
    with pytest.raises(DataError, match=r"'huge-features'.*1e\+05.*float16"):
        feature_bank(digits, _constant_backbone("huge-features", 1e5), "train", crop=8)
    # the largest magnitudes float16 holds are cached as they are
    bank = feature_bank(digits, _constant_backbone("large-features", -60000.0), "train", crop=8)
    assert np.array_equal(np.unique(bank.features), [-60000.0]) and torch.all(bank.means == -60000.0)


def _inertia(x: torch.Tensor, centers: torch.Tensor) -> float:
    return float(torch.cdist(x.double(), centers.double()).min(dim=1).values.pow(2).sum())


def _blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """Three 2-d blobs and initial centres of which two are nearest to no point (Lloyd's first step empties them)."""
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    x = torch.cat([m + torch.randn(40, 2, generator=g) for m in means])
    init = torch.tensor([[3.0, 3.0], [100.0, 100.0], [-100.0, 100.0]])
    return x, init


def test_lloyd_reseeds_empty_clusters_like_scikit_learn():
    from sklearn.cluster import KMeans

    x, init = _blobs()
    assert torch.cdist(x, init).argmin(dim=1).unique().tolist() == [0]  # clusters 1 and 2 start empty
    centers, masses = lloyd(x, init)
    ref = KMeans(3, init=init.double().numpy(), n_init=1, algorithm="lloyd", tol=0).fit(x.double().numpy())
    np.testing.assert_allclose(centers.numpy(), ref.cluster_centers_, atol=1e-4)
    np.testing.assert_allclose(masses.numpy(), np.bincount(ref.labels_, minlength=3) / len(x), atol=1e-6)
    assert _inertia(x, centers) == pytest.approx(ref.inertia_, rel=1e-4)
    assert (masses > 0).all()
    # the three blobs are found again: every centre near one blob mean
    assert torch.cdist(centers, torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])).min(dim=1).values.max() < 0.5


def test_one_dimensional_relocation_by_hand():
    # points 0 1 2 | 10 11 12, centres 0, 11, 100: 100 is empty; the point farthest from its centre (2, at
    # distance 2 from 0) becomes its centre, then 0 and 1 share 0.5 and 10 11 12 keep 11
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    centers, masses = lloyd(x, torch.tensor([[0.0], [11.0], [100.0]]))
    assert centers.flatten().tolist() == [0.5, 11.0, 2.0]
    assert masses.tolist() == pytest.approx([2 / 6, 3 / 6, 1 / 6])


def test_no_mass_is_zero_while_there_are_k_distinct_points():
    # duplicated points: 4 distinct values, 10 copies each; k = 4 starting from centres that empty clusters
    x = torch.tensor([[0.0], [1.0], [5.0], [9.0]]).repeat(10, 1)
    centers, masses = lloyd(x, torch.tensor([[0.0], [50.0], [60.0], [70.0]]))
    assert (masses > 0).all() and sorted(centers.flatten().tolist()) == [0.0, 1.0, 5.0, 9.0]
    for seed in range(5):  # k-means++ seeding on random data, k up to the number of points
        x = torch.randn(12, 3, generator=torch.Generator().manual_seed(seed))
        for k in (2, 6, 12):
            _, masses = kmeans(x, k, seed=seed)
            assert (masses > 0).all() and masses.sum() == pytest.approx(1.0)
