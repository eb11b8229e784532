"""The synthetic set (what a method produces) and the image parameterisations pixel-space methods optimise."""

from .set import SyntheticSet

__all__ = ["SyntheticSet"]
