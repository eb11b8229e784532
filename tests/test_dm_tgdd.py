import json

import numpy as np
import pytest
import torch

import datadistill as dd
from datadistill.core.errors import ConfigError
from datadistill.methods.dm import DM
from datadistill.methods.tgdd import TGDD, TGDDOptions
from datadistill.models.architectures import ModelSpec, build_model
from datadistill.synset.params import RawPixelParam, decode_multi_formation, tile_images
from datadistill.synset.set import SyntheticSet
from datadistill.training.experts import TrajectoryStore, train_experts

EXPERTS = dict(num_experts=2, expert_epochs=3, expert_epoch_images=512, expert_batch=32, expert_lr=0.05)
TINY = dict(batch_real=16, width=16)


@pytest.fixture(scope="module")
def experts(digits):
    from datadistill.training.experts import ExpertOptions

    folder = train_experts(digits, ExpertOptions(**EXPERTS, expert_width=16), torch.device("cpu"))
    return TrajectoryStore.load(folder)


def test_raw_pixels_render_project_and_grayscale():
    images = torch.rand(4, 1, 8, 8)
    mean, std = torch.tensor([0.3]), torch.tensor([0.2])
    p = RawPixelParam(images, mean, std)
    assert torch.allclose(p.pixels, (images - 0.3) / 0.2)
    out = p.render()
    assert out.shape == (4, 3, 8, 8) and torch.allclose(out[:, 0], images[:, 0], atol=1e-6)
    assert torch.equal(out[:, 0], out[:, 2])
    with torch.no_grad():
        p.pixels.mul_(10)
    p.project_()
    r = p.render().detach()
    assert float(r.min()) >= -1e-6 and float(r.max()) <= 1 + 1e-6


def test_multi_formation_layout():
    tiles = torch.arange(8, dtype=torch.float).view(8, 1, 1, 1).expand(8, 3, 8, 8).contiguous()  # constant images
    stored = tile_images(tiles, 2)  # 2 images, each holding 4 tiles
    assert stored.shape == (2, 3, 8, 8)
    assert float(stored[0, 0, 0, 0]) == 0 and float(stored[0, 0, 0, 7]) == 2 and float(stored[0, 0, 7, 0]) == 4
    decoded, labels = decode_multi_formation(stored, torch.tensor([3, 5]), 2)
    assert torch.allclose(decoded, tiles) and labels.tolist() == [3, 5, 3, 5, 3, 5, 3, 5]
    with pytest.raises(Exception, match="divisible"):
        tile_images(torch.rand(4, 3, 7, 7), 2)


def test_dm_lowers_its_objective(digits):
    s = dd.distill("dm", "digits", ipc=2, dataset=digits, steps=15, lr=1.0, **TINY)
    assert s.images.shape == (20, 3, 8, 8) and torch.equal(s.images[:, 0], s.images[:, 1])
    start = dd.distill("dm", "digits", ipc=2, dataset=digits, steps=0, **TINY)
    assert not torch.allclose(s.images, start.images)
    # the DM objective through fresh random networks drops against the real-image start
    from datadistill.data.memory import in_memory
    from datadistill.methods.matching import class_feature_means
    from datadistill.training.supervised import InputNorm

    real = in_memory(digits.train, 8, 10)
    norm = InputNorm.of(real)
    gaps = {"start": [], "dm": []}
    for seed in range(8):
        net = build_model(ModelSpec("convnet", 10, 1, 8, width=16), torch.Generator().manual_seed(100 + seed))
        with torch.no_grad():
            target = class_feature_means(net.embed, norm(real.batch()), real.labels, 10)
            for name, synset in (("start", start), ("dm", s)):
                means = class_feature_means(net.embed, norm(synset.images), synset.labels, 10)
                gaps[name].append(float((means - target).pow(2).sum()))
    assert sum(gaps["dm"]) < sum(gaps["start"])


def test_dm_no_clamp_keeps_what_it_optimised(digits, tmp_path):
    # the DM code evaluates unclamped pixels: the default (--no-clamp) must save (and reload) them unclamped
    opts = dict(ipc=2, dataset=digits, steps=15, lr=10.0, **TINY)
    clamped = dd.distill("dm", "digits", clamp=True, **opts)
    free = dd.distill("dm", "digits", out=tmp_path / "run", **opts)
    assert clamped.images.min() >= 0 and clamped.images.max() <= 1 and "unbounded" not in clamped.meta
    assert free.meta["unbounded"] and (free.images.min() < 0 or free.images.max() > 1)
    loaded = SyntheticSet.load(tmp_path / "run")
    assert torch.equal(loaded.images, free.images) and loaded.grid().dtype == np.uint8


