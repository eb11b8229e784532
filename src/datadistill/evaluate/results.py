"""Evaluation results: per-seed numbers, mean and std (population std, as numpy's default in LGM/SFM code)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class EvalResult:
    protocol: str
    backbone: str
    test_acc: list[float]
    val_acc: list[float]
    seeds: list[int]
    details: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(self.test_acc))

    @property
    def std(self) -> float:
        return float(np.std(self.test_acc))

    @property
    def val_mean(self) -> float:
        return float(np.mean(self.val_acc))

    def summary(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}"

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": self.mean, "std": self.std, "val_mean": self.val_mean}
