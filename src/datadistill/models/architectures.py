"""Registry of the networks trained from scratch (evaluation, expert trajectories, DM's random embedders).

Every model has ``embed(x)`` (the feature before the classifier), ``forward(x, features=False)`` and
``feat_dim``. Parameters are initialised from a ``torch.Generator`` (PyTorch's default scheme, drawn from
it), so a model is a function of its seed on every device and a run that redraws networks resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..core.errors import ConfigError
from ..core.registry import Registry
from .convnet import ConvNet
from .resnet import ResNet, resnet_ap_init_


@dataclass(frozen=True)
class Architecture:
    name: str
    summary: str
    build: Callable[..., nn.Module]  # (num_classes, channels, resolution, width, depth) -> module
    init: Callable[[nn.Module, torch.Generator | None], None] | None = None  # applied after the default init


def _convnet(norm: str):
    def build(num_classes, channels, resolution, width=None, depth=None):
        return ConvNet(num_classes, channels, resolution, width or 128, depth, norm)

    return build


def _resnet(depth: int, norm: str, ap: bool = False):
    def build(num_classes, channels, resolution, width=None, depth_override=None):
        return ResNet(depth, num_classes, channels, resolution, norm, avgpool_down=ap, width=width or 64)

    return build


ARCHITECTURES: Registry[Architecture] = Registry("architecture")
ARCHITECTURES.register_each(
    [
        Architecture(
            "convnet",
            "ConvNet-D, width 128, instance norm, ReLU, avg pool (depth from the resolution)",
            _convnet("instance"),
        ),
        Architecture("convnet-bn", "ConvNet-D with batch norm", _convnet("batch")),
        Architecture("convnet-nn", "ConvNet-D without normalisation", _convnet("none")),
        Architecture("resnet10-bn", "ResNet-10, batch norm (cross-architecture)", _resnet(10, "batch")),
        Architecture("resnet10-in", "ResNet-10, instance norm", _resnet(10, "instance")),
        Architecture("resnet18-bn", "ResNet-18, batch norm (cross-architecture)", _resnet(18, "batch")),
        Architecture("resnet18-in", "ResNet-18, instance norm", _resnet(18, "instance")),
        Architecture(
            "resnet10-ap",
            "ResNet-10-AP: average-pool downsampling, instance norm (ImageNet-subset protocols)",
            _resnet(10, "instance", ap=True),
            resnet_ap_init_,
        ),
    ]
)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network (saved beside trained weights)."""

    arch: str
    num_classes: int
    channels: int
    resolution: int
    width: int | None = None
    depth: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def check_arch(name: str) -> Architecture:
    return ARCHITECTURES.get(name)


def build_model(spec: ModelSpec, generator: torch.Generator | None = None) -> nn.Module:
    """The network of ``spec``, initialised from ``generator`` (or torch's global RNG when None)."""
    arch = check_arch(spec.arch)
    try:
        model = arch.build(spec.num_classes, spec.channels, spec.resolution, spec.width, spec.depth)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    init_parameters_(model, generator)
    if arch.init is not None:
        arch.init(model, generator)
    return model


def init_parameters_(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """PyTorch's default initialisation of conv / linear layers (Kaiming-uniform, a = sqrt 5; bias uniform in
    +-1/sqrt(fan_in)) and norm layers (weight 1, bias 0, fresh running statistics), with draws from ``generator``.
    Re-initialising in place lets DM draw a fresh random network every step without building a module."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in = m.weight[0].numel()
                    bound = 1 / math.sqrt(fan_in)
                    m.bias.uniform_(-bound, bound, generator=generator)
            elif isinstance(m, nn.GroupNorm | nn.BatchNorm2d):
                if m.weight is not None:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
    return model
