"""Training a network from scratch on images in memory: the shared loop of the ConvNet evaluation protocols
(docs/protocols.md) and of the expert trajectories (docs/methods/tgdd.md).

SGD with momentum and weight decay, a step schedule evaluated from the epoch number (so no scheduler state),
per-sample DSA and CutMix, all random draws from one ``torch.Generator``. Inputs go through ``InputNorm``
(grayscale conversion for single-channel networks, then per-channel normalisation) before augmentation, as in
the DSA / IDC code.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.progress import log
from ..data.augment import DSA
from ..data.memory import MemorySplit

_COMPILED: dict = {}


def no_grad_forward(
    model: nn.Module,
    x: torch.Tensor,
    features: bool = False,
    params: dict[str, torch.Tensor] | None = None,
    compile_from: int = 256,
) -> torch.Tensor:
    """``model(x, features)`` without gradients, with ``params`` (default: the model's own) as inputs.

    Batches of at least ``compile_from`` images go through ONE ``torch.compile``d graph per architecture, mode and
    input shape, shared by every network of that architecture (the parameters are inputs, not constants): DM's
    fresh random networks, TGDD's snapshots and every evaluated model reuse it. On CPU this is 1.4-2x faster than
    eager (norm + ReLU + pooling fuse; benchmarks/convnet_speed.py). Small batches stay eager (compiling would
    not pay); ``DATADISTILL_COMPILE=0`` turns it off, and a failed compile falls back to eager with a warning.
    """
    from torch.func import functional_call

    if params is None:
        params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    use = os.environ.get("DATADISTILL_COMPILE", "1") != "0" and len(x) >= compile_from
    key = (
        type(model).__name__,
        model.training,
        features,
        tuple((k, tuple(v.shape)) for k, v in params.items()),
        x.device.type,
    )
    entry = _COMPILED.get(key) if use else None
    if use and entry is None:
        skeleton = copy.deepcopy(model)

        def run(p, inp):
            return functional_call(skeleton, p, (inp,), {"features": features})

        entry = _COMPILED[key] = torch.compile(run, dynamic=False)
    with torch.no_grad():
        if entry is not None:
            try:
                return entry(params, x)
            except Exception as exc:  # noqa: BLE001 - no compiler, unsupported op...: eager is always correct
                log.warning("torch.compile failed (%s); using eager mode", str(exc).splitlines()[0])
                _COMPILED[key] = None
                os.environ["DATADISTILL_COMPILE"] = "0"
        return functional_call(model, params, (x,), {"features": features})


@dataclass
class InputNorm:
    """(x - mean) / std per channel; 3-channel input to a 1-channel network is averaged over channels first
    (exact for the grayscale sets, whose three channels are equal)."""

    mean: torch.Tensor
    std: torch.Tensor

    @property
    def channels(self) -> int:
        return len(self.mean)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            x = x.mean(dim=1, keepdim=True) if self.channels == 1 else x.expand(-1, self.channels, -1, -1)
        mean = self.mean.to(x.device, x.dtype).view(1, -1, 1, 1)
        std = self.std.to(x.device, x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    @classmethod
    def of(cls, split: MemorySplit) -> InputNorm:
        mean, std = split.channel_stats()
        return cls(mean, std)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> InputNorm:
        return cls(torch.tensor(d["mean"]), torch.tensor(d["std"]))


class FloatImages:
    """Float images in [0, 1] with labels, with the ``batch`` / ``labels`` interface of ``MemorySplit``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        return self.images if indices is None else self.images[indices]


@dataclass(frozen=True)
class Recipe:
    """How a network is trained: the DM recipe (batch 256, lr x0.1 at half) or the IDC/TGDD one (batch 64,
    x0.2 at 2/3 and 5/6, CutMix 0.5)."""

    epochs: int
    batch_size: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.5,)  # fractions of ``epochs``
    gamma: float = 0.1
    dsa: DSA | None = None
    cutmix: float = 0.0  # probability per batch
    cutmix_beta: float = 1.0
    epoch_images: int | None = None  # images per epoch (None: all)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch`` (MultiStepLR stepped once per epoch)."""
        drops = sum(epoch >= int(m * self.epochs) for m in self.milestones)
        return self.lr * self.gamma**drops


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def _cutmix(x: torch.Tensor, y: torch.Tensor, beta: float, generator: torch.Generator):
    """CutMix as in the IDC code: a box of area ~(1 - lam) pasted from a shuffled batch; lam re-computed from the
    clipped box."""
    if beta == 1.0:
        lam = float(torch.rand(1, generator=generator))
    else:
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        lam = float(np.random.default_rng(seed).beta(beta, beta))
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    h, w = x.shape[2], x.shape[3]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, (1,), generator=generator)), int(torch.randint(w, (1,), generator=generator))
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    keep = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    return x, y[perm], keep


def train_epoch(
    model: nn.Module,
    norm: InputNorm,
    source: MemorySplit | FloatImages,
    recipe: Recipe,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """One epoch (or ``recipe.epoch_images`` shuffled images) of SGD; returns the mean training loss."""
    for group in optimizer.param_groups:
        group["lr"] = recipe.lr_at(epoch)
    model.train()
    n = len(source.labels)
    order = torch.randperm(n, generator=generator)
    if recipe.epoch_images:
        order = order[: recipe.epoch_images]
    total, seen = 0.0, 0
    for start in range(0, len(order), recipe.batch_size):
        idx = order[start : start + recipe.batch_size]
        x = norm(source.batch(idx).to(device))
        y = source.labels[idx].to(device)
        if recipe.dsa is not None:
            x = recipe.dsa(x, generator)
        if recipe.cutmix > 0 and float(torch.rand(1, generator=generator)) < recipe.cutmix:
            x, y_b, keep = _cutmix(x, y, recipe.cutmix_beta, generator)
            logits = model(x)
            loss = keep * F.cross_entropy(logits, y) + (1 - keep) * F.cross_entropy(logits, y_b)
        else:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


def accuracy(
    model: nn.Module, norm: InputNorm, source: MemorySplit | FloatImages, device: torch.device, batch_size: int = 1000
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on every image of ``source``."""
    was_training = model.training
    model.eval()
    correct, n = 0, len(source.labels)
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x = norm(source.batch(idx).to(device))
        if n >= batch_size and len(x) < batch_size:  # pad the last chunk: one input shape, one compiled graph
            x = torch.cat([x, x.new_zeros(batch_size - len(x), *x.shape[1:])])
        logits = no_grad_forward(model, x, compile_from=1000)[: len(idx)]
        correct += int((logits.argmax(dim=1).cpu() == source.labels[idx]).sum())
    model.train(was_training)
    return correct / max(n, 1)
