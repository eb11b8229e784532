"""The shared latent space: diffusers AutoencoderKL from a local folder, the offline tiny VAE, the latent bank."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from datadistill.core.errors import WeightsError
from datadistill.models.generative.latent import center_crop_arr, latent_bank
from datadistill.training.vae import load_latent_space


@pytest.fixture(scope="module")
def kl_folder(tmp_path_factory):
    """A tiny randomly initialised diffusers AutoencoderKL saved in diffusers' format (16 px -> 4 x 8 x 8)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    folder = tmp_path_factory.mktemp("kl") / "vae-folder"
    vae.save_pretrained(folder)
    return folder, vae.eval()


def test_autoencoderkl_from_local_folder_matches_diffusers(kl_folder):
    folder, vae = kl_folder
    space = load_latent_space(str(folder), encode_mode="mean")
    assert space.kind == "diffusers" and space.image_size == 16 and space.latent_shape == (4, 8, 8)
    assert space.scale == pytest.approx(0.18215) and str(folder) in space.weights
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = vae.encode(x * 2 - 1).latent_dist.mean * 0.18215
        z = space.encode(x)
        assert torch.allclose(z, ref, atol=1e-5)
        ref_img = ((vae.decode(ref / 0.18215).sample + 1) / 2).clamp(0, 1)
        assert torch.allclose(space.decode(z), ref_img, atol=1e-5)
        assert space.feat_dim == 256 and torch.allclose(space(x), ref.flatten(1), atol=1e-5)  # the statistics' features
    # posterior samples differ from the mean and are reproducible with a generator
    s1 = space.encode(x, mode="sample", generator=torch.Generator().manual_seed(0))
    s2 = space.encode(x, mode="sample", generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2) and not torch.allclose(s1, z)


def test_autoencoderkl_pipeline_layout_and_missing_weights(kl_folder, tmp_path):
    folder, _ = kl_folder
    pipe = tmp_path / "pipe"
    (pipe / "vae").mkdir(parents=True)
    for f in folder.iterdir():
        (pipe / "vae" / f.name).write_bytes(f.read_bytes())
    assert load_latent_space(str(pipe), image_size=32).latent_shape == (4, 16, 16)
    with pytest.raises(WeightsError, match="hub"):
        load_latent_space("sd-vae-ft-mse")  # HF offline in the tests: a clear error, never random weights
    with pytest.raises(WeightsError, match="not found"):
        load_latent_space(str(tmp_path / "missing" / "vae"))


def _adm_center_crop_arr(arr: np.ndarray, image_size: int) -> np.ndarray:
    """ADM's ``center_crop_arr`` (guided-diffusion, PIL on uint8 H x W x 3), the reference."""
    image = Image.fromarray(arr)
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


