"""datadistill: dataset distillation methods, baselines and evaluation protocols behind one API."""

from .api import compute_stats, distill, evaluate, export, report_runs
from .core.version import __version__
from .synset import SyntheticSet

__all__ = ["SyntheticSet", "__version__", "compute_stats", "distill", "evaluate", "export", "report_runs"]
