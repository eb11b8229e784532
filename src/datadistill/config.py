"""Typed configs. Every run saves its resolved config as config.json; resuming compares against it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass
class DistillConfig:
    method: str
    data: str
    backbone: str = "efficientnet_lite0"
    ipc: int = 1
    root: str | None = None  # dataset root for torchvision / ImageNet sets
    weights: str | None = None  # local weights file or folder for the backbone
    seed: int = 3407
    val_fraction: float = 0.1
    split_seed: int = 0
    crop: int | None = None  # backbone input size; default: the backbone's own
    resolution: int | None = None  # synthetic render size; default: crop * 256/224
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (no effect on CPU)
    # Pixel optimisation (LGM / SFM)
    steps: int = 5000
    lr: float = 2e-3
    augs: int = 1  # augmented views per step (A); SFM 1, LGM 10
    param: str = "pyramid"  # pyramid | pixel
    init: str = "noise"  # noise (LGM/SFM) | real (random real images) | centroids (images nearest class means)
    grow_every: int = 200
    decorrelate: bool = True
    noise_mean: float = 0.0  # LGM augmentation noise mean (0.5 in its Nov-2025..Mar-2026 code)
    checkpoint_every: int = 100
    # SFM
    flow_norm: str = "classes"  # "classes": (C-1) as in METHODS.md; "images": the code's (mC-1)
    decouple_alpha: float | None = None  # decoupled TCDD/NCDD loss weight; None = standard SFM
    extra: dict = field(default_factory=dict)

    def validate(self) -> DistillConfig:
        if self.ipc < 1:
            raise ConfigError(f"--ipc must be at least 1, got {self.ipc}")
        if self.steps < 0 or self.augs < 1 or self.checkpoint_every < 1:
            raise ConfigError("--steps must be >= 0, --augs and --checkpoint-every >= 1")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.init not in ("noise", "real", "centroids"):
            raise ConfigError(f"--init must be noise, real or centroids, got {self.init}")
        if self.flow_norm not in ("classes", "images"):
            raise ConfigError(f"--flow-norm must be 'classes' or 'images', got {self.flow_norm}")
        if self.decouple_alpha is not None and not 0 <= self.decouple_alpha <= 1:
            raise ConfigError("--decouple-alpha must lie in [0, 1]")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("--val-fraction must lie in [0, 1)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DistillConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Fields that may change between a killed run and its resumption without changing the result.
RESUME_FREE_FIELDS = {"checkpoint_every", "device", "root"}


@dataclass
class ProbeConfig:
    """Linear probe (METHODS.md 1.7): Adam, lr = base * batch/256, cosine to 0, AugBasic, last-epoch accuracy."""

    backbone: str | None = None  # evaluation backbone; default: the distillation backbone
    weights: str | None = None
    seeds: int = 3
    first_seed: int = 3407
    epochs: int = 1000
    base_lr: float = 1e-3
    batch_size: int = 100
    views: int = 100  # cached augmented views per image (fresh views every epoch when views >= epochs)
    crop: int | None = None
    device: str = "auto"

    def validate(self) -> ProbeConfig:
        if self.seeds < 1 or self.epochs < 1 or self.views < 1 or self.batch_size < 1:
            raise ConfigError("--seeds, --epochs, --views and --batch-size must be at least 1")
        return self
