"""``datadistill bench``: methods x protocols x backbones x IPC on one dataset, cached and resumable."""

from .plan import BenchPlan
from .runner import bench

__all__ = ["BenchPlan", "bench"]
