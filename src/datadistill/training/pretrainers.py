"""Registry of models the toolkit trains itself (``datadistill pretrain KIND``): small autoencoders, flow and
diffusion models for the offline defaults, expert trajectories, ... Each kind declares its options and a
``run`` that trains (resumably) or reuses a cached model and returns its folder. The modules of this package
register their kinds; importing the package imports them all.

Trained models live in ``$DATADISTILL_CACHE/models/KIND/KEY/`` where KEY fingerprints the data and options,
written atomically (a folder is complete or absent); ``checkpoints/`` beside it holds the resumable state.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.io import cache_root
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
