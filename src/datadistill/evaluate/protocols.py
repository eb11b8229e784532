"""Registry of evaluation protocols. A protocol declares its options (a dataclass, exposed on the CLI as
``datadistill eval --protocol NAME --option ...``) and a function that evaluates one synthetic set per seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from ..core.config import EvalConfig
from ..core.errors import ConfigError
from ..core.options import at_least, option
from ..core.registry import Registry
from ..data import RealData
from ..features.backbones import Backbone, load_backbone
from ..synset.set import SyntheticSet
from .results import EvalResult


@dataclass
class EvalBackboneOptions:
    eval_backbone: str | None = option(None, "evaluation backbone (default: the run's distillation backbone)")
    weights: str | None = option(None, "local weights for the evaluation backbone")
    crop: int | None = option(
        None, "evaluation input size (default: the run's crop for its own backbone, else the backbone's own)"
    )

    def validate(self) -> None:
        at_least(self, 1, "crop")


OptionsT = TypeVar("OptionsT")


@dataclass
class EvalJob(Generic[OptionsT]):
    """Everything a protocol run receives, typed by the protocol's options: ``EvalJob[ConvNetOptions]``."""

    synsets: list[SyntheticSet]  # one per seed (empty for protocols that train on real data only)
    data: RealData
    opts: OptionsT
    common: EvalConfig
    device: torch.device
    run_config: dict = field(default_factory=dict)  # the distill config of the evaluated run, if any
    models: dict[str, Backbone] = field(default_factory=dict)  # backbones already loaded, by name
    seed_list: list[int] | None = None  # this process's seeds when they are shared out under torchrun

    @property
    def all_seeds(self) -> list[int]:
        """Every seed of the evaluation, including those other processes run under torchrun."""
        return [self.common.first_seed + k for k in range(self.common.seeds)]

    @property
    def seeds(self) -> list[int]:
        """The seeds this process evaluates."""
        return self.all_seeds if self.seed_list is None else self.seed_list

    def backbone(self, name: str | None, weights: str | None = None) -> Backbone:
        """A loaded backbone by name (reused when already loaded); ``None`` means the run's own."""
        name, weights, _ = with_run_defaults(self.run_config.get("options", {}), name, weights, None)
        if name is None:
            raise ConfigError("this protocol needs a backbone: pass --eval-backbone (or evaluate a run directory)")
        if name not in self.models:
            self.models[name] = load_backbone(name, weights, self.device)
        return self.models[name].to(self.device)

    def crop_for(self, backbone: Backbone, crop: int | None) -> int:
        """The given crop, else the run's crop when it used this backbone, else the backbone's own."""
        _, _, crop = with_run_defaults(self.run_config.get("options", {}), backbone.name, None, crop)
        return int(crop) if crop else backbone.input_size


def with_run_defaults(
    run_options: dict, name: str | None, weights: str | None, crop: int | None
) -> tuple[str | None, str | None, int | None]:
    """An evaluation's backbone, weights and crop, the evaluated run's filling what is not given: its backbone when
    none is named, and its weights and crop when the backbone is the run's own (``None``: the backbone's own)."""
    own = run_options.get("backbone")
    name = name or own
    if own and name == own:
        weights = weights or run_options.get("weights")
        crop = crop or run_options.get("crop")
    return name, weights, crop


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    Options: type
    run: Callable[[EvalJob[Any]], EvalResult]
    needs_synset: bool = True
    # Under torchrun the seeds are shared out over processes. A protocol that runs collective steps per seed
    # (e.g. one cached model per seed built by rank 0) must say False.
    shard_seeds: bool = True


PROTOCOLS: Registry[Protocol] = Registry("protocol")


def register_protocol(protocol: Protocol) -> Protocol:
    return PROTOCOLS.register(protocol.name, protocol)


def get_protocol(name: str) -> Protocol:
    return PROTOCOLS.get(name)
