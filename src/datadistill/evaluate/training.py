"""The small trainable maps of the linear-probe family (heads, projectors) and their shared schedule, and the
validation-selected training of a network from scratch shared by the from-scratch protocols."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from ..core.progress import log, progress
from ..features.bank import FeatureBank
from ..models.architectures import ModelSpec, build_model
from ..training import supervised
from ..training.supervised import FloatImages, InputNorm, Recipe, make_optimizer, train_epoch


def new_head(in_dim: int, num_classes: int, generator: torch.Generator) -> nn.Linear:
    """A linear head initialised as in LGM's probe: W ~ N(0, 0.01^2), b = 0."""
    head = nn.Linear(in_dim, num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(num_classes, in_dim, generator=generator) * 0.01)
        head.bias.zero_()
    return head


PROJECTOR_INITS = ("default", "identity", "zero")


def new_projector(in_dim: int, out_dim: int, generator: torch.Generator, init: str = "default") -> nn.Linear:
    """``nn.Linear(F_e, F_d)``. ``default``: PyTorch's initialisation (the original), drawn from ``generator``;
    ``identity``: W = I (rectangular when the sizes differ: the first min(F_e, F_d) features pass through), b = 0;
    ``zero``: W = 0, b = 0. A projector fitted on a few images only moves W along the directions their features
    span, so the start decides what every other direction of a test feature maps to."""
    proj = nn.Linear(in_dim, out_dim)
    with torch.no_grad():
        if init == "default":
            nn.init.kaiming_uniform_(proj.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(in_dim)
            proj.bias.uniform_(-bound, bound, generator=generator)
            return proj
        if init == "identity":
            nn.init.eye_(proj.weight)
        else:
            proj.weight.zero_()
        proj.bias.zero_()
    return proj


def copy_head(head: nn.Linear) -> nn.Linear:
    clone = nn.Linear(head.in_features, head.out_features)
    clone.load_state_dict(head.state_dict())
    return clone


def fit(
    groups: list[tuple[nn.Module, float]],
    n: int,
    views: int,
    epochs: int,
    batch_size: int,
    batch_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    desc: str | None = None,
) -> None:
    """The probe schedule shared by every mode: Adam with lr = base x batch/256 per group, cosine to 0 over
    ``epochs`` passes of shuffled batches; each image contributes one of its cached views per epoch."""
    with single_thread():
        _fit(groups, n, views, epochs, batch_size, batch_loss, generator, desc)


@contextmanager
def single_thread():
    """Run tiny linear-map updates on one thread: intra-op threading only adds overhead at these sizes (and
    costs over 10x when the cores are shared with other work)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit(groups, n, views, epochs, batch_size, batch_loss, generator, desc) -> None:
    batch = min(batch_size, n)
    optimizer = torch.optim.Adam([{"params": m.parameters(), "lr": lr * batch / 256} for m, lr in groups])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * math.ceil(n / batch))
    epochs_iter = progress(range(epochs), desc, total=epochs) if desc else range(epochs)
    for epoch in epochs_iter:
        order = torch.randperm(n, generator=generator)
        view = torch.randint(views, (n,), generator=generator) if views < epochs else torch.full((n,), epoch % views)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            loss = batch_loss(idx, view[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()


def accuracy(predict: Callable[[torch.Tensor], torch.Tensor], bank: FeatureBank, chunk: int = 8192) -> float:
    """Top-1 accuracy of ``predict`` on a cached split, read ``chunk`` rows at a time (as float32) from its memory
    map, so a large test or validation split is never held whole."""
    n = len(bank.labels)
    correct = 0
    with torch.no_grad():
        for start in range(0, n, chunk):
            rows = torch.arange(start, min(start + chunk, n))
            correct += int((predict(bank.tensor(rows)).argmax(dim=1) == bank.labels[rows]).sum())
    return correct / max(n, 1)


def fit_and_select(
    spec: ModelSpec,
    norm: InputNorm,
    source: FloatImages,
    recipe: Recipe,
    val,
    test,
    seed: int,
    val_every: int,
    device: torch.device,
    optimizer: Callable[[nn.Module, Recipe], torch.optim.Optimizer] = make_optimizer,
) -> dict:
    """Train ``spec`` from ``seed`` for ``recipe.epochs`` epochs (``optimizer(model, recipe)``); validation every
    ``val_every`` epochs and at the last picks the weights to test. Returns the selected epoch, its test and
    validation accuracy, the last epoch's test accuracy and the validation curve."""
    generator = torch.Generator().manual_seed(seed)
    model = build_model(spec, generator).to(device)
    opt = optimizer(model, recipe)
    best = (-1.0, 0, None)
    curve = []
    for epoch in progress(range(recipe.epochs), f"{spec.arch} seed {seed}", total=recipe.epochs):
        train_epoch(model, norm, source, recipe, epoch, opt, generator, device)
        done = epoch + 1
        if done % val_every == 0 or done == recipe.epochs:
            v = supervised.accuracy(model, norm, val, device)
            curve.append((done, round(v, 5)))
            if v > best[0]:
                best = (v, done, copy.deepcopy(model.state_dict()))
    last_test = supervised.accuracy(model, norm, test, device)
    best_val, best_epoch, state = best
    if best_epoch == recipe.epochs:
        best_test = last_test
    else:
        model.load_state_dict(state)
        best_test = supervised.accuracy(model, norm, test, device)
    log.info(
        "%s seed %d: test %.4f at val-selected epoch %d (last %.4f)", spec.arch, seed, best_test, best_epoch, last_test
    )
    return {"test": best_test, "val": best_val, "epoch": best_epoch, "test_last": last_test, "val_curve": curve}
