"""Distillation methods, one file each, registered by name."""

from . import centroids, random, sfm  # noqa: F401 - registration side effect
from .base import METHODS, Method, RunContext, get_method

__all__ = ["METHODS", "Method", "RunContext", "get_method"]
