import pytest
import torch

from datadistill.core.errors import ConfigError
from datadistill.data.augment import DSA, default_strategy

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
    assert DSA().rotate == 15.0 and DSA().scale == 1.2  # the DSA code's ranges


def test_rotate_by_a_quarter_turn_moves_pixels_as_rot90():
    # u = 1 is +rotate degrees, u = 0 is -rotate: with rotate = 90 the result is exactly a quarter turn, where
    # out[i, j] = in[j, n - 1 - i] (torch.rot90, k = 1) for +90 degrees
    one_hot = torch.zeros(1, 1, 5, 5)
    one_hot[0, 0, 0, 1] = 1.0
    dsa = DSA("rotate", mode="all", rotate=90.0)
    plus = dsa.apply(one_hot, _u(1, angle=1.0))
    assert plus[0, 0, 3, 0] == pytest.approx(1.0, abs=1e-5) and float(plus.sum()) == pytest.approx(1.0, abs=1e-5)
    x = torch.rand(2, 3, 6, 6)
    assert torch.allclose(dsa.apply(x, _u(2, angle=1.0)), torch.rot90(x, 1, (2, 3)), atol=1e-5)
    assert torch.allclose(dsa.apply(x, _u(2, angle=0.0)), torch.rot90(x, -1, (2, 3)), atol=1e-5)
    assert torch.allclose(dsa.apply(x, _u(2, angle=0.5)), x, atol=1e-6)


def test_scale_resamples_about_the_centre():
    # A column ramp in[.., c] = c on 4 columns (centre 1.5). Scaling by s samples column 1.5 + s (c - 1.5),
    # bilinear with zeros outside: s = 0.5 (u = 0, scale = 2) gives 0.75 1.25 1.75 2.25; s = 2 (u = 1) samples
    # -1.5, 0.5, 2.5, 4.5, so 0, 0.5, 2.5, 0. The rows (neutral scale_y) are untouched.
    ramp = torch.arange(4.0).expand(1, 1, 4, 4)
    dsa = DSA("scale", mode="all", scale=2.0)
    neutral_y = (1 - 0.5) / (2 - 0.5)
    zoom_in = dsa.apply(ramp, _u(1, scale_x=0.0, scale_y=neutral_y))
    zoom_out = dsa.apply(ramp, _u(1, scale_x=1.0, scale_y=neutral_y))
    assert torch.allclose(zoom_in, torch.tensor([0.75, 1.25, 1.75, 2.25]).expand(1, 1, 4, 4), atol=1e-5)
    assert torch.allclose(zoom_out, torch.tensor([0.0, 0.5, 2.5, 0.0]).expand(1, 1, 4, 4), atol=1e-5)
    # the same along the rows for a row ramp: scale_y acts on rows
    rows = dsa.apply(ramp.transpose(2, 3), _u(1, scale_x=neutral_y, scale_y=0.0))
    assert torch.allclose(rows, torch.tensor([0.75, 1.25, 1.75, 2.25]).view(1, 1, 4, 1).expand(1, 1, 4, 4), atol=1e-5)


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
