import math

import pytest
import torch

from datadistill.augment import DSA, default_strategy
from datadistill.errors import ConfigError

ALL = "color_crop_cutout_flip_scale_rotate"


def _u(n: int, **cols) -> torch.Tensor:
    """Parameters that leave every operation at identity, with some columns overridden."""
    names = [
        "bright",
        "sat",
        "contrast",
        "shift_x",
        "shift_y",
        "cut_x",
        "cut_y",
        "flip",
        "scale_x",
        "scale_y",
        "angle",
        "choice",
    ]
    neutral_scale = (1 - 1 / 1.2) / (1.2 - 1 / 1.2)  # sx = 1
    u = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9, neutral_scale, neutral_scale, 0.5, 0.0])
    u = u.repeat(n, 1)
    for k, v in cols.items():
        u[:, names.index(k)] = v
    return u


def test_seeded_differentiable_and_per_sample():
    x = torch.rand(6, 3, 16, 16, requires_grad=True)
    dsa = DSA(ALL, mode="all")
    a = dsa(x, torch.Generator().manual_seed(0))
    b = dsa(x, torch.Generator().manual_seed(0))
    c = dsa(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert x.grad.abs().sum() > 0
    same = torch.rand(1, 3, 16, 16).repeat(4, 1, 1, 1)
    out = dsa(same, torch.Generator().manual_seed(0))
    assert not torch.allclose(out[0], out[1])  # per-sample parameters


def test_siamese_shares_one_draw_per_group():
    dsa = DSA(ALL, mode="one")
    img_a, img_b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    real = torch.cat([img_a, img_a, img_b])
    syn = torch.cat([img_b, img_a])
    for seed in range(5):
        r, s = dsa.siamese(
            [real, syn], torch.Generator().manual_seed(seed), [torch.tensor([0, 0, 1]), torch.tensor([1, 0])]
        )
        assert torch.allclose(r[0], r[1]) and torch.allclose(r[0], s[1]) and torch.allclose(r[2], s[0])
    r, s = DSA(ALL, mode="all").siamese([real, syn], torch.Generator().manual_seed(0))  # one group: batch-shared
    assert torch.allclose(r[2], s[0]) and torch.allclose(r[0], s[1])


def test_identity_parameters_are_identity():
    x = torch.rand(3, 3, 16, 16)
    out = DSA(ALL, mode="all").apply(x, _u(3))
    # cutout is never identity: everything else is, so outside the cut square the image is unchanged
    mask = out != 0
    assert torch.allclose(out[mask], x[mask], atol=1e-5)
    assert int((~mask[:, 0]).sum(dim=(1, 2))[0]) == 8 * 8  # cutout 0.5 x 16 = an 8x8 square


def test_operations():
    x = torch.rand(2, 3, 16, 16)
    flipped = DSA("flip", mode="all").apply(x, _u(2, flip=torch.tensor([0.1, 0.9])))
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])
    s = int(16 * 0.125 + 0.5)
    shifted = DSA("crop", mode="all").apply(x, _u(2, shift_x=(s + 1 + 0.5) / (2 * s + 1)))  # shift +1 row
    assert torch.equal(shifted[:, :, :-1], x[:, :, 1:]) and float(shifted[:, :, -1].abs().sum()) == 0
    bright = DSA("color", mode="all").apply(x, _u(2, bright=1.0))
    assert torch.allclose(bright, x + 0.5, atol=1e-5)
    gray = torch.rand(2, 1, 16, 16)
    assert torch.allclose(DSA("color", mode="all").apply(gray, _u(2, sat=0.0)), gray, atol=1e-6)
    quarter = DSA("rotate", mode="all").apply(x, _u(2, angle=0.5 + 0.5 * 15 / 15 * 0))
    assert torch.allclose(quarter, x, atol=1e-5)
    rotated = DSA("rotate", mode="all").apply(x, _u(2, angle=1.0))
    assert not torch.allclose(rotated, x, atol=1e-2)
    assert math.isclose(15.0, DSA().rotate)


def test_modes_choose_operations():
    x = torch.rand(4, 3, 16, 16)
    one = DSA("flip_scale", mode="one")
    # choice < 0.5 -> flip only (exact); choice >= 0.5 -> scale only (identity scale here, no flip)
    out = one.apply(x, _u(4, flip=0.0, choice=torch.tensor([0.1, 0.9, 0.1, 0.9])))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.allclose(out[1], x[1], atol=1e-5)
    # idc: flip always applied, one of the geometric ops (crop at identity here)
    idc = DSA("crop_flip_scale", mode="idc").apply(x, _u(4, flip=0.0, choice=0.1))
    assert torch.allclose(idc, x.flip(-1), atol=1e-5)
    # per-sample calls draw ONE choice for the whole batch (as the code)
    calls = DSA("flip_cutout", mode="one")
    same = torch.rand(1, 3, 16, 16).repeat(32, 1, 1, 1)
    out = calls(same, torch.Generator().manual_seed(3))
    has_hole = (out == 0).flatten(1).any(dim=1)
    assert bool(has_hole.all()) or not bool(has_hole.any())


def test_strategy_validation_and_none():
    x = torch.rand(2, 3, 8, 8)
    assert DSA("none")(x, torch.Generator()) is x
    with pytest.raises(ConfigError, match="unknown DSA operation"):
        DSA("color_blur")
    with pytest.raises(ConfigError, match="mode"):
        DSA(ALL, mode="many")


def test_default_strategy_drops_flip_only_where_mirroring_changes_the_image():
    assert default_strategy(ALL, mirror_safe=True) == ALL
    assert default_strategy(ALL, mirror_safe=False) == "color_crop_cutout_scale_rotate"
    assert default_strategy("flip", mirror_safe=False) == "none"
    assert DSA(default_strategy("flip", mirror_safe=False)).ops == ()
