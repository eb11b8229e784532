import numpy as np
import pytest
import torch

from datadistill.features.bank import feature_bank
from datadistill.features.kmeans import kmeans


def test_feature_bank_means_counts_and_cache(digits, lite0, tmp_path, monkeypatch):
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path))  # an empty cache, whatever other tests computed
    bank = feature_bank(digits, lite0, "train", crop=32)
    feats = bank.tensor()
    assert feats.shape == (len(digits.train), 1280)
    assert torch.equal(bank.counts, torch.bincount(digits.train.targets, minlength=10))
    for c in range(10):
        assert torch.allclose(bank.means[c], feats[digits.train.targets == c].mean(0), atol=1e-2)
    calls = lite0.forward_calls
    again = feature_bank(digits, lite0, "train", crop=32)
    assert lite0.forward_calls == calls, "a cache hit must not run the backbone"
    assert again.key == bank.key and torch.equal(again.means, bank.means)
    # the split and the crop each make a cache entry of their own
    val = feature_bank(digits, lite0, "val", crop=32)
    assert val.key != bank.key and lite0.forward_calls > calls and len(val.labels) == len(digits.val)
    calls = lite0.forward_calls
    larger = feature_bank(digits, lite0, "val", crop=40)
    assert larger.key not in (bank.key, val.key) and lite0.forward_calls > calls
    assert not torch.allclose(larger.means, val.means, atol=1e-2)


def _nearest_by_numpy(bank_feats, bank_labels, queries, classes, metric):
    """Brute force: for each query, the index of the same-class bank row at the smallest L2 / largest cosine."""
    out = []
    for q, c in zip(queries, classes, strict=True):
        members = np.flatnonzero(bank_labels == c)
        rows = bank_feats[members]
        if metric == "cos":
            score = rows @ q / (np.linalg.norm(rows, axis=1) * np.linalg.norm(q))
            out.append(members[np.argmax(score)])
        else:
            out.append(members[np.argmin(((rows - q) ** 2).sum(axis=1))])
    return out


@pytest.mark.parametrize("metric", ["l2", "cos"])
def test_nearest_matches_brute_force_within_the_class(digits, lite0, metric):
    bank = feature_bank(digits, lite0, "train", crop=32)
    queries = feature_bank(digits, lite0, "val", crop=32)  # other images: none is its own nearest neighbour
    idx = torch.arange(0, len(digits.val), 7)
    q = queries.tensor(idx)
    # half of the queries are asked for another class than their own: the answer must come from that class
    classes = digits.val.targets[idx].clone()
    classes[::2] = (classes[::2] + 3) % 10
    found = bank.nearest(q, classes, metric=metric)
    feats, labels = bank.tensor().double().numpy(), bank.labels.numpy()
    expected = _nearest_by_numpy(feats, labels, q.double().numpy(), classes.numpy(), metric)
    assert found.tolist() == [int(i) for i in expected]
    assert torch.equal(bank.labels[found], classes)


def test_kmeans_recovers_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.3 * torch.randn(50, 2, generator=g) for c in centres])
    found, masses = kmeans(x, 3, seed=1)
    dist = torch.cdist(centres, found).min(dim=1).values
    assert (dist < 0.5).all() and torch.allclose(masses, torch.full((3,), 1 / 3), atol=1e-6)