def test_dm_leaves_flip_out_on_digits_unless_asked(digits):
    assert not digits.mirror_safe  # the DSA / DM authors drop flip for digit datasets
    opts = dict(ipc=1, dataset=digits, steps=3, **TINY)
    default = dd.distill("dm", "digits", **opts)
    no_flip = dd.distill("dm", "digits", dsa_strategy="color_crop_cutout_scale_rotate", **opts)
    flip = dd.distill("dm", "digits", dsa_strategy="color_crop_cutout_flip_scale_rotate", **opts)
    assert torch.equal(default.images, no_flip.images) and not torch.equal(default.images, flip.images)


def test_dm_resume_after_kill_matches(digits, tmp_path, monkeypatch):
    opts = dict(ipc=1, dataset=digits, steps=12, checkpoint_every=4, **TINY)
    reference = dd.distill("dm", "digits", out=tmp_path / "ref", **opts)
    original, calls = DM.loss, {"n": 0}

    def dying(self, ctx, images):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return original(self, ctx, images)

    monkeypatch.setattr(DM, "loss", dying)
    with pytest.raises(KeyboardInterrupt):
        dd.distill("dm", "digits", out=tmp_path / "run", **opts)
    monkeypatch.setattr(DM, "loss", original)
    resumed = dd.distill("dm", "digits", out=tmp_path / "run", **opts)
    assert torch.allclose(resumed.images, reference.images, atol=1e-6)
    assert "resumed from" in (tmp_path / "run" / "log.txt").read_text()


def test_trajectory_store_snapshots_and_sampling(digits, experts):
    assert experts.num_experts == 2 and experts.epochs == 3
    info = experts.infos[1]
    init = build_model(ModelSpec(**info["spec"]), torch.Generator().manual_seed(info["seed"]))
    assert all(torch.equal(v, experts.params(1, 0)[k]) for k, v in init.state_dict().items())
    assert not torch.equal(experts.params(1, 0)["classifier.weight"], experts.params(1, 3)["classifier.weight"])
    # a snapshot is a view into the stacked tensors: no copy per iteration
    assert experts.params(0, 2)["classifier.weight"].data_ptr() != experts.params(0, 1)["classifier.weight"].data_ptr()
    view, stacked = experts.params(0, 2)["classifier.weight"], experts.trajectories[0]["classifier.weight"]
    assert view.untyped_storage().data_ptr() == stacked.untyped_storage().data_ptr()
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        i, j, j2 = experts.sample_indices(2, g)
        assert 0 <= i < 2 and 0 <= j <= 3 and j <= j2 <= min(j + 1, 3)
        seen.add((i, j, j2))
    assert len(seen) == 2 * 7  # every (expert, start, end) pair with L = 2 occurs
    x = torch.rand(3, 1, 8, 8)
    assert experts.run(experts.params(0, 3), x).shape == (3, 10)
    assert experts.run(experts.params(0, 3), x, features=True).shape[0] == 3
    # the recorded validation accuracy of epoch j is that of snapshot j, recomputed here on the val split
    from datadistill.data.memory import in_memory

    val = in_memory(digits.val, 8, 10)
    x_val = experts.norm(val.batch())
    hits = [int((experts.run(experts.params(1, j), x_val).argmax(1) == val.labels).sum()) for j in (1, 2, 3)]
    recomputed = [h / len(val.labels) for h in hits]
    assert info["val_acc"][-1] is not None
    for recorded, mine in zip(info["val_acc"], recomputed, strict=True):
        assert recorded is None or recorded == pytest.approx(mine, abs=1e-9)


def test_expert_training_resumes_after_kill(digits, tmp_path, monkeypatch):
    from datadistill.training import experts as trajectories
    from datadistill.training.experts import ExpertOptions, train_expert

    opts = ExpertOptions(**EXPERTS, expert_width=8)
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "a"))
    ref = TrajectoryStore.load(train_expert(digits, opts, 0, torch.device("cpu")))
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "b"))
    original, calls = trajectories.train_epoch, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trajectories, "train_epoch", dying)
    with pytest.raises(KeyboardInterrupt):
        train_expert(digits, opts, 0, torch.device("cpu"))
    monkeypatch.setattr(trajectories, "train_epoch", original)
    resumed = TrajectoryStore.load(train_expert(digits, opts, 0, torch.device("cpu")))
    for name, t in ref.trajectories[0].items():
        assert torch.allclose(t, resumed.trajectories[0][name], atol=1e-6), name
    assert ref.infos[0]["val_acc"] == resumed.infos[0]["val_acc"]


