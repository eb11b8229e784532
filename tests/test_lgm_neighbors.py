import pytest
import torch

import datadistill as dd
from datadistill.core.errors import ConfigError
from datadistill.features.bank import feature_bank
from datadistill.methods.lgm import head_gradient_autograd, head_gradient_closed_form

SMALL = {"crop": 32, "grow_every": 5}


def test_closed_form_head_gradient_matches_autograd_and_its_derivative():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 7, generator=g, requires_grad=True)
    labels = torch.randint(3, (12,), generator=g)
    weight, bias = torch.randn(3, 7, generator=g) * 0.01, torch.zeros(3)
    target = torch.randn(3 * 7 + 3, generator=g)
    closed = head_gradient_closed_form(z, labels, weight, bias)
    auto = head_gradient_autograd(z, labels, weight, bias)
    assert torch.allclose(closed, auto, atol=1e-7)
    # The meta-gradient w.r.t. the features (what reaches the images) agrees too.
    (d_closed,) = torch.autograd.grad(1 - torch.cosine_similarity(closed, target, dim=0), z)
    (d_auto,) = torch.autograd.grad(1 - torch.cosine_similarity(auto, target, dim=0), z)
    assert torch.allclose(d_closed, d_auto, atol=1e-6) and d_closed.abs().sum() > 0


def test_lgm_both_gradients_give_the_same_run(digits, lite0):
    opts = dict(ipc=1, dataset=digits, model=lite0, steps=3, augs=2, lr=0.01, **SMALL)
    closed = dd.distill("lgm", "digits", grad="closed-form", **opts)
    auto = dd.distill("lgm", "digits", grad="autograd", **opts)
    assert torch.allclose(closed.images, auto.images, atol=1e-4)
    assert not torch.allclose(closed.images, dd.distill("lgm", "digits", **{**opts, "steps": 0}).images)


def test_lgm_matches_real_gradients_better_after_training(digits, lite0, tmp_path):
    # The default real batch (IPC x A x C = 20 images) makes the per-step loss too noisy to compare
    # across a short run; 160 real images per step give a clear trend.
    out = tmp_path / "lgm"
    dd.distill(
        "lgm", "digits", out=out, ipc=1, dataset=digits, model=lite0, steps=40, augs=2, lr=0.1, real_batch=160, **SMALL
    )
    import json

    losses = json.loads((out / "metrics.json").read_text())["distill"]["losses"]
    assert len(losses) == 40 and all(0 <= x <= 2 for x in losses)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.03


def test_lgm_rejects_bad_options(digits):
    with pytest.raises(ConfigError, match="grad"):
        dd.distill("lgm", "digits", dataset=digits, grad="finite-differences")
    with pytest.raises(ConfigError, match="no option"):
        dd.distill("lgm", "digits", dataset=digits, flow_norm="classes")


def test_neighbors_pick_the_most_cosine_similar_real_image(digits, lite0, tmp_path):
    source = dd.distill("sfm", "digits", out=tmp_path / "sfm", dataset=digits, model=lite0, steps=2, **SMALL)
    picked = dd.distill("neighbors", "digits", dataset=digits, model=lite0, source=str(tmp_path / "sfm"))
    assert torch.equal(picked.labels, source.labels) and picked.meta["backbone"] == "efficientnet_lite0"
    assert picked.meta["crop"] == 32
    bank = feature_bank(digits, lite0, "train", crop=32)
    from datadistill.data import resize_center_crop

    with torch.no_grad():
        q = torch.nn.functional.normalize(lite0(resize_center_crop(source.images, 37, 32)), dim=1)
    feats = torch.nn.functional.normalize(bank.tensor(), dim=1)
    for i, (idx, y) in enumerate(zip(picked.meta["train_indices"], source.labels.tolist(), strict=True)):
        members = torch.nonzero(digits.train.targets == y).flatten()
        best = members[(feats[members] @ q[i]).argmax()]
        assert idx == int(best)


def test_neighbors_of_real_images_are_themselves(digits, lite0, tmp_path):
    real = dd.distill("centroids", "digits", out=tmp_path / "c", dataset=digits, model=lite0, crop=32)
    again = dd.distill("neighbors", "digits", dataset=digits, model=lite0, source=str(tmp_path / "c"))
    assert again.meta["train_indices"] == real.meta["train_indices"]


def test_neighbors_needs_a_source_and_matching_ipc(digits, lite0, tmp_path):
    with pytest.raises(ConfigError, match="source"):
        dd.distill("neighbors", "digits", dataset=digits)
    dd.distill("centroids", "digits", out=tmp_path / "c", dataset=digits, model=lite0, crop=32)
    with pytest.raises(ConfigError, match="--ipc 1"):
        dd.distill("neighbors", "digits", ipc=2, dataset=digits, model=lite0, source=str(tmp_path / "c"))


def test_neighbors_inherit_the_source_runs_backbone_weights(digits, lite0, tmp_path):
    import json

    from datadistill.methods.neighbors import Neighbors, NeighborsOptions

    dd.distill("centroids", "digits", out=tmp_path / "c", dataset=digits, model=lite0, crop=32)
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["distill"]["options"]["weights"] is None
    config["distill"]["options"]["weights"] = "/weights/lite0-finetuned.pth"  # as if run with --weights
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    inherited = Neighbors().resolve(NeighborsOptions(source=str(tmp_path / "c")))
    assert (inherited.backbone, inherited.weights, inherited.crop) == (
        "efficientnet_lite0",
        "/weights/lite0-finetuned.pth",
        32,
    )
    given = Neighbors().resolve(NeighborsOptions(source=str(tmp_path / "c"), weights="/weights/mine.pth"))
    assert given.weights == "/weights/mine.pth"
    other = Neighbors().resolve(NeighborsOptions(source=str(tmp_path / "c"), backbone="resnet18"))
    assert other.weights is None  # another backbone does not take the source's weights


def test_lgm_real_gradient_in_chunks_equals_one_batch(digits, lite0, monkeypatch):
    from datadistill import api
    from datadistill.methods import lgm

    ctx = api.build_context(api.make_config("lgm", "digits", 1, crop=32, augs=2), digits, lite0)
    method = ctx.method
    method.init_param(ctx)  # a real batch of IPC x A x C = 20 images
    weight = torch.randn(10, lite0.feat_dim, generator=torch.Generator().manual_seed(1)) * 0.01
    gradients = {}
    for chunk in (256, 7):  # one batch; three chunks, the last one short
        monkeypatch.setattr(lgm, "REAL_CHUNK", chunk)
        ctx.generator.manual_seed(5)
        gradients[chunk] = method.real_gradient(ctx, weight, torch.zeros(10))
    assert torch.allclose(gradients[7], gradients[256], atol=1e-6)
    assert gradients[7].abs().sum() > 0
