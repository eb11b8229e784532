import json

import pytest
import torch

import datadistill as dd
from datadistill.core.errors import TrainingDiverged
from datadistill.core.io import load_checkpoint
from datadistill.features.bank import feature_bank
from datadistill.methods.sfm import SFM, class_means, non_target_centres

SMALL = {"crop": 32, "grow_every": 5}


def test_random_picks_ipc_train_images_per_class(digits, lite0):
    s = dd.distill("random", "digits", ipc=2, dataset=digits)
    assert len(s) == 20 and torch.equal(torch.bincount(s.labels), torch.full((10,), 2))
    idx = torch.tensor(s.meta["train_indices"])
    assert torch.equal(digits.train.targets[idx], s.labels)
    t = dd.distill("random", "digits", ipc=2, dataset=digits, seed=1)
    assert s.meta["train_indices"] != t.meta["train_indices"]


def test_centroids_pick_nearest_to_class_mean(digits, lite0):
    s = dd.distill("centroids", "digits", ipc=1, dataset=digits, model=lite0, crop=32)
    bank = feature_bank(digits, lite0, "train", crop=32)
    feats = bank.tensor()
    for c, i in enumerate(s.meta["train_indices"]):
        members = torch.nonzero(digits.train.targets == c).flatten()
        best = members[torch.cdist(bank.means[c : c + 1], feats[members]).argmin()]
        assert i == int(best)


def test_flow_formulas():
    mu = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    nu = non_target_centres(mu, 2)
    assert torch.allclose(nu[0], (mu[1] + mu[2]) / 2)
    z = torch.tensor([[1.0, 1.0], [3.0, 1.0], [0.0, 2.0]])
    assert torch.allclose(class_means(z, torch.tensor([0, 0, 1]), 2), torch.tensor([[2.0, 1.0], [0.0, 2.0]]))


def _flow_cosine(synset, digits, lite0):
    from datadistill.data import resize_center_crop

    bank = feature_bank(digits, lite0, "train", crop=32)
    real = non_target_centres(bank.means, 9) - bank.means
    with torch.no_grad():
        z = lite0(resize_center_crop(synset.images, 32, 32))
    s = class_means(z, synset.labels, 10)
    return float(torch.nn.functional.cosine_similarity((non_target_centres(s, 9) - s).flatten(), real.flatten(), dim=0))


def test_sfm_run_directory_and_learning(digits, lite0, tmp_path):
    out = tmp_path / "run"
    s = dd.distill("sfm", "digits", ipc=1, out=out, dataset=digits, model=lite0, steps=40, lr=0.05, **SMALL)
    for name in (
        "config.json",
        "metrics.json",
        "log.txt",
        "report.md",
        "synset/synset.safetensors",
        "synset/grid.png",
        "synset/manifest.json",
        "checkpoints/last.pt",
    ):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())["distill"]
    assert metrics["complete"] and len(metrics["losses"]) == 40
    assert metrics["phases"]["distill"]["seconds_per_step"] > 0
    config = json.loads((out / "config.json").read_text())
    assert "efficientnet-lite0" in config["resolved"]["backbone_weights"]
    untrained = dd.distill("sfm", "digits", ipc=1, dataset=digits, model=lite0, steps=0, **SMALL)
    assert _flow_cosine(s, digits, lite0) > _flow_cosine(untrained, digits, lite0) + 0.05


def test_sfm_decoupled_and_ipc2(digits, lite0):
    # the loss itself is checked by hand in test_losses.py; here the run: class-major labels, and the decoupled
    # loss moves the images (a loss without gradient to the pixels would leave the start unchanged)
    opts = dict(ipc=2, dataset=digits, model=lite0, decouple_alpha=1.0, **SMALL)
    s = dd.distill("sfm", "digits", steps=3, **opts)
    start = dd.distill("sfm", "digits", steps=0, **opts)
    assert s.labels.tolist() == [c for c in range(10) for _ in range(2)] and s.ipc == 2
    assert (s.images - start.images).abs().max() > 1e-3


def test_resume_after_kill_matches_uninterrupted(digits, lite0, tmp_path, monkeypatch):
    opts = dict(ipc=1, dataset=digits, model=lite0, steps=20, checkpoint_every=5, lr=0.05, **SMALL)
    reference = dd.distill("sfm", "digits", out=tmp_path / "ref", **opts)
    calls = {"n": 0}
    original = SFM.loss

    def dying(self, ctx, images):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return original(self, ctx, images)

    monkeypatch.setattr(SFM, "loss", dying)
    with pytest.raises(KeyboardInterrupt):
        dd.distill("sfm", "digits", out=tmp_path / "run", **opts)
    assert not (tmp_path / "run" / "synset").exists()
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")[0]
    assert saved["step"] == 10
    monkeypatch.setattr(SFM, "loss", original)
    resumed = dd.distill("sfm", "digits", out=tmp_path / "run", **opts)
    assert torch.allclose(resumed.images, reference.images, atol=1e-5)
    ref_losses = json.loads((tmp_path / "ref" / "metrics.json").read_text())["distill"]["losses"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["distill"]
    assert metrics["losses"] == pytest.approx(ref_losses, abs=1e-5)
    # The resumed process ran steps 11-20 only, and its time per step counts those 10.
    phase = metrics["phases"]["distill"]
    assert phase["resumed_at_step"] == 10
    assert phase["seconds_per_step"] == round(phase["seconds"] / 10, 4)


def test_nan_loss_is_a_clear_error(digits, lite0, monkeypatch, tmp_path):
    monkeypatch.setattr(SFM, "loss", lambda self, ctx, images: images.sum() * float("nan"))
    with pytest.raises(TrainingDiverged, match="step 1"):
        dd.distill("sfm", "digits", out=tmp_path / "run", dataset=digits, model=lite0, steps=5, **SMALL)
    assert not (tmp_path / "run" / "synset").exists()


def test_changed_config_is_refused(digits, lite0, tmp_path):
    from datadistill.core.errors import ConfigError

    dd.distill("sfm", "digits", out=tmp_path / "run", dataset=digits, model=lite0, steps=2, **SMALL)
    with pytest.raises(ConfigError, match="steps"):
        dd.distill("sfm", "digits", out=tmp_path / "run", dataset=digits, model=lite0, steps=3, **SMALL)
