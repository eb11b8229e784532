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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ...errors import ConfigError
from ...progress import progress

# (emb, table) -> new emb. emb: 2B rows with CFG (the B conditional rows, then their B null rows) or B rows;
# table: the model's label embedding (an nn.Embedding: table(labels), table.weight; the null label is its last row).
EmbeddingTransform = Callable[[torch.Tensor, torch.nn.Embedding], torch.Tensor]


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


@dataclass
class StepState:
    """What a hook sees at one sampling step (after the model call and CFG)."""

    index: int  # respaced step index (S-1 .. 0)
    t: int  # the model's timestep on the training scale
    x: torch.Tensor  # x_t (B, C, H, W)
    eps: torch.Tensor  # guided eps, no grad
    pred_x0: torch.Tensor
    mean: torch.Tensor  # posterior mean (before any shift)
    log_variance: torch.Tensor
    labels: torch.Tensor
    diffusion: GaussianDiffusion

    @property
    def sigma(self) -> torch.Tensor:
        """The step's standard deviation exp(log_variance / 2)."""
        return torch.exp(0.5 * self.log_variance)

    def predict_x0(self, x: torch.Tensor) -> torch.Tensor:
        """x0 from ``x`` with eps held fixed: differentiable in ``x`` (slope 1/sqrt(abar)), no model backprop."""
        idx = torch.full((len(x),), self.index, dtype=torch.long)
        return self.diffusion.predict_x0(x, idx, self.eps)


class SamplerHook:
    """Base class: override what you need. ``window`` = (low, high) respaced indices, inclusive; None = always."""

    window: tuple[int, int] | None = None

    def active(self, index: int) -> bool:
        return self.window is None or self.window[0] <= index <= self.window[1]

    def embedding(self, index: int, t: int, labels: torch.Tensor) -> EmbeddingTransform | None:
        return None

    def mean_shift(self, state: StepState) -> torch.Tensor | None:
        return None

    def sample_shift(self, state: StepState) -> torch.Tensor | None:
        return None


def _chain(transforms: list[EmbeddingTransform]) -> EmbeddingTransform | None:
    if not transforms:
        return None
    if len(transforms) == 1:
        return transforms[0]

    def apply(emb: torch.Tensor, table: torch.nn.Embedding) -> torch.Tensor:
        for fn in transforms:
            emb = fn(emb, table)
        return emb

    return apply


def guided_eps(
    model: Denoiser,
    x: torch.Tensor,
    t: torch.Tensor,
    labels: torch.Tensor,
    cfg_scale: float,
    cfg_channels: int | None,
    transform: EmbeddingTransform | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One model call with classifier-free guidance: eps (B, C, ...) and variance values (or None).

    The conditional and null rows run in one batch (conditional first). CFG applies to the first
    ``cfg_channels`` channels (all when None); the other channels and the variance come from the conditional
    output, as in DiT's ``forward_with_cfg``."""
    c = x.shape[1]
    if cfg_scale == 1.0:
        out = model(x, t, labels, transform)
        return out[:, :c], (out[:, c:] if model.learn_sigma else None)
    null = torch.full_like(labels, model.null_class)
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]), transform)
    cond, uncond = out.chunk(2)
    k = c if cfg_channels is None else min(cfg_channels, c)
    eps = cond[:, :c].clone()
    eps[:, :k] = uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k])
    return eps, (cond[:, c:] if model.learn_sigma else None)


@torch.no_grad()
def ddpm_sample(
    model: Denoiser,
    diffusion: GaussianDiffusion,
    labels: torch.Tensor,
    noise: torch.Tensor,
    generator: torch.Generator,
    cfg_scale: float = 4.0,
    cfg_channels: int | None = 3,
    hooks: Sequence[SamplerHook] = (),
    clip_x0: float | None = None,
    desc: str | None = None,
) -> torch.Tensor:
    """Ancestral sampling from ``noise`` (B, C, H, W) for ``labels`` (B,). Step noise is drawn from ``generator``
    on the CPU (device independent). Hooks run under ``torch.enable_grad`` when they need gradients."""
    x = noise
    steps = list(range(diffusion.num_steps))[::-1]
    for i in progress(steps, desc, total=len(steps)) if desc else steps:
        index = torch.full((len(x),), i, dtype=torch.long)
        t = diffusion.original_t(index).to(x.device)
        t_int = int(diffusion.timesteps[i])
        active = [h for h in hooks if h.active(i)]
        transform = _chain([fn for h in active if (fn := h.embedding(i, t_int, labels)) is not None])
        eps, var_values = guided_eps(model, x, t, labels, cfg_scale, cfg_channels, transform)
        x0 = diffusion.predict_x0(x, index, eps)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        mean, _ = diffusion.q_posterior(x0, x, index)
        log_var = diffusion.model_log_variance(var_values, index, x)
        state = StepState(i, t_int, x, eps, x0, mean, log_var, labels, diffusion)
        for h in active:
            shift = h.mean_shift(state)
            if shift is not None:
                mean = mean + shift
        for h in active:
            shift = h.sample_shift(state)
            if shift is not None:
                mean = mean + shift
        if i > 0:
            mean = mean + torch.exp(0.5 * log_var) * torch.randn(x.shape, generator=generator).to(x.device)
        x = mean
    return x
