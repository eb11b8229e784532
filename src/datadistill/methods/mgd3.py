"""MGD3: mode-guided dataset distillation with diffusion models (Chan-Santiago et al., ICML 2025; docs/methods/mgd3.md).

Modes: per class, k-means with k = IPC on the latents of the class's training images (the shared latent
space; ``--modes closest`` uses the real latent nearest each centre). Sample n of class c is guided to mode n:
at every step with respaced index above ``--stop-t`` the sample moves by ``-lambda sigma_t (x0 - m)`` after the
posterior mean and before the noise (the released sampler), then runs unguided to the end ("stop guidance").
Samples are independent, so they are drawn in batches of ``--batch-size`` across classes and slots. Same
frozen DiT, sampler and CFG as DMGD. (The paper's optional PCA-4 before k-means is not implemented.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import ConfigError
from ..core.options import option
from ..models.generative.latent import latent_bank
from ..sampling.ddpm import SamplerHook, StepState
from .base import RunContext, register
from .guided_sampling import DDPMOptions, GenerationState, GuidedSampling


@dataclass
class MGD3Options(DDPMOptions):
    mode_guidance_scale: float = option(0.1, "mode guidance scale lambda")
    stop_t: int = option(25, "no mode guidance at respaced step indices <= this (of --sampling-steps)")
    modes: str = option(
        "centroid", "guide to the k-means centres or to the real latents nearest them", ("centroid", "closest")
    )
    batch_size: int = option(100, "samples per sampler batch")

    def validate(self) -> None:
        DDPMOptions.validate(self)
        if self.batch_size < 1 or self.stop_t < -1:
            raise ConfigError("--batch-size must be >= 1 and --stop-t >= -1")
        if self.stop_t >= self.sampling_steps - 1:
            raise ConfigError(
                f"--stop-t {self.stop_t} leaves no guided step among the {self.sampling_steps} sampling "
                "steps (guidance runs at indices above it)"
            )


class ModeGuidance(SamplerHook):
    """Sample shift -lambda sigma_t (x0 - m) towards each row's mode m, above the stop step."""

    def __init__(self, modes: torch.Tensor, scale: float, stop_t: int, num_steps: int):
        self.modes, self.scale = modes, scale
        self.window = (stop_t + 1, num_steps - 1)

    def sample_shift(self, state: StepState) -> torch.Tensor:
        return -self.scale * state.sigma * (state.pred_x0 - self.modes.to(state.pred_x0))


@register
class MGD3(GuidedSampling[MGD3Options]):
    name = "mgd3"
    summary = "mode-guided diffusion: each sample pulled to one k-means mode (k = IPC) until a stop step (MGD3)"
    Options = MGD3Options

    def supports_k(self, ctx: RunContext[MGD3Options]) -> int:
        return ctx.config.ipc

    def init_param(self, ctx: RunContext[MGD3Options]) -> GenerationState:
        state = super().init_param(ctx)
        s = state.sampler
        if ctx.opts.modes == "closest":
            bank = latent_bank(ctx.data, s.space, "train")
            flat = s.supports.flatten(0, 1).cpu()
            labels = torch.arange(ctx.data.num_classes).repeat_interleave(s.supports.shape[1])
            s.supports = bank.tensor(bank.nearest(flat, labels)).view_as(s.supports).to(s.supports.device)
        return state

    def chunks(self, ctx: RunContext[MGD3Options]) -> list[list[tuple[int, int]]]:
        pairs = [(c, n) for n in range(ctx.config.ipc) for c in range(ctx.data.num_classes)]
        b = ctx.opts.batch_size
        return [pairs[i : i + b] for i in range(0, len(pairs), b)]

    def hooks(
        self,
        ctx: RunContext[MGD3Options],
        state: GenerationState,
        classes: torch.Tensor,
        slots: torch.Tensor,
        generator: torch.Generator,
    ) -> list[SamplerHook]:
        s = state.sampler
        modes = s.supports[classes.to(s.supports.device), slots.to(s.supports.device)]
        modes = modes.view(len(classes), *s.space.latent_shape)
        return [ModeGuidance(modes, ctx.opts.mode_guidance_scale, ctx.opts.stop_t, s.diffusion.num_steps)]
