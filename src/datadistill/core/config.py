"""Typed configs. Every run saves its resolved config as config.json; resuming compares against it.

``DistillConfig`` holds what every method shares (data, IPC, seed, device, checkpoints); the method's own
options (its ``Options`` dataclass, see ``methods/``) sit in ``options`` and are resolved with their defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError
from .options import option

WORKERS_HELP = "processes decoding image files (default: one per available core; 0: in the main process)"
FIRST_SEED_HELP = (
    "seed of the first evaluation run; run k uses first_seed + k. Apart from the distillation seed (3407) "
    "and from the seeds 0, 1, 2, ... that redraw Random baselines, so that no evaluation replays the random "
    "draws that made the set it evaluates"
)
SKIP_CORRUPT_HELP = "leave unreadable image files out (one warning with their count) instead of stopping at the first"


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
    workers: int | None = option(None, WORKERS_HELP)
    skip_corrupt: bool = option(False, SKIP_CORRUPT_HELP)
    options: dict = field(default_factory=dict)  # the method's resolved options

    def validate(self) -> DistillConfig:
        if self.ipc < 1:
            raise ConfigError(f"--ipc must be at least 1, got {self.ipc}")
        if self.checkpoint_every < 1:
            raise ConfigError("--checkpoint-every must be at least 1")
        check_val_fraction(self.val_fraction)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_val_fraction(value: float) -> None:
    if not 0 <= value < 1:  # NaN too
        raise ConfigError(f"--val-fraction must lie in [0, 1), got {value}")


def flat_config(d: dict) -> dict:
    """A saved ``DistillConfig`` dict with the method options lifted beside the common fields; a common field
    saved before it existed reads as its default (so older runs still resume)."""
    defaults = {f.name: f.default for f in dataclasses.fields(DistillConfig) if f.default is not dataclasses.MISSING}
    common = {**defaults, **{k: v for k, v in d.items() if k != "options"}}
    return {**common, **d.get("options", {})}


# Fields (common or method options) that may change between a killed run and its resumption without changing the
# result; they are no part of a run's identity.
RESUME_FREE_FIELDS = {"checkpoint_every", "device", "root", "workers", "view_chunk"}


@dataclass
class EvalConfig:
    """What every evaluation protocol shares."""

    seeds: int = option(3, "evaluation seeds (mean ± std over them)")
    first_seed: int = option(1000, FIRST_SEED_HELP)
    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...")
    workers: int | None = option(None, WORKERS_HELP)
    skip_corrupt: bool | None = option(None, SKIP_CORRUPT_HELP + " (default: as the run was distilled)")

    def validate(self) -> EvalConfig:
        if self.seeds < 1:
            raise ConfigError("--seeds must be at least 1")
        return self
