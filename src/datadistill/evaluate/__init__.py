"""Evaluation protocols, registered by name in ``PROTOCOLS`` (each module below registers its own)."""

from . import from_scratch, golden, hard_label, linear_probe
from .protocols import PROTOCOLS, EvalJob, Protocol, get_protocol, register_protocol
from .results import EvalResult

__all__ = ["PROTOCOLS", "EvalJob", "EvalResult", "Protocol", "get_protocol", "register_protocol"]
__all__ += ["from_scratch", "golden", "hard_label", "linear_probe"]
