"""Evaluation protocols, registered by name in ``PROTOCOLS`` (every module here is imported)."""

import importlib
import pkgutil

from .protocols import PROTOCOLS, EvalJob, Protocol, get_protocol, register_protocol
from .results import EvalResult

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PROTOCOLS", "EvalJob", "EvalResult", "Protocol", "get_protocol", "register_protocol"]
