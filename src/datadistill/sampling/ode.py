"""Flow-matching ODE sampler with velocity-guidance hooks, and PGFM's path-to-prototype
guidance (docs/methods/pgfm.md, a proposed design: every choice is an option).

The sampler integrates dx/dt = v(x, t) from ``t_start`` (0 = noise) to 1 (data) on a uniform grid with Euler or
Heun steps. The velocity is the model's, with classifier-free guidance, plus the sum of the hooks' corrections;
a hook sees the state (x_t, t, the CFG velocity v and the predicted endpoint x̂₁ = x_t + (1 - t) v) and returns
an additive velocity (or None). Heun calls the hooks at both stages, so the guidance is integrated by the same
solver as the flow ("ODE-consistent"). All samples of all classes go through in one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.errors import ConfigError
from ..core.progress import progress
from ..models.generative.flow import FlowModel


@dataclass
class FlowState:
    """What a velocity hook sees at one model evaluation."""

    step: int  # index of the ODE step (0-based)
    stage: int  # 0: Euler / Heun predictor, 1: Heun corrector
    t: float
    dt: float  # size of the current step
    x: torch.Tensor  # (B, C, H, W)
    v: torch.Tensor  # model velocity after classifier-free guidance

    @property
    def x1_hat(self) -> torch.Tensor:
        """The endpoint predicted by a straight step from here: x_t + (1 - t) v."""
        return self.x + (1 - self.t) * self.v


VelocityHook = Callable[[FlowState], "torch.Tensor | None"]


@dataclass
class SampleResult:
    latents: torch.Tensor
    nfe: int  # sequential velocity evaluations per sample (each a batched call; x2 forward passes with CFG)
    forward_passes: int  # network forward passes per sample (NFE x 2 with classifier-free guidance)


def time_grid(steps: int, t_start: float = 0.0) -> list[float]:
    if steps < 1:
        raise ConfigError(f"the ODE sampler needs at least 1 step, got {steps}")
    if not 0 <= t_start < 1:
        raise ConfigError(f"the start time must lie in [0, 1), got {t_start}")
    return [t_start + (1 - t_start) * i / steps for i in range(steps + 1)]


@torch.no_grad()
def ode_sample(
    flow: FlowModel,
    labels: torch.Tensor,
    x_start: torch.Tensor,
    steps: int = 8,
    solver: str = "euler",
    cfg_scale: float = 1.0,
    cfg_channels: int | None = None,
    hooks: Sequence[VelocityHook] = (),
    t_start: float = 0.0,
    desc: str | None = None,
) -> SampleResult:
    """Integrate the (guided) flow from ``x_start`` at ``t_start`` to t = 1 for dataset classes ``labels``."""
    if solver not in ("euler", "heun"):
        raise ConfigError(f"unknown ODE solver '{solver}' (euler or heun)")
    grid = time_grid(steps, t_start)
    x = x_start.to(flow.device).float()
    labels = labels.to(flow.device)

    def field(x: torch.Tensor, t: float, step: int, stage: int, dt: float) -> torch.Tensor:
        v = flow.velocity(x, t, labels, cfg_scale, cfg_channels)
        state = FlowState(step, stage, t, dt, x, v)
        total = v
        for hook in hooks:
            extra = hook(state)
            if extra is not None:
                total = total + extra
        return total

    steps_iter = progress(range(steps), desc, total=steps) if desc else range(steps)
    for i in steps_iter:
        t, t_next = grid[i], grid[i + 1]
        dt = t_next - t
        d = field(x, t, i, 0, dt)
        if solver == "heun":
            d2 = field(x + dt * d, t_next, i, 1, dt)
            d = (d + d2) / 2
        x = x + dt * d
    nfe = steps * (2 if solver == "heun" else 1)
    return SampleResult(x, nfe, nfe * (2 if cfg_scale != 1.0 else 1))


@dataclass
class PathToPrototype:
    """PGFM guidance: pull each trajectory's predicted endpoint towards its prototype.

    g = λ(t) (p - x̂₁) / (1 - t + δ): with λ = 1 the guided velocity is the straight path to p, so the sample
    lands on p (no diversity); λ < 1 pulls the endpoint part of the way. λ(t) = strength * s(t / t_stop) for
    t < t_stop and 0 after (s: cosine 0.5 (1 + cos πu), linear 1 - u, or constant 1), which leaves the last
    steps free to restore detail (a continuous analogue of MGD3's stop-guidance). Trust region: the guidance
    displacement per step is clipped per sample to ``trust`` times the model's, ||Δt g|| <= τ ||Δt v||.
    """

    prototypes: torch.Tensor  # (B, C, H, W), one per trajectory
    strength: float = 1.0
    t_stop: float = 0.7
    schedule: str = "cosine"
    trust: float | None = 0.5
    delta: float = 1e-3

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"unknown guidance schedule '{self.schedule}' (cosine, linear or constant)")
        if self.strength < 0 or not 0 < self.t_stop <= 1 or self.delta <= 0:
            raise ConfigError("guidance: strength >= 0, t_stop in (0, 1] and delta > 0 are required")

    def weight(self, t: float) -> float:
        if t >= self.t_stop:
            return 0.0
        u = t / self.t_stop
        shape = {"cosine": 0.5 * (1 + math.cos(math.pi * u)), "linear": 1 - u, "constant": 1.0}[self.schedule]
        return self.strength * shape

    def __call__(self, state: FlowState) -> torch.Tensor | None:
        lam = self.weight(state.t)
        if lam == 0:
            return None
        p = self.prototypes.to(state.x.device)
        g = lam * (p - state.x1_hat) / (1 - state.t + self.delta)
        if self.trust is not None:
            limit = self.trust * state.v.flatten(1).norm(dim=1)
            norm = g.flatten(1).norm(dim=1).clamp(min=1e-12)
            g = g * (limit / norm).clamp(max=1.0).view(-1, *([1] * (g.ndim - 1)))
        return g


def warm_start(prototypes: torch.Tensor, noise: torch.Tensor, t_start: float) -> torch.Tensor:
    """SDEdit-like start on the straight path from noise to the prototype: x_{t_s} = t_s p + (1 - t_s) eps."""
    return t_start * prototypes.to(noise.device) + (1 - t_start) * noise
