"""Generative networks of the latent-space methods (PGFM, DMGD, MGD3) and their loaders: the frozen autoencoder
(latent space, tiny VAE), and the velocity / noise networks (flow models, SiT, DiT)."""
