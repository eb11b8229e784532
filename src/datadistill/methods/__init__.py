"""Distillation methods, one file each, registered by name (every module here is imported)."""

import importlib
import pkgutil

from .base import METHODS, Method, RunContext, get_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "RunContext", "get_method"]
