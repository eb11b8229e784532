"""datadistill: dataset distillation methods, baselines and evaluation protocols behind one API."""

__version__ = "0.1.0"

from .api import compute_stats, distill, evaluate, export, report_runs  # noqa: E402
from .synset import SyntheticSet  # noqa: E402

__all__ = ["SyntheticSet", "__version__", "compute_stats", "distill", "evaluate", "export", "report_runs"]
