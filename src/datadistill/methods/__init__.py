"""Distillation methods, one file each, registered by name in ``METHODS`` (each module below registers its own)."""

from . import centroids, dm, dmgd, lgm, mgd3, neighbors, pgfm, random, sfm, tgdd
from .base import METHODS, Method, RunContext, get_method

__all__ = ["METHODS", "Method", "RunContext", "centroids", "dm", "dmgd", "get_method", "lgm", "mgd3", "neighbors"]
__all__ += ["pgfm", "random", "sfm", "tgdd"]
