"""Generative models of the latent-space methods (PGFM, DMGD, MGD3): the frozen autoencoder (latent space),
velocity / noise networks, and samplers with guidance hooks."""

from .latent import LatentOptions, LatentSpace, center_crop_arr, latent_bank, latent_space_from, load_latent_space

__all__ = ["LatentOptions", "LatentSpace", "center_crop_arr", "latent_bank", "latent_space_from", "load_latent_space"]
