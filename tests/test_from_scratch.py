import json

import pytest
import torch

import datadistill as dd
from datadistill.cli import main
from datadistill.core.errors import ConfigError
from datadistill.evaluate.from_scratch import ConvNetOptions
from datadistill.synset.set import SyntheticSet

FAST = dict(epochs=12, val_every=4, width=16, batch_size=32)


@pytest.fixture(scope="module")
def random_set(digits):
    return dd.distill("random", "digits", ipc=5, dataset=digits)


def test_convnet_protocol_selects_on_validation(digits, random_set):
    r = dd.evaluate(random_set, protocol="convnet", data=digits, seeds=2, **FAST)
    assert r.protocol == "convnet" and r.backbone == "convnet" and len(r.test_acc) == 2 and r.seeds == [1000, 1001]
    d = r.details
    assert d["recipe"] == "idc" and d["batch_size"] == 32 and d["cutmix"] == 0.5 and d["train_images"] == 50
    for k, curve in enumerate(d["val_curves"]):
        assert [e for e, _ in curve] == [4, 8, 12]
        best = max(v for _, v in curve)
        assert d["selected_epoch"][k] == next(e for e, v in curve if v == best)  # first epoch reaching the max
        assert r.val_acc[k] == pytest.approx(best, abs=1e-4)
    assert r.mean > 0.3 and len(d["test_last"]) == 2  # 50 real digits train a ConvNet well above chance
    again = dd.evaluate(random_set, protocol="convnet", data=digits, seeds=1, **FAST)
    assert again.test_acc == r.test_acc[:1]  # seeded


def test_dm_recipe_and_cross_architecture(digits, random_set):
    r = dd.evaluate(
        random_set,
        protocol="convnet",
        data=digits,
        seeds=1,
        recipe="dm",
        epochs=6,
        val_every=3,
        width=16,
        val_images=50,
    )
    assert r.details["val_images"] == 50 and r.details["batch_size"] == 256
    assert r.details["cutmix"] == 0 and "cutout" in r.details["dsa"]
    x = dd.evaluate(
        random_set, protocol="convnet", data=digits, seeds=1, arch="resnet10-bn", epochs=3, width=8, dsa=False
    )
    assert x.backbone == "resnet10-bn" and x.details["dsa"] is None
    with pytest.raises(ConfigError):
        dd.evaluate(random_set, protocol="convnet", data=digits, arch="vgg")
    with pytest.raises(ConfigError, match="DSA"):
        ConvNetOptions(dsa_strategy="blur").validate()


def test_multi_formation_sets_are_decoded(digits, random_set):
    tiled = SyntheticSet(random_set.images, random_set.labels, random_set.classes, {"factor": 2})
    r = dd.evaluate(tiled, protocol="convnet", data=digits, seeds=1, epochs=2, width=8)
    assert r.details["train_images"] == 4 * 50
    raw = dd.evaluate(tiled, protocol="convnet", data=digits, seeds=1, epochs=2, width=8, decode=False)
    assert raw.details["train_images"] == 50
    forced = dd.evaluate(random_set, protocol="convnet", data=digits, seeds=1, epochs=2, width=8, factor=2)
    assert forced.details["train_images"] == 4 * 50


def test_full_data_convnet_is_the_experts(digits):
    opts = dict(expert_epochs=3, expert_epoch_images=256, expert_batch=32, expert_lr=0.05, expert_width=16)
    r = dd.evaluate(None, protocol="convnet-full", data=digits, seeds=2, **opts)
    assert r.protocol == "convnet-full" and len(r.test_acc) == 2 and r.mean > 0.3
    for k, curve in enumerate(r.details["val_curves"]):
        assert r.details["selected_epoch"][k] == max(curve, key=lambda t: (t[1], t[0]))[0]
    with pytest.raises(ConfigError, match="val"):
        dd.evaluate(None, protocol="convnet-full", data=digits, seeds=1, expert_val_every=0, **opts)
    # the experts are the seeds: a different expert count or seed is refused, not silently replaced
    with pytest.raises(ConfigError, match="--seeds and --first-seed"):
        dd.evaluate(None, protocol="convnet-full", data=digits, seeds=2, num_experts=3, **opts)
    with pytest.raises(ConfigError, match="--expert-seed 7"):
        dd.evaluate(None, protocol="convnet-full", data=digits, seeds=2, expert_seed=7, **opts)


def test_cli_distill_dm_and_eval_convnet(tmp_path, capsys):
    out = tmp_path / "dm"
    assert (
        main(
            [
                "-q",
                "distill",
                "dm",
                "--data",
                "digits",
                "--ipc",
                "1",
                "--steps",
                "3",
                "--batch-real",
                "8",
                "--width",
                "16",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "-q",
                "eval",
                str(out),
                "--protocol",
                "convnet",
                "--seeds",
                "1",
                "--epochs",
                "3",
                "--width",
                "8",
                "--val-every",
                "3",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "convnet @ convnet: test" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert any(k.startswith("convnet@convnet|") for k in metrics["eval"])  # protocol@model|settings digest
    with pytest.raises(SystemExit):
        main(["-q", "eval", str(out), "--protocol", "convnet", "--arch", "nope"])
    assert main(["-q", "eval", str(out), "--protocol", "convnet", "--epochs", "0"]) == 2


def test_tgdd_run_directory_factor_is_decoded(digits, tmp_path):
    out = tmp_path / "tgdd"
    dd.distill(
        "tgdd",
        "digits",
        ipc=1,
        dataset=digits,
        out=out,
        steps=1,
        factor=2,
        init="mix",
        batch_real=8,
        num_experts=1,
        expert_epochs=1,
        expert_epoch_images=64,
        expert_width=8,
    )
    r = dd.evaluate(out, protocol="convnet", seeds=1, epochs=1, width=8)
    assert r.details["train_images"] == 40
    loaded = SyntheticSet.load(out)
    assert torch.equal(loaded.labels, torch.arange(10)) and loaded.meta["factor"] == 2
    # A set handed over on its own (no run directory) still decodes its tiles.
    alone = dd.evaluate(loaded, protocol="convnet", data=digits, seeds=1, epochs=1, width=8)
    assert alone.details["train_images"] == 40


def test_recipes_leave_flip_out_on_digits_unless_asked(digits, random_set):
    for recipe, strategy in (("dm", "color_crop_cutout_scale_rotate"), ("idc", "color_crop_scale_rotate")):
        assert ConvNetOptions(recipe=recipe).make_recipe(mirror_safe=False).dsa.strategy == strategy
        assert "flip" in ConvNetOptions(recipe=recipe).make_recipe(mirror_safe=True).dsa.strategy
    asked = ConvNetOptions(recipe="dm", dsa_strategy="flip").make_recipe(mirror_safe=False)
    assert asked.dsa.strategy == "flip"
    r = dd.evaluate(random_set, protocol="convnet", data=digits, seeds=1, **{**FAST, "epochs": 2, "val_every": 2})
    assert r.details["dsa"] == "color_crop_scale_rotate"