@pytest.mark.parametrize("shape", [(40, 64), (64, 40), (50, 70)])
def test_center_crop_arr_matches_adm(shape):
    # a smooth random picture (noise upsampled 4x), so resampling differences stay small where the code is right
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (shape[0] // 4, shape[1] // 4, 3), dtype=np.uint8))
    arr = np.array(noise.resize((shape[1], shape[0]), Image.BILINEAR))
    expected = _adm_center_crop_arr(arr, 16).astype(np.float32) / 255
    out = center_crop_arr(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255, 16)[0].permute(1, 2, 0)
    assert out.shape == expected.shape and np.abs(out.numpy() - expected).max() < 0.01  # PIL rounds to uint8
    same = torch.rand(1, 3, 8, 8)
    assert torch.equal(center_crop_arr(same, 8), same)


def test_latent_bank_caches_unzoomed_latents_and_kmeans(kl_folder, digits):
    folder, _ = kl_folder
    space = load_latent_space(str(folder), encode_mode="mean")
    bank = latent_bank(digits, space)
    assert bank.features.shape == (len(digits.train), 256)
    idx = torch.tensor([0, 5, 77])
    expected = space.encode(digits.train.batch(idx)).flatten(1)  # 8 px digits upsampled to 16, no 256/224 zoom
    assert torch.allclose(bank.tensor(idx), expected, atol=2e-3)
    again = latent_bank(digits, space)
    assert again.directory == bank.directory
    centres, masses = bank.kmeans(3)
    # a k-means fixed point: each class's latents go to their nearest centre, each centre is the mean of its
    # cluster, and the masses are the cluster sizes over the class size (all checked with numpy)
    latents, labels = bank.tensor().double().numpy(), bank.labels.numpy()
    for c in range(10):
        mine = latents[labels == c]
        ctr = centres[c].double().numpy()
        nearest = ((mine[:, None, :] - ctr[None]) ** 2).sum(-1).argmin(1)
        sizes = np.bincount(nearest, minlength=3)
        np.testing.assert_allclose(masses[c].numpy(), sizes / len(mine), atol=1e-6)
        for j in range(3):
            np.testing.assert_allclose(ctr[j], mine[nearest == j].mean(0), atol=1e-4)


def _config(folder):
    return json.loads((folder / "config.json").read_text())


def test_tiny_vae_trains_reconstructs_and_is_cached(digits):
    from datadistill.api import pretrain

    short = pretrain("vae", digits, steps=5, checkpoint_every=5)
    longer = pretrain("vae", digits, steps=150, checkpoint_every=50)
    assert short != longer
    assert _config(longer)["val_mse"] < 0.6 * _config(short)["val_mse"]
    assert pretrain("vae", digits, steps=150, checkpoint_every=7) == longer  # cached: checkpointing is not identity
    space = load_latent_space(str(longer), encode_mode="mean")
    assert space.kind == "tiny" and space.latent_shape == (4, 2, 2) and "digits" in space.weights
    z = space.encode(digits.train.batch(torch.arange(500)))
    assert abs(float(z.std()) - 1) < 0.1  # the calibrated scale gives unit-variance latents
    # the reconstructions of 8 digits are far closer to them than the digits' mean image is
    x = digits.train.batch(torch.arange(8)).expand(-1, 3, -1, -1)
    with torch.no_grad():
        recon = space.decode(space.encode(x, mode="mean"))
    assert recon.shape == x.shape
    assert (recon - x).pow(2).mean() < 0.5 * (x.mean(0, keepdim=True) - x).pow(2).mean()
    with pytest.raises(Exception, match="trained on a dataset"):
        load_latent_space("tiny")


def test_tiny_vae_resumes_after_kill(digits, tmp_path, monkeypatch):
    import datadistill.training.vae as tv
    from datadistill.api import pretrain

    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "ref"))
    ref = _config(pretrain("vae", digits, steps=24, checkpoint_every=5))
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "run"))
    real = tv.train_resumable

    def dying(name, total, step, *args, **kwargs):
        def die_at_13(i):
            if i == 13:
                raise KeyboardInterrupt
            return step(i)

        return real(name, total, die_at_13, *args, **kwargs)

    monkeypatch.setattr(tv, "train_resumable", dying)
    with pytest.raises(KeyboardInterrupt):
        pretrain("vae", digits, steps=24, checkpoint_every=5)
    monkeypatch.setattr(tv, "train_resumable", real)
    resumed = _config(pretrain("vae", digits, steps=24, checkpoint_every=5))
    assert not list((tmp_path / "run" / "models" / "vae").glob("*checkpoint*"))  # cleaned up once the model is saved
    assert resumed["final_train_mse"] == pytest.approx(ref["final_train_mse"], abs=1e-6)
    assert resumed["val_mse"] == pytest.approx(ref["val_mse"], abs=1e-6)


def test_tiny_vae_shape_options_reach_the_trainer(digits, kl_folder):
    from datadistill.core.errors import ConfigError
    from datadistill.models.generative.latent import LatentOptions
    from datadistill.training.vae import latent_space_from

    default = latent_space_from(LatentOptions(vae_steps=5), digits)
    finer = latent_space_from(LatentOptions(vae_steps=5, vae_levels=1, vae_latent_channels=2), digits)
    assert default.latent_shape == (4, 2, 2) and finer.latent_shape == (2, 4, 4)
    assert finer.weights != default.weights  # its own cache entry, so flow / diffusion models keyed by it differ too
    with pytest.raises(ConfigError, match="offline 'tiny' autoencoder"):
        latent_space_from(LatentOptions(vae=str(kl_folder[0]), vae_levels=1), digits)
