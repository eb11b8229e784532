"""Typed configs. Every run saves its resolved config as config.json; resuming compares against it.

``DistillConfig`` holds what every method shares (data, IPC, seed, device, checkpoints); the method's own
options (its ``Options`` dataclass, see ``methods/``) sit in ``options`` and are resolved with their defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError
from .options import option


@dataclass
class DistillConfig:
    method: str
    data: str
    ipc: int = option(1, "images per class")
    root: str | None = option(None, "dataset root folder (torchvision / ImageNet sets)")
    seed: int = option(3407, "random seed of the run")
    val_fraction: float = option(0.1, "fraction of train held out (stratified) as the validation split")
    split_seed: int = option(0, "seed of the validation split")
    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...")
    amp: bool = option(True, "bf16 autocast on CUDA (no effect on CPU)")
    checkpoint_every: int = option(100, "write a resumable checkpoint every N steps")
    options: dict = field(default_factory=dict)  # the method's resolved options

    def validate(self) -> DistillConfig:
        if self.ipc < 1:
            raise ConfigError(f"--ipc must be at least 1, got {self.ipc}")
        if self.checkpoint_every < 1:
            raise ConfigError("--checkpoint-every must be at least 1")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("--val-fraction must lie in [0, 1)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def flat_config(d: dict) -> dict:
    """A saved ``DistillConfig`` dict with the method options lifted beside the common fields."""
    return {**{k: v for k, v in d.items() if k != "options"}, **d.get("options", {})}


# Fields that may change between a killed run and its resumption without changing the result.
RESUME_FREE_FIELDS = {"checkpoint_every", "device", "root"}


@dataclass
class EvalConfig:
    """What every evaluation protocol shares."""

    seeds: int = option(3, "evaluation seeds (mean ± std over them)")
    first_seed: int = option(
        1000,
        "seed of the first evaluation run; run k uses first_seed + k. Apart from the distillation seed (3407) "
        "and from the seeds 0, 1, 2, ... that redraw Random baselines, so that no evaluation replays the random "
        "draws that made the set it evaluates",
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...")

    def validate(self) -> EvalConfig:
        if self.seeds < 1:
            raise ConfigError("--seeds must be at least 1")
        return self
