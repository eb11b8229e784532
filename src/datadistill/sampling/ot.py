"""Entropic optimal transport (Sinkhorn), batched over a leading dimension (e.g. one problem per class).

Two solvers with the same signature, both differentiable (autograd runs through the iterations):

- ``sinkhorn_plain``: the exact variant of DMGD's released code (docs/methods/dmgd.md): Gibbs kernel
  exp(-C/eps), then ``iters`` rounds of row scaling (to ``a``) followed by column scaling (to ``b``); the plan
  is the scaled kernel. With the default 5 rounds it is *not* converged: the column marginals are exact, the
  row marginals approximate, which is what the paper's guidance used.
- ``sinkhorn_log``: the same row-then-column updates on dual potentials in the log domain (logsumexp), so a
  small ``eps`` or large costs cannot underflow the kernel to zero.

``ot_loss`` is DMGD's distribution-matching loss: both point sets projected onto the unit sphere, plain
Euclidean cost, plan from the solver, loss <P, C> with the gradient through both P and C.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError


def _check(a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float, iters: int) -> None:
    if (
        cost.shape[:-2] != a.shape[:-1]
        or cost.shape[:-2] != b.shape[:-1]
        or cost.shape[-2:] != (a.shape[-1], b.shape[-1])
    ):
        raise ConfigError(
            f"Sinkhorn: cost {tuple(cost.shape)} does not match weights {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if eps <= 0 or iters < 1:
        raise ConfigError(f"Sinkhorn needs eps > 0 and at least one iteration, got eps={eps}, iters={iters}")


def sinkhorn_plain(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float = 0.1, iters: int = 5
) -> torch.Tensor:
    """Plan P (..., N, K) for weights a (..., N), b (..., K) and cost (..., N, K), DMGD's plain-domain scheme."""
    _check(a, b, cost, eps, iters)
    plan = torch.exp(-cost / eps)
    for _ in range(iters):
        plan = plan * (a.unsqueeze(-1) / plan.sum(dim=-1, keepdim=True))
        plan = plan * (b.unsqueeze(-2) / plan.sum(dim=-2, keepdim=True))
    return plan


def sinkhorn_log(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float = 0.1, iters: int = 5
) -> torch.Tensor:
    """Same updates as ``sinkhorn_plain`` on log potentials f, g: P = exp((f + g - C) / eps).

    Zero weights are allowed (their rows/columns get zero mass)."""
    _check(a, b, cost, eps, iters)
    log_a, log_b = torch.log(a), torch.log(b)
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    for _ in range(iters):
        f = eps * (log_a - torch.logsumexp((g.unsqueeze(-2) - cost) / eps, dim=-1))
        g = eps * (log_b - torch.logsumexp((f.unsqueeze(-1) - cost) / eps, dim=-2))
    return torch.exp((f.unsqueeze(-1) + g.unsqueeze(-2) - cost) / eps)


SOLVERS = {"plain": sinkhorn_plain, "log": sinkhorn_log}


def sinkhorn(
    a: torch.Tensor, b: torch.Tensor, cost: torch.Tensor, eps: float = 0.1, iters: int = 5, domain: str = "plain"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The plan and the transport cost <P, C> (one per problem in the batch)."""
    if domain not in SOLVERS:
        raise ConfigError(f"unknown Sinkhorn domain '{domain}' (plain, log)")
    plan = SOLVERS[domain](a, b, cost, eps, iters)
    return plan, (plan * cost).sum(dim=(-2, -1))


def sphere_cost(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Euclidean (not squared) distances between the L2-normalised rows: (..., N, D) x (..., K, D) -> (..., N, K)."""
    return torch.cdist(F.normalize(source, dim=-1), F.normalize(target, dim=-1))


def ot_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    target_weights: torch.Tensor,
    source_weights: torch.Tensor | None = None,
    eps: float = 0.1,
    iters: int = 5,
    domain: str = "plain",
) -> torch.Tensor:
    """DMGD's distribution-matching loss per problem: source (..., N, D) with uniform weights by default,
    target supports (..., K, D) with masses (..., K); unit-sphere Euclidean cost; <P, C> differentiable through
    P and C."""
    if source_weights is None:
        n = source.shape[-2]
        source_weights = torch.full(source.shape[:-1], 1.0 / n, dtype=source.dtype, device=source.device)
    b = target_weights / target_weights.sum(dim=-1, keepdim=True)
    return sinkhorn(
        source_weights, b.to(source.dtype), sphere_cost(source, target.to(source.dtype)), eps, iters, domain
    )[1]
