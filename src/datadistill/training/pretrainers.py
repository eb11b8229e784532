"""Registry of models the toolkit trains itself (``datadistill pretrain KIND``): small autoencoders, flow and
diffusion models for the offline defaults, expert trajectories, ... Each kind declares its options and a
``run`` that trains (resumably) or reuses a cached model and returns its folder. The modules of this package
register their kinds; importing the package imports them all.

Trained models live in ``$DATADISTILL_CACHE/models/KIND/KEY/`` where KEY fingerprints the data and options,
written atomically (a folder is complete or absent); a hidden checkpoint file beside it holds the resumable state
(``CachedModel``). ``weight_ema`` is the EMA of the weights that the generative trainers save.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..core.io import atomic_dir, cache_root, remove_checkpoint
from ..core.registry import Registry
from ..data import RealData


@dataclass(frozen=True)
class Pretrainer:
    name: str
    summary: str
    Options: type
    run: Callable[[RealData, Any, torch.device], Path]  # returns the folder of the trained (or cached) model


PRETRAINERS: Registry[Pretrainer] = Registry("pretrainer")


def register_pretrainer(pretrainer: Pretrainer) -> Pretrainer:
    return PRETRAINERS.register(pretrainer.name, pretrainer)


def get_pretrainer(name: str) -> Pretrainer:
    return PRETRAINERS.get(name)


def model_dir(kind: str, ident: dict) -> Path:
    """The cache folder of a trained model of ``kind`` identified by ``ident`` (data fingerprint, options)."""
    key = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_root() / "models" / kind / key


def checkpoint_path(kind: str, ident: dict) -> Path:
    """Where a training run of that model keeps its resumable checkpoint (outside the atomic model folder)."""
    folder = model_dir(kind, ident)
    return folder.parent / f".{folder.name}.checkpoint.pt"


@dataclass(frozen=True)
class CachedModel:
    """The cache entry of one trained model: its folder, the file whose presence marks it complete, and the
    resumable checkpoint of its training run."""

    kind: str
    ident: dict
    marker: str = "config.json"

    @property
    def folder(self) -> Path:
        return model_dir(self.kind, self.ident)

    @property
    def checkpoint(self) -> Path:
        return checkpoint_path(self.kind, self.ident)

    def done(self) -> bool:
        return (self.folder / self.marker).exists()

    def save(self, write: Callable[[Path], None]) -> Path:
        """``write(tmp)`` fills a temporary folder that then replaces the model folder in one rename; the
        checkpoint goes once the model is saved. Returns the folder."""
        with atomic_dir(self.folder) as tmp:
            write(tmp)
        remove_checkpoint(self.checkpoint)
        return self.folder


def weight_ema(model: nn.Module, decay: float, warmup: bool = False) -> AveragedModel:
    """An exponential moving average of ``model``'s parameters, starting at their current values (``.module`` is
    the averaged network). ``update_parameters(model)`` after training step i moves it by 1 - d toward the model:
    d = ``decay``, or with ``warmup`` min(decay, (1 + i) / (10 + i)), so a short run does not keep the init."""

    def average(ema_params: list, params: list, n_averaged: torch.Tensor) -> None:
        d = decay
        if warmup:
            step = int(n_averaged)  # the first update copied the initial weights, then one update per step
            d = min(decay, (1 + step) / (10 + step))
        get_ema_multi_avg_fn(d)(ema_params, params, n_averaged)

    ema = AveragedModel(model, multi_avg_fn=average)
    ema.update_parameters(model)  # AveragedModel's first update copies: the average starts at the initial weights
    return ema.requires_grad_(False)
