"""StandardAugment draws a batch's parameters apart from applying them, so any slice of the batch (a process's
share under torchrun) is augmented exactly as in the whole batch; its additive noise comes from a seed per
image, generated where the images are."""

import torch

from datadistill.data.augment import StandardAugment, aug_basic

IDENTITY = dict(flip_p=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the crop is the whole image: out = x + noise


def test_a_slice_is_augmented_as_in_the_whole_batch():
    x = torch.rand(7, 3, 20, 20, requires_grad=True)
    aug = StandardAugment(16)
    whole = aug(x, torch.Generator().manual_seed(3))
    draw = aug.draw(7, torch.Generator().manual_seed(3))
    for rows in (slice(0, 4), slice(4, 7), torch.tensor([6, 1])):
        assert torch.equal(aug.apply(x[rows], draw[rows]), whole[rows])
    assert aug.apply(x[:0], draw[:0]).shape == (0, 3, 16, 16)  # a process left without images
    aug.apply(x[2:5], draw[2:5]).sum().backward()  # differentiable through the slice only
    assert x.grad[2:5].abs().sum() > 0 and x.grad[:2].abs().sum() == 0 and x.grad[5:].abs().sum() == 0


def test_noise_has_the_asked_mean_and_std_independently_per_image():
    x = torch.rand(64, 3, 16, 16)
    aug = StandardAugment(16, noise_p=1.0, noise_std=0.2, noise_mean=0.1, **IDENTITY)
    noise = aug(x, torch.Generator().manual_seed(0)) - x
    assert abs(float(noise.mean()) - 0.1) < 0.01 and abs(float(noise.std()) - 0.2) < 0.01
    flat = (noise - 0.1).flatten(1)
    corr = torch.corrcoef(flat)[~torch.eye(64, dtype=torch.bool)]
    assert float(corr.abs().max()) < 0.2  # 768 values per image: independent images correlate by ~0.04


def test_noise_gate_draws_about_half_of_the_images():
    x = torch.zeros(400, 3, 8, 8)
    noisy = StandardAugment(8, noise_p=0.5, **IDENTITY)(x, torch.Generator().manual_seed(1)).flatten(1).ne(0).any(1)
    assert 160 < int(noisy.sum()) < 240


def test_without_noise_the_draws_are_the_crop_and_flip_only():
    # statistics passes and probes (AugBasic) keep their random stream: six uniforms per image, nothing else
    g, reference = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    aug_basic(16)(torch.rand(9, 3, 20, 20), g)
    torch.rand(9, 6, generator=reference)
    assert torch.equal(g.get_state(), reference.get_state())
    assert aug_basic(16).draw(9, torch.Generator()).seeds is None
