"""Gaussian diffusion (the ADM / DiT formulation) and an ancestral DDPM sampler with guidance hooks.

Schedule: ``num_timesteps`` linear betas (ADM: 1e-4 .. 0.02 scaled by 1000/T), optionally respaced to fewer
steps as ADM's ``space_timesteps`` does (``respace("50")`` keeps 50 of the 1000 timesteps and recomputes
the betas so the kept marginals are unchanged). Constants are float64, as in ADM, and cast when used.

Sampler (docs/methods/dmgd.md): epsilon prediction, learned-range variance (the model's extra channels interpolate
in log space between the posterior variance and beta), classifier-free guidance (optionally on the first 3
latent channels only, DiT's released quirk), ancestral steps. Hooks (``SamplerHook``) can
- transform the class embedding at a step (``embedding``; DMGD's semantic matching),
- shift the posterior mean (``mean_shift``; DMGD's OT guidance: -g * sigma_t * grad),
- add to the sample after the mean, before the noise (``sample_shift``; MGD3's mode guidance),
each only inside its ``window`` of respaced step indices (inclusive; index S-1 is the first, noisiest step).

A ``Denoiser`` is any module with ``forward(x, t, y, embedding_transform=None)`` returning eps (and the
variance values when ``learn_sigma``), ``num_classes``, ``null_class``, ``learn_sigma``, ``in_channels`` and
``sample_size``; see ``dit.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from ..core.errors import ConfigError
from ..models.generative.dit import EmbeddingTransform


class Denoiser(Protocol):
    num_classes: int
    null_class: int
    learn_sigma: bool
    in_channels: int
    sample_size: int

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, embedding_transform: EmbeddingTransform | None = None
    ) -> torch.Tensor: ...


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
    """ADM's respacing: ``"50"`` keeps 50 evenly strided timesteps (first and last included); ``"10,15,20"``
    splits the range in equal sections with that many steps each; ``"ddimN"`` uses a fixed integer stride."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[4:])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ConfigError(f"cannot create exactly {desired} steps with an integer stride")
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ConfigError(f"bad respacing '{section_counts}': use e.g. '50' or '10,15,20'") from None
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1 or count > size:
            raise ConfigError(f"cannot take {count} steps from a section of {size} timesteps")
        stride = (size - 1) / (count - 1) if count > 1 else 1
        kept += [start + round(stride * j) for j in range(count)]
        start += size
    return sorted(set(kept))


class GaussianDiffusion:
    """Diffusion constants over ``timesteps`` (original indices kept after respacing, increasing)."""

    def __init__(self, betas: np.ndarray, timesteps: Sequence[int] | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        self.num_train_timesteps = len(betas)
        self.timesteps = np.arange(len(betas)) if timesteps is None else np.asarray(sorted(timesteps))
        if timesteps is not None:
            # Respaced betas: 1 - abar_t / abar_(previous kept t), so the kept marginals q(x_t | x_0) are unchanged.
            abar = np.cumprod(1.0 - betas)[self.timesteps]
            betas = 1 - abar / np.append(1.0, abar[:-1])
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at the first step: clip its log to the next value (ADM).
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    @classmethod
    def linear(cls, num_timesteps: int = 1000, respacing: str | None = None) -> GaussianDiffusion:
        betas = linear_betas(num_timesteps)
        kept = space_timesteps(num_timesteps, respacing) if respacing else None
        return cls(betas, kept)

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @staticmethod
    def _at(values: np.ndarray, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = torch.from_numpy(values).to(like.device)[index.to(like.device)].to(like.dtype)
        return out.view(-1, *([1] * (like.dim() - 1)))

    def original_t(self, index: torch.Tensor) -> torch.Tensor:
        """The model's timestep (on the training scale) of respaced step ``index``."""
        return torch.from_numpy(self.timesteps).to(index.device)[index]

    def q_sample(self, x0: torch.Tensor, index: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return (
            self._at(self.sqrt_alphas_cumprod, index, x0) * x0
            + self._at(self.sqrt_one_minus_alphas_cumprod, index, x0) * noise
        )

    def predict_x0(self, x: torch.Tensor, index: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (
            self._at(self.sqrt_recip_alphas_cumprod, index, x) * x
            - self._at(self.sqrt_recipm1_alphas_cumprod, index, x) * eps
        )

    def q_posterior(self, x0: torch.Tensor, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._at(self.posterior_mean_coef1, index, x) * x0 + self._at(self.posterior_mean_coef2, index, x) * x
        return mean, self._at(self.posterior_log_variance_clipped, index, x)

    def model_log_variance(
        self, var_values: torch.Tensor | None, index: torch.Tensor, like: torch.Tensor
    ) -> torch.Tensor:
        """Learned range: values in [-1, 1] interpolate log posterior variance .. log beta; fixed-small without."""
        min_log = self._at(self.posterior_log_variance_clipped, index, like)
        if var_values is None:
            return min_log.expand_as(like)
        max_log = self._at(np.log(self.betas), index, like)
        frac = (var_values + 1) / 2
        return frac * max_log + (1 - frac) * min_log


# ---- training loss ---------------------------------------------------------------------------------------------


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def training_loss(
    model: Denoiser, diffusion: GaussianDiffusion, x0: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """ADM's hybrid loss (DiT's default): MSE on eps, plus with learned sigma the variational bound term with the
    mean frozen (so it trains only the variance). The t = 0 term is a continuous Gaussian NLL, since latents
    are not 8-bit pixels (ADM's discretised decoder likelihood assumes those)."""
    b = len(x0)
    index = torch.randint(diffusion.num_steps, (b,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = diffusion.q_sample(x0, index, noise)
    out = model(x_t, diffusion.original_t(index), labels)
    c = x0.shape[1]
    eps = out[:, :c]
    loss = (eps - noise).pow(2).mean(dim=(1, 2, 3))
    if model.learn_sigma:
        frozen_x0 = diffusion.predict_x0(x_t, index, eps.detach())
        mean, _ = diffusion.q_posterior(frozen_x0, x_t, index)
        log_var = diffusion.model_log_variance(out[:, c:], index, x_t)
        true_mean, true_log_var = diffusion.q_posterior(x0, x_t, index)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).mean(dim=(1, 2, 3))
        nll = 0.5 * (math.log(2 * math.pi) + log_var + (x0 - mean) ** 2 * torch.exp(-log_var)).mean(dim=(1, 2, 3))
        loss = loss + torch.where(index == 0, nll, kl) / math.log(2.0)
    return loss.mean()


# ---- sampling with hooks ---------------------------------------------------------------------------------------
