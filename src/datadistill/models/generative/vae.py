"""The offline latent autoencoder's network: a small KL autoencoder (TinyVAE) and its loader (its training is in
``training/vae.py``).

Architecture: per resolution level a stride-2 conv then a residual block, mirrored with nearest upsampling in the
decoder, GroupNorm + SiLU; downsampling factor ``2**levels`` (28 px -> 4 x 7 x 7 with the defaults).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import WeightsError, first_line

TINY_FORMAT = "datadistill.tiny-vae/1"


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TinyVAE(nn.Module):
    """``encode(x in [-1,1]) -> (mean, logvar)``, ``decode(z) -> x in [-1,1]`` (unclamped)."""

    def __init__(
        self, image_size: int = 28, latent_channels: int = 4, width: int = 16, levels: int = 2, in_channels: int = 3
    ):
        super().__init__()
        self.config = {
            "image_size": image_size,
            "latent_channels": latent_channels,
            "width": width,
            "levels": levels,
            "in_channels": in_channels,
        }
        widths = [width * min(2**i, 2) for i in range(levels + 1)]  # e.g. 32, 64, 64
        self.sizes = [image_size]
        for _ in range(levels):
            self.sizes.append((self.sizes[-1] + 1) // 2)
        enc: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for i in range(levels):
            enc += [nn.SiLU(), nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1), ResBlock(widths[i + 1])]
        enc += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        self.dec_in = nn.Sequential(nn.Conv2d(latent_channels, widths[-1], 3, padding=1), ResBlock(widths[-1]))
        self.ups = nn.ModuleList()
        for i in reversed(range(levels)):
            self.ups.append(
                nn.ModuleDict({"conv": nn.Conv2d(widths[i + 1], widths[i], 3, padding=1), "block": ResBlock(widths[i])})
            )
        self.dec_out = nn.Sequential(_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], in_channels, 3, padding=1))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.config["latent_channels"], self.sizes[-1], self.sizes[-1]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.dec_in(z)
        for up, size in zip(self.ups, reversed(self.sizes[:-1]), strict=True):
            h = up["block"](up["conv"](F.interpolate(h, size=(size, size), mode="nearest")))
        return self.dec_out(h)


def load_tiny_vae(folder: str | Path) -> tuple[TinyVAE, dict]:
    """A trained tiny VAE and its config from a folder written by ``train_tiny_vae``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
        model = TinyVAE(
            config["image_size"],
            config["latent_channels"],
            config["width"],
            config["levels"],
            config.get("in_channels", 3),
        )
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    except (OSError, KeyError, RuntimeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot load the tiny VAE in {folder}: {first_line(exc, 200)}") from None
    return model.eval(), config
