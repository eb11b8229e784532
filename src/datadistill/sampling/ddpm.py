"""The ancestral DDPM sampler with guidance hooks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.progress import progress
from ..models.generative.dit import EmbeddingTransform
from .diffusion import Denoiser, GaussianDiffusion


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
