import torch

from datadistill.stats import feature_bank, kmeans


def test_feature_bank_means_counts_and_cache(digits, lite0):
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
    other = feature_bank(digits, lite0, "val", crop=40)
    assert other.key != bank.key and lite0.forward_calls > calls


def test_nearest_finds_identical_feature(digits, lite0):
    bank = feature_bank(digits, lite0, "train", crop=32)
    idx = torch.tensor([3, 100, 700])
    queries = bank.tensor(idx)
    found = bank.nearest(queries, digits.train.targets[idx])
    assert torch.equal(found, idx)


def test_kmeans_recovers_blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.3 * torch.randn(50, 2, generator=g) for c in centres])
    found, masses = kmeans(x, 3, seed=1)
    dist = torch.cdist(centres, found).min(dim=1).values
    assert (dist < 0.5).all() and torch.allclose(masses, torch.full((3,), 1 / 3), atol=1e-6)
