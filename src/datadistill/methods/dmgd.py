"""DMGD: training-free dual matching guided diffusion (Wang et al., CVPR 2026; docs/methods/dmgd.md).

A frozen class-conditional latent DiT is sampled (50 DDPM steps, CFG 4) with two guidance signals:

- **Semantic matching** (``SemanticMatching``): at every step the class embedding e (and the null embedding of
  the CFG half) is annealed with a random other class's embedding e* and uniform noise xi:
  ``e~ = sqrt(l) e + b_n sqrt(1-l) xi + r b_s sqrt(1-l) e*``, re-standardised to e's scalar mean and std, with
  l = 0 above t_up (900), 1 below t_low (500), linear between, and r = [t <= t_up] (the released code). The
  paper's formula ``sqrt(l) e + (1 - sqrt(l)) (b_s e* + b_n n)`` with anisotropic Gaussian n is ``--semantic
  paper`` (our reading of "anisotropic": n ~ N(0, diag(s^2)), s the per-dimension std of the label table).
- **Distribution matching** (``OTGuidance``): inside respaced steps [30, 45], the posterior mean moves by
  ``-g sigma_t grad_x L_OT``, L_OT the 5-iteration plain Sinkhorn distance (eps 0.1, unit sphere) between the
  class's memory + the current x0 prediction (uniform weights) and K = 10 k-means supports of the class latents
  (weights = cluster masses); eps is held fixed, so the gradient needs no backprop through the DiT.
- **Greedy progressive matching**: sample n of a class sees samples 1..n-1 as frozen source mass.

Batched across classes (``--batch classes``, default): the memory is per class, so step n draws sample n of
every class in one batch; ``--batch one`` draws one image at a time in class-major order, as the released code.
Plain sampling and the ablations are options: ``--semantic off --ot off`` is plain DiT sampling through the
same sampler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.errors import ConfigError
from ..core.options import at_least, option
from ..models.generative.dit import EmbeddingTransform
from ..sampling.ddpm import SamplerHook, StepState
from ..sampling.ot import ot_loss
from .base import RunContext, register
from .guided_sampling import DDPMOptions, GenerationState, GuidedSampling


@dataclass
class DMGDOptions(DDPMOptions):
    semantic: str = option(
        "code", "semantic matching: the released code's formula, the paper's, or off", ("code", "paper", "off")
    )
    t_upper: int = option(900, "semantic matching: above this timestep (of 1000) only noise and no class label")
    t_lower: int = option(500, "semantic matching: below this timestep the class embedding is kept as is")
    noise_weight: float = option(0.06, "semantic matching: weight of the noise (beta_n)")
    label_weight: float = option(0.01, "semantic matching: weight of the random other label (beta_s)")
    ot: bool = option(True, "distribution-matching (Sinkhorn OT) guidance")
    guidance_scale: float = option(0.5, "OT guidance scale g (code default 0.5; README example 0.05)")
    supports: int = option(10, "k-means supports K per class for the OT target")
    ot_epsilon: float = option(0.1, "Sinkhorn entropic regularisation")
    ot_iters: int = option(5, "Sinkhorn iterations")
    ot_domain: str = option(
        "plain", "Sinkhorn in the plain domain (the released code) or the log domain (stable)", ("plain", "log")
    )
    window_low: int = option(30, "OT guidance from this respaced step index (of --sampling-steps; inclusive)")
    window_high: int = option(45, "OT guidance up to this respaced step index (inclusive)")
    memory: bool = option(True, "greedy progressive matching: earlier samples of the class are source mass")
    batch: str = option(
        "classes",
        "draw sample n of every class in one batch, or one image at a time (released code)",
        ("classes", "one"),
    )

    def validate(self) -> None:
        DDPMOptions.validate(self)
        if not 0 <= self.t_lower < self.t_upper <= 1000:
            raise ConfigError("need 0 <= --t-lower < --t-upper <= 1000")
        if self.supports < 1 or self.ot_iters < 1 or self.ot_epsilon <= 0:
            raise ConfigError("--supports and --ot-iters must be >= 1 and --ot-epsilon > 0")
        at_least(self, 0, "noise_weight", "label_weight", "window_low")
        if self.window_low > self.window_high:
            raise ConfigError("--window-low must not exceed --window-high")
        if self.ot and self.window_low >= self.sampling_steps:
            raise ConfigError(
                f"the OT guidance window [{self.window_low}, {self.window_high}] lies outside the "
                f"{self.sampling_steps} sampling steps (indices 0..{self.sampling_steps - 1}): set "
                "--window-low / --window-high"
            )


def annealing(t: int, t_upper: int, t_lower: int) -> tuple[float, float]:
    """(lambda_t, r_t) of semantic matching at timestep t (training scale)."""
    if t > t_upper:
        return 0.0, 0.0
    if t < t_lower:
        return 1.0, 1.0
    return (t_upper - t) / (t_upper - t_lower), 1.0


class SemanticMatching(SamplerHook):
    """Label-embedding annealing (see the module docstring). ``other`` holds the model label y* of each row."""

    def __init__(self, other: torch.Tensor, opts: DMGDOptions, generator: torch.Generator):
        self.other, self.opts, self.generator = other, opts, generator

    def embedding(self, index: int, t: int, labels: torch.Tensor) -> EmbeddingTransform | None:
        lam, use_label = annealing(t, self.opts.t_upper, self.opts.t_lower)
        paper = self.opts.semantic == "paper"
        if lam == 1.0:
            return None  # both formulas reduce to the plain embedding
        noise: dict[str, torch.Tensor] = {}  # drawn once per step, shared by every block's table

        def transform(emb: torch.Tensor, table: torch.nn.Embedding) -> torch.Tensor:
            rows, dim = emb.shape
            if "xi" not in noise:
                draw = torch.randn if paper else torch.rand
                noise["xi"] = draw(rows, dim, generator=self.generator).to(emb)
            other = table(self.other.to(emb.device)).to(emb)
            other = other.repeat(rows // len(other), 1)
            bn, bs = self.opts.noise_weight, self.opts.label_weight
            if paper:
                weight = table.weight[:-1] if table.weight.shape[0] > 2 else table.weight  # without the null row
                scale = weight.std(dim=0).to(emb)
                k = math.sqrt(lam)
                return k * emb + (1 - k) * (bs * other + bn * noise["xi"] * scale)
            mixed = (
                math.sqrt(lam) * emb
                + bn * math.sqrt(1 - lam) * noise["xi"]
                + use_label * bs * math.sqrt(1 - lam) * other
            )
            # Scalar re-standardisation over each sample's rows (its conditional and null rows), i.e. over the
            # whole tensor of the released code's batch of one.
            groups = rows // len(self.other)
            e = emb.view(groups, -1, dim).transpose(0, 1)
            m = mixed.view(groups, -1, dim).transpose(0, 1)
            dims = (1, 2)
            out = (m - m.mean(dims, keepdim=True)) / m.std(dims, keepdim=True) * e.std(dims, keepdim=True) + e.mean(
                dims, keepdim=True
            )
            return out.transpose(0, 1).reshape(rows, dim)

        return transform


class OTGuidance(SamplerHook):
    """Posterior-mean shift -g sigma_t grad_{x_t} L_OT(memory + x0(x_t), supports), rows independent."""

    def __init__(self, memory: torch.Tensor, supports: torch.Tensor, masses: torch.Tensor, opts: DMGDOptions):
        self.memory, self.supports, self.masses, self.opts = memory, supports, masses, opts
        self.window = (opts.window_low, opts.window_high)

    def mean_shift(self, state: StepState) -> torch.Tensor:
        # float32 even under bf16 autocast: exp(-C / eps) and the scalings need the precision
        with torch.enable_grad(), torch.autocast(state.x.device.type, enabled=False):
            x = state.x.detach().float().requires_grad_(True)
            x0 = state.predict_x0(x).flatten(1)[:, None]
            source = torch.cat([self.memory, x0], dim=1) if self.memory.shape[1] else x0
            loss = ot_loss(
                source,
                self.supports,
                self.masses,
                eps=self.opts.ot_epsilon,
                iters=self.opts.ot_iters,
                domain=self.opts.ot_domain,
            )
            # Each row's loss depends only on its own x: the gradient of the sum is every row's own gradient.
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return -self.opts.guidance_scale * state.sigma * grad.to(state.mean.dtype)


@register
class DMGD(GuidedSampling[DMGDOptions]):
    name = "dmgd"
    summary = "training-free guided diffusion: semantic label annealing + Sinkhorn OT to k-means supports (DMGD)"
    Options = DMGDOptions

    def supports_k(self, ctx: RunContext[DMGDOptions]) -> int:
        return ctx.opts.supports

    def chunks(self, ctx: RunContext[DMGDOptions]) -> list[list[tuple[int, int]]]:
        c, ipc = ctx.data.num_classes, ctx.config.ipc
        if ctx.opts.batch == "one":
            return [[(k, n)] for k in range(c) for n in range(ipc)]
        return [[(k, n) for k in range(c)] for n in range(ipc)]

    def hooks(
        self,
        ctx: RunContext[DMGDOptions],
        state: GenerationState,
        classes: torch.Tensor,
        slots: torch.Tensor,
        generator: torch.Generator,
    ) -> list[SamplerHook]:
        opts, s = ctx.opts, state.sampler
        hooks: list[SamplerHook] = []
        num_classes = ctx.data.num_classes
        # y* != c, uniform over the other classes (drawn even when unused, so ablations share the noise stream)
        other = torch.randint(max(1, num_classes - 1), (len(classes),), generator=generator)
        other = other + (other >= classes).long() if num_classes > 1 else classes
        if opts.semantic != "off":
            hooks.append(SemanticMatching(s.class_ids[other.to(s.class_ids.device)], opts, generator))
        if opts.ot:
            n = int(slots[0]) if opts.memory else 0  # every row of a chunk is at the same slot
            rows = classes.to(state.latents.device)
            memory = state.latents[rows, :n].flatten(2).float()
            hooks.append(OTGuidance(memory, s.supports[rows].float(), s.masses[rows].float(), opts))
        return hooks
