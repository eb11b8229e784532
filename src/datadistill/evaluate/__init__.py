"""Evaluation protocols."""

from .linear_probe import linear_probe
from .results import EvalResult

__all__ = ["EvalResult", "linear_probe"]
