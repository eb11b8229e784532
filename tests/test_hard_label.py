"""The Minimax / DMGD hard-label protocol (ResNet-10-AP recipe, SGD or AdamW), on tiny inputs."""

import pytest
import torch

from datadistill import api
from datadistill.core.errors import ConfigError
from datadistill.evaluate.hard_label import MinimaxAugment, epochs_for
from datadistill.training.supervised import InputNorm


def test_epochs_follow_the_minimax_table():
    assert [epochs_for(i, 10) for i in (1, 10, 20, 50, 100, 500, 1000)] == [3000, 2000, 1500, 1500, 1000, 500, 300]
    assert epochs_for(10, 100) == 1300 and epochs_for(50, 100) == 1000


def test_minimax_augment_changes_colour_and_keeps_the_range():
    norm = InputNorm(torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225]))
    x = torch.rand(4, 3, 12, 12)
    g = torch.Generator().manual_seed(0)
    out = MinimaxAugment(norm, 16, 0.5, jitter=True)(norm(x), g)
    assert out.shape == (4, 3, 16, 16)
    pixels = out * norm.std.view(1, 3, 1, 1) + norm.mean.view(1, 3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    plain = MinimaxAugment(norm, 16, 0.5, jitter=False)(norm(x), torch.Generator().manual_seed(0))
    assert not torch.allclose(out, plain)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_hard_label_protocol_trains_and_selects_on_validation(digits, optimizer):
    synset = api.distill("random", digits.name, ipc=3, dataset=digits)
    result = api.evaluate(
        [synset, synset],
        protocol="hard-label",
        data=digits,
        seeds=2,
        device="cpu",
        optimizer=optimizer,
        epochs=3,
        resolution=16,
        width=8,
        val_every=1,
    )
    assert result.protocol == "hard-label" and result.backbone == "resnet10-ap"
    assert len(result.test_acc) == 2
    # accuracies are fractions of whole splits: k / len(test) and k / len(val) for whole numbers k in [0, n]
    for accs, n in ((result.test_acc, len(digits.test)), (result.val_acc, len(digits.val))):
        for a in accs:
            assert 0 <= round(a * n) <= n and a * n == pytest.approx(round(a * n), abs=1e-6), (a, n)
    d = result.details
    assert d["optimizer"] == optimizer and d["lr"] == (0.01 if optimizer == "sgd" else 1e-3)
    for curve, selected, val in zip(d["val_curves"], d["selected_epoch"], result.val_acc, strict=True):
        assert max(v for _, v in curve) == pytest.approx(val, abs=1e-5) == dict(curve)[selected]
    with pytest.raises(ConfigError):
        api.evaluate(synset, protocol="hard-label", data=digits, seeds=1, rrc_scale=0.0)
