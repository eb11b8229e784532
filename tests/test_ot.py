"""Sinkhorn against POT (the reference implementation) on random problems."""

import numpy as np
import ot
import pytest
import torch

from datadistill.core.errors import ConfigError
from datadistill.sampling.ot import ot_loss, sinkhorn, sinkhorn_log, sinkhorn_plain, sphere_cost

# POT warns when a deliberately short run (numItermax = 5) has not converged.
pytestmark = pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")


def _problem(seed: int, n: int = 6, k: int = 9, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    cost = torch.rand(n, k, generator=g, dtype=torch.float64) * scale
    return a / a.sum(), b / b.sum(), cost


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("iters", [1, 5, 17])
def test_plain_equals_pot_iteration_by_iteration(seed, iters):
    # DMGD scales rows then columns; POT scales columns then rows. POT on the transposed problem runs the same
    # updates, so after any number of iterations the plans agree exactly (no early stop: stopThr=0).
    a, b, cost = _problem(seed)
    ref = ot.sinkhorn(b.numpy(), a.numpy(), cost.T.numpy(), 0.1, numItermax=iters, stopThr=0.0).T
    np.testing.assert_allclose(sinkhorn_plain(a, b, cost, 0.1, iters).numpy(), ref, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(sinkhorn_log(a, b, cost, 0.1, iters).numpy(), ref, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("domain", ["plain", "log"])
def test_converges_to_pot_solution(seed, domain):
    a, b, cost = _problem(seed, n=8, k=5)
    ref = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), 0.2, numItermax=20000, stopThr=1e-13)
    plan, value = sinkhorn(a, b, cost, eps=0.2, iters=3000, domain=domain)
    np.testing.assert_allclose(plan.numpy(), ref, atol=1e-10)
    assert float(value) == pytest.approx(float((ref * cost.numpy()).sum()), rel=1e-8)
    np.testing.assert_allclose(plan.sum(1).numpy(), a.numpy(), atol=1e-10)
    np.testing.assert_allclose(plan.sum(0).numpy(), b.numpy(), atol=1e-10)


def test_five_iterations_fix_columns_not_rows():
    a, b, cost = _problem(0)
    plan = sinkhorn_plain(a, b, cost, 0.1, 5)
    np.testing.assert_allclose(plan.sum(0).numpy(), b.numpy(), atol=1e-12)
    assert not np.allclose(plan.sum(1).numpy(), a.numpy(), atol=1e-6)


def test_log_domain_survives_where_plain_underflows():
    # A constant added to the cost leaves the plan unchanged, but exp(-C/eps) underflows in float32.
    a, b, cost = _problem(1)
    shifted = (cost + 15.0).float()
    assert torch.isnan(sinkhorn_plain(a.float(), b.float(), shifted, 0.1, 50)).all()
    plan = sinkhorn_log(a.float(), b.float(), shifted, 0.1, 500)
    ref = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), 0.1, numItermax=20000, stopThr=1e-13)
    np.testing.assert_allclose(plan.numpy(), ref, atol=2e-6)


def test_batched_equals_one_problem_at_a_time():
    problems = [_problem(s) for s in range(4)]
    a, b, cost = (torch.stack(t) for t in zip(*problems, strict=True))
    for domain in ("plain", "log"):
        plans, values = sinkhorn(a, b, cost, 0.1, 5, domain)
        for i, (ai, bi, ci) in enumerate(problems):
            p, v = sinkhorn(ai, bi, ci, 0.1, 5, domain)
            torch.testing.assert_close(plans[i], p)
            torch.testing.assert_close(values[i], v)


def test_ot_loss_on_the_sphere_matches_pot_and_differentiates_through_plan_and_cost():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(4, 12, generator=g, dtype=torch.float64)
    tgt = torch.randn(3, 12, generator=g, dtype=torch.float64) * 5
    mass = torch.tensor([2.0, 5.0, 3.0], dtype=torch.float64)
    cost = torch.cdist(src / src.norm(dim=1, keepdim=True), tgt / tgt.norm(dim=1, keepdim=True))
    torch.testing.assert_close(sphere_cost(src, tgt), cost)
    ref = ot.sinkhorn(mass.numpy() / 10, np.full(4, 0.25), cost.T.numpy(), 0.1, numItermax=5, stopThr=0.0).T
    x = src.clone().requires_grad_(True)
    loss = ot_loss(x, tgt, mass)
    assert float(loss.detach()) == pytest.approx(float((ref * cost.numpy()).sum()), rel=1e-10)
    (grad,) = torch.autograd.grad(loss, x)
    # central finite differences of the whole loss (plan and cost both move)
    num = torch.zeros_like(src)
    h = 1e-6
    for idx in np.ndindex(*src.shape):
        up, down = src.clone(), src.clone()
        up[idx] += h
        down[idx] -= h
        num[idx] = (ot_loss(up, tgt, mass) - ot_loss(down, tgt, mass)) / (2 * h)
    torch.testing.assert_close(grad, num, atol=1e-7, rtol=1e-5)
    # the plan's own dependence matters: the gradient with P held fixed differs
    with torch.no_grad():
        plan = sinkhorn_plain(torch.full((4,), 0.25, dtype=torch.float64), mass / 10, sphere_cost(src, tgt))
    y = src.clone().requires_grad_(True)
    (fixed,) = torch.autograd.grad((plan * sphere_cost(y, tgt)).sum(), y)
    assert not torch.allclose(fixed, grad, atol=1e-6)


def test_bad_input_is_a_config_error():
    a, b, cost = _problem(0)
    with pytest.raises(ConfigError):
        sinkhorn(a, b, cost.T)
    with pytest.raises(ConfigError):
        sinkhorn(a, b, cost, eps=0.0)
    with pytest.raises(ConfigError):
        sinkhorn(a, b, cost, domain="exp")
