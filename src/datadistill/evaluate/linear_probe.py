"""Linear-probe evaluation (METHODS.md 1.7), vanilla mode.

A fresh linear head on frozen evaluation-backbone features of the synthetic images, trained with Adam
(lr = base x batch/256), cosine decay to 0, AugBasic views; accuracy at the last epoch on the test split and
on the validation split (held out of train, for any selection). Test and validation features are computed
once per (data, backbone, crop) and cached; the synthetic images' augmented views are computed once per
seed in batches (``views`` of them), then the head trains on cached features, which is where the time goes
in a naive loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..augment import aug_basic
from ..config import ProbeConfig
from ..data import RealData
from ..errors import DataError
from ..models.backbones import Backbone
from ..progress import progress
from ..stats import feature_bank
from ..synset import SyntheticSet
from .results import EvalResult


def view_features(backbone: Backbone, images: torch.Tensor, views: int, crop: int, generator: torch.Generator,
                  device: torch.device, batch_size: int = 100) -> torch.Tensor:
    """Features of ``views`` AugBasic views of every image: views x N x F."""
    augment = aug_basic(crop)
    out = []
    flat = images.repeat(views, 1, 1, 1)
    with torch.inference_mode():
        for start in range(0, len(flat), batch_size):
            chunk = augment(flat[start : start + batch_size], generator)
            out.append(backbone(chunk.to(device)).float().cpu())
    return torch.cat(out).view(views, len(images), -1)


def train_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProbeConfig,
               generator: torch.Generator) -> torch.nn.Linear:
    """Train W (init N(0, 0.01^2)), b = 0 on views x N x F cached features; one view per image per epoch."""
    views, n, dim = features.shape
    head = torch.nn.Linear(dim, num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(num_classes, dim, generator=generator) * 0.01)
        head.bias.zero_()
    batch = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.base_lr * batch / 256)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=generator)
        view = torch.randint(views, (n,), generator=generator) if views < cfg.epochs else torch.full((n,), epoch)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            loss = F.cross_entropy(head(features[view[idx], idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return head


def accuracy(head: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((head(features).argmax(dim=1) == labels).float().mean())


def check_compatible(synsets: list[SyntheticSet], data: RealData) -> None:
    for s in synsets:
        if list(s.classes) != list(data.classes):
            raise DataError(f"the synthetic set's classes ({len(s.classes)}: {s.classes[:3]}...) do not match "
                            f"dataset '{data.name}' ({data.num_classes}: {data.classes[:3]}...)")


def linear_probe(
    synsets: SyntheticSet | list[SyntheticSet], data: RealData, backbone: Backbone, cfg: ProbeConfig,
    device: torch.device,
) -> EvalResult:
    """Evaluate one synthetic set over ``cfg.seeds`` seeds, or one set per seed (e.g. a Random baseline redrawn
    per seed)."""
    cfg.validate()
    synsets = synsets if isinstance(synsets, list) else [synsets] * cfg.seeds
    check_compatible(synsets, data)
    crop = cfg.crop or backbone.input_size
    test = feature_bank(data, backbone, "test", crop=crop, device=device)
    val = feature_bank(data, backbone, "val", crop=crop, device=device)
    test_x, val_x = test.tensor(), val.tensor()
    seeds = [cfg.first_seed + k for k in range(len(synsets))]
    test_acc, val_acc = [], []
    for seed, synset in progress(list(zip(seeds, synsets, strict=True)), f"linear probe @ {backbone.name}"):
        g = torch.Generator().manual_seed(seed)
        views = min(cfg.views, cfg.epochs)
        feats = view_features(backbone, synset.images, views, crop, g, device)
        head = train_head(feats, synset.labels, data.num_classes, cfg, g)
        test_acc.append(accuracy(head, test_x, test.labels))
        val_acc.append(accuracy(head, val_x, val.labels))
    return EvalResult("linear-probe", backbone.name, test_acc, val_acc, seeds,
                      {"epochs": cfg.epochs, "views": min(cfg.views, cfg.epochs), "crop": crop,
                       "base_lr": cfg.base_lr, "batch_size": cfg.batch_size, "backbone_weights": backbone.weights,
                       "num_images": len(synsets[0])})