def test_tgdd_steps_and_resume(digits, experts, tmp_path, monkeypatch):
    opts = dict(ipc=2, dataset=digits, steps=6, checkpoint_every=2, **EXPERTS, expert_width=16, batch_real=16)
    reference = dd.distill("tgdd", "digits", out=tmp_path / "ref", **opts)
    start = dd.distill("tgdd", "digits", steps=0, **{k: v for k, v in opts.items() if k != "steps"})
    assert not torch.allclose(reference.images, start.images)
    original, calls = TGDD.train_step, {"n": 0}

    def dying(self, *args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(TGDD, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        dd.distill("tgdd", "digits", out=tmp_path / "run", **opts)
    monkeypatch.setattr(TGDD, "train_step", original)
    resumed = dd.distill("tgdd", "digits", out=tmp_path / "run", **opts)
    assert torch.allclose(resumed.images, reference.images, atol=1e-6)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["distill"]["options"]["factor"] == 1


def _tgdd_objective(store, synset, real, alpha):
    """The TGDD loss over every (expert, j, j+1) pair with all real images of each class, no augmentation."""
    import torch.nn.functional as F

    from datadistill.methods.matching import class_feature_means

    total = 0.0
    with torch.no_grad():
        x_real, x_syn = store.norm(real.batch()), store.norm(synset.images)
        for i in range(store.num_experts):
            for j in range(store.epochs):
                ext, exp = store.params(i, j), store.params(i, j + 1)
                feats = lambda x, p=ext: store.run(p, x, features=True)  # noqa: E731
                gap = class_feature_means(feats, x_real, real.labels, 10) - class_feature_means(
                    feats, x_syn, synset.labels, 10
                )
                total += float(gap.pow(2).sum()) + alpha * float(F.cross_entropy(store.run(exp, x_syn), synset.labels))
    return total


def test_tgdd_lowers_its_objective_and_decodes_factor(digits, experts, monkeypatch):
    from datadistill.data.memory import in_memory

    monkeypatch.setenv("DATADISTILL_COMPILE", "0")  # 640 real images would compile the real-feature pass

    common = dict(
        ipc=1, dataset=digits, region=2, dsa_strategy="none", lr=0.05, **EXPERTS, expert_width=16, batch_real=64
    )
    start = dd.distill("tgdd", "digits", steps=0, **common)
    after = dd.distill("tgdd", "digits", steps=10, **common)
    real = in_memory(digits.train, 8, 10)
    assert _tgdd_objective(experts, after, real, 2.5) < 0.9 * _tgdd_objective(experts, start, real, 2.5)
    mix = dict(ipc=1, dataset=digits, factor=2, init="mix", lr=0.05, **EXPERTS, expert_width=16, batch_real=16)
    s, s0 = dd.distill("tgdd", "digits", steps=2, **mix), dd.distill("tgdd", "digits", steps=0, **mix)
    assert s.meta["factor"] == 2 and not torch.allclose(s.images, s0.images)
    # "mix": every 4 x 4 tile of a stored image is a real image of the stored image's class, downscaled
    tiles = s0.images.unfold(2, 4, 4).unfold(3, 4, 4)  # N x C x 2 x 2 x 4 x 4
    for c in range(10):
        members = real.batch(real.by_class[c])
        small = torch.nn.functional.interpolate(members, size=(4, 4), mode="bilinear", antialias=True)
        for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
            tile = tiles[c, :1, i, j]
            assert float((small - tile).abs().flatten(1).max(1).values.min()) < 1e-5, (c, i, j)
    decoded, labels = decode_multi_formation(s.images, s.labels, 2)
    assert len(decoded) == 40 and labels.tolist() == list(range(10)) * 4
    assert TGDDOptions(lr=None, lr_rule="code").image_lr(10, 28) == pytest.approx(0.1)
    assert TGDDOptions(lr=None, lr_rule="paper").image_lr(10, 128) == pytest.approx(0.1)
    assert TGDDOptions().loss_alpha(10) == 2.5 and TGDDOptions().loss_alpha(50) == 0.5


def test_bad_options_are_config_errors(digits):
    with pytest.raises(ConfigError, match="factor"):
        dd.distill("tgdd", "digits", ipc=1, dataset=digits, steps=1, factor=2, init="real", **EXPERTS)
    with pytest.raises(ConfigError, match="DSA"):
        dd.distill("dm", "digits", ipc=1, dataset=digits, steps=1, dsa_strategy="color_blur")
    with pytest.raises(ConfigError, match="lr"):
        dd.distill("dm", "digits", ipc=1, dataset=digits, steps=1, lr=-1.0)


def test_cli_pretrain_experts_is_cached(capsys):
    from datadistill.cli import main

    argv = [
        "-q",
        "pretrain",
        "experts",
        "--data",
        "digits",
        "--num-experts",
        "1",
        "--expert-epochs",
        "1",
        "--expert-epoch-images",
        "64",
        "--expert-width",
        "8",
    ]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "experts model ready in" in first
    assert main(argv) == 0 and capsys.readouterr().out == first  # cached: same folder, no retraining
    folder = first.split("ready in ")[1].strip()
    store = TrajectoryStore.load(folder)
    assert store.num_experts == 1 and store.epochs == 1
    with pytest.raises(SystemExit):  # experts are read functionally: no batch-norm architectures
        main(argv[:-2] + ["--expert-arch", "resnet18-bn"])
