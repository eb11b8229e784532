import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from datadistill.augment import StandardAugment, aug_basic
from datadistill.errors import DataError
from datadistill.synset import COLOR_DECORRELATION, PixelParam, PyramidParam, SyntheticSet


def test_augment_is_seeded_and_differentiable():
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    aug = StandardAugment(out_size=16)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert x.grad.abs().sum() > 0


def test_identity_crop_is_a_resize_and_flip_flips():
    x = torch.rand(2, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    plain = StandardAugment(16, flip_p=0.0, scale=(1, 1), ratio=(1, 1), noise_p=0.0)(x, g)
    assert torch.allclose(plain, x, atol=1e-5)
    flipped = StandardAugment(16, flip_p=1.0, scale=(1, 1), ratio=(1, 1), noise_p=0.0)(x, g)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    small = StandardAugment(8, flip_p=0.0, scale=(1, 1), ratio=(1, 1), noise_p=0.0)(x, g)
    assert torch.allclose(small, F.interpolate(x, size=8, mode="bilinear", align_corners=False), atol=1e-5)


def test_aug_basic_has_no_noise():
    x = torch.rand(8, 3, 16, 16)
    y = aug_basic(16)(x, torch.Generator().manual_seed(0))
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_pyramid_growth_schedule_and_continuity():
    g = torch.Generator().manual_seed(0)
    p = PyramidParam(2, 16, grow_every=10, generator=g)
    grew = [s for s in range(1, 80) if p.maybe_grow(s)]
    assert grew == [11, 21, 31, 41] and p.sizes == [1, 2, 4, 8, 16]
    assert not p.maybe_grow(51)  # complete: capped at the resolution
    q = PyramidParam(2, 16, grow_every=10, generator=torch.Generator().manual_seed(0))
    for s in range(1, 31):
        q.maybe_grow(s)
    before = q.render().detach()
    assert q.maybe_grow(31)
    after = q.render().detach()
    assert after.shape == (2, 3, 16, 16) and float(after.min()) >= 0 and float(after.max()) <= 1
    assert (after - before).abs().mean() < 0.1


def test_pyramid_checkpoint_round_trip():
    p = PyramidParam(2, 8, grow_every=1, generator=torch.Generator().manual_seed(0))
    for s in range(1, 4):
        p.maybe_grow(s)
    q = PyramidParam(2, 8, grow_every=1, generator=torch.Generator().manual_seed(5))
    q.load_checkpoint_state(p.checkpoint_state())
    assert torch.equal(p.render(), q.render())


def test_image_init_renders_the_image():
    images = torch.rand(3, 3, 8, 8) * 0.9 + 0.05
    for param in (PixelParam(3, 8, init_images=images), PyramidParam(3, 8, init_images=images)):
        assert torch.allclose(param.render(), images, atol=1e-4)


def test_colour_decorrelation_renders_the_published_matrix():
    # M = [[.26, .09, .02], [.27, 0, -.05], [.27, -.09, .03]] divided by its largest column norm,
    # sqrt(.26^2 + .27^2 + .27^2) = sqrt(.2134); a pixel v renders as sigmoid(2 M~ v)
    m = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]) / 0.2134**0.5
    assert torch.allclose(COLOR_DECORRELATION, m, atol=1e-6)
    p = PixelParam(2, 1, decorrelate=True)
    with torch.no_grad():  # pre-activations e_red and e_blue: the first and third columns of M~
        p.pixels.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).view(2, 3, 1, 1))
    expected = torch.sigmoid(2 * torch.tensor([[0.26, 0.27, 0.27], [0.02, -0.05, 0.03]]) / 0.2134**0.5)
    assert torch.allclose(p.render().flatten(1), expected, atol=1e-6)


def test_synset_round_trip_and_png_folder(tmp_path):
    from PIL import Image

    s = SyntheticSet(torch.rand(6, 3, 10, 10), torch.tensor([0, 0, 1, 1, 2, 2]), ["a", "b", "c"], {"method": "x"})
    s.save(tmp_path / "syn")
    t = SyntheticSet.load(tmp_path / "syn")
    assert torch.allclose(s.images, t.images, atol=1e-6) and torch.equal(s.labels, t.labels)
    assert t.classes == ["a", "b", "c"] and t.meta["method"] == "x"
    grid = Image.open(tmp_path / "syn" / "grid.png")
    assert grid.size == (2 + 2 * 12, 2 + 3 * 12)
    folder = tmp_path / "pngs"
    for i, (img, y) in enumerate(zip(t.images, t.labels.tolist(), strict=True)):
        (folder / t.classes[y]).mkdir(parents=True, exist_ok=True)
        pixels = (img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(pixels).save(folder / t.classes[y] / f"{i}.png")
    u = SyntheticSet.load(folder)
    assert u.classes == ["a", "b", "c"] and torch.equal(u.labels, t.labels)
    assert torch.allclose(u.images, t.images, atol=1 / 255)


def test_saved_set_reads_back_as_safetensors_wrote_it(tmp_path):
    """The set's own reader against safetensors' loader, and a truncated file is one clear error."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 5, 7, generator=g)
    SyntheticSet(images, torch.tensor([0, 0, 1, 1, 2, 2]), ["a", "b", "c"]).save(tmp_path / "s")
    reference = load_file(str(tmp_path / "s" / "synset.safetensors"))
    loaded = SyntheticSet.load(tmp_path / "s")
    assert torch.equal(loaded.images, reference["images"]) and torch.equal(loaded.labels, reference["labels"])
    assert torch.equal(loaded.images, images)
    path = tmp_path / "s" / "synset.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        SyntheticSet.load(tmp_path / "s")


def test_preview_grid_is_capped_in_classes_images_and_pixels(tmp_path, monkeypatch):
    import json

    from PIL import Image

    from datadistill import synset as synset_module

    g = torch.Generator().manual_seed(0)
    images = torch.rand(130 * 3, 3, 6, 5, generator=g)
    labels = torch.arange(130).repeat_interleave(3)
    s = SyntheticSet(images, labels, [f"c{i}" for i in range(130)])
    monkeypatch.setattr(synset_module, "GRID_PER_CLASS", 2)
    grid = s.grid()
    assert grid.shape == (100 * 8 + 2, 2 * 7 + 2, 3)  # 100 class rows of 6 + 2 px, 2 columns of 5 + 2 px
    # the tile of class 7's second image is that image, rounded to 8 bits
    expected = (images[7 * 3 + 1].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(grid[2 + 7 * 8 : 2 + 7 * 8 + 6, 2 + 7 : 2 + 7 + 5], expected)
    monkeypatch.setattr(synset_module, "GRID_PIXELS", 100 * 2 * 3 * 3)  # 1800 px of 6000: scale sqrt(0.3) = 0.548
    s.save(tmp_path / "s")
    saved = Image.open(tmp_path / "s" / "grid.png")
    assert saved.size == (2 * 4 + 2, 100 * 5 + 2)  # tiles of int(6 * 0.5) x int(5 * 0.5) = 3 x 2 px
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["grid"] == {"classes": 100, "per_class": 2, "scale": pytest.approx(0.3**0.5)}
