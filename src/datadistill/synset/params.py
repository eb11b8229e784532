"""The image parameterisations optimised by pixel-space methods, and the multi-formation layout of their images."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.errors import DataError

# DAS/LGM colour decorrelation (docs/methods/lgm.md): normalised by the largest column norm.
_COLOR = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


COLOR_DECORRELATION = _COLOR / _COLOR.norm(dim=0).max()


class ImageParam(nn.Module):
    """A learnable parameterisation of N images. ``render()`` returns N x 3 x R x R in [0, 1]."""

    def render(self) -> torch.Tensor:
        raise NotImplementedError

    def maybe_grow(self, step: int) -> bool:
        """Grow at ``step`` if the schedule says so; True means the optimizer must be re-created."""
        return False

    def checkpoint_state(self) -> dict:
        return {"state": {k: v.detach().clone() for k, v in self.state_dict().items()}}

    def load_checkpoint_state(self, state: dict) -> None:
        self.load_state_dict(state["state"])


def _to_image(x: torch.Tensor, decorrelate: bool) -> torch.Tensor:
    if decorrelate:
        x = torch.einsum("ij,bjhw->bihw", COLOR_DECORRELATION.to(x), x)
    return torch.sigmoid(2 * x)


def _from_image(images: torch.Tensor, decorrelate: bool, eps: float = 0.02) -> torch.Tensor:
    """Inverse of ``_to_image``: the pre-activation that renders ``images`` (clamped away from 0 and 1)."""
    x = torch.logit(images.clamp(eps, 1 - eps)) / 2
    if decorrelate:
        x = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(COLOR_DECORRELATION).to(x), x)
    return x


class PixelParam(ImageParam):
    """One tensor per image at full resolution, through colour decorrelation and sigmoid(2x)."""

    def __init__(
        self,
        num: int,
        resolution: int,
        decorrelate: bool = True,
        generator: torch.Generator | None = None,
        init_images: torch.Tensor | None = None,
    ):
        super().__init__()
        self.decorrelate = decorrelate
        start = (
            _from_image(init_images, decorrelate)
            if init_images is not None
            else torch.randn(num, 3, resolution, resolution, generator=generator)
        )
        self.pixels = nn.Parameter(start)

    def render(self) -> torch.Tensor:
        return _to_image(self.pixels, self.decorrelate)


class PyramidParam(ImageParam):
    """Laplacian-free pyramid of levels 1x1, 2x2, ... up to R, summed after bilinear upsampling (docs/methods/lgm.md).

    A level is added every ``grow_every`` steps (at steps grow_every+1, 2*grow_every+1, ...); old levels are
    scaled by L/(L+1) and the new one starts as N(0,1)/(L+1), so the rendered image barely moves.
    """

    def __init__(
        self,
        num: int,
        resolution: int,
        grow_every: int = 200,
        start: int = 1,
        decorrelate: bool = True,
        generator: torch.Generator | None = None,
        init_images: torch.Tensor | None = None,
    ):
        super().__init__()
        self.num, self.resolution, self.grow_every, self.decorrelate = num, resolution, grow_every, decorrelate
        self.generator = generator
        if init_images is None:
            self.levels = nn.ParameterList([nn.Parameter(torch.randn(num, 3, start, start, generator=generator))])
            return
        # Initialised from images: the whole pyramid exists from the start (no growth); coarse levels start at
        # zero and the finest holds the image, so coarse structure can still move as a whole.
        sizes = [1]
        while sizes[-1] < resolution:
            sizes.append(min(2 * sizes[-1], resolution))
        levels = [torch.zeros(num, 3, r, r) for r in sizes[:-1]] + [_from_image(init_images, decorrelate)]
        self.levels = nn.ParameterList([nn.Parameter(t) for t in levels])

    @property
    def sizes(self) -> list[int]:
        return [p.shape[-1] for p in self.levels]

    def render(self) -> torch.Tensor:
        r = self.resolution
        total = sum(
            nn.functional.interpolate(p, size=(r, r), mode="bilinear", antialias=False) if p.shape[-1] != r else p
            for p in self.levels
        )
        return _to_image(total, self.decorrelate)

    def maybe_grow(self, step: int) -> bool:
        finest = self.sizes[-1]
        if step <= 1 or (step - 1) % self.grow_every != 0 or finest >= self.resolution:
            return False
        n_old = len(self.levels)
        new_size = min(2 * finest, self.resolution)
        device = self.levels[0].device
        with torch.no_grad():
            for p in self.levels:
                p.mul_(n_old / (n_old + 1))
        fresh = torch.randn(self.num, 3, new_size, new_size, generator=self.generator) / (n_old + 1)
        self.levels.append(nn.Parameter(fresh.to(device)))
        return True

    def checkpoint_state(self) -> dict:
        return {"levels": [p.detach().clone() for p in self.levels]}

    def load_checkpoint_state(self, state: dict) -> None:
        device = self.levels[0].device
        self.levels = nn.ParameterList([nn.Parameter(t.to(device)) for t in state["levels"]])


def make_param(
    kind: str,
    num: int,
    resolution: int,
    generator: torch.Generator,
    grow_every: int = 200,
    decorrelate: bool = True,
    init_images: torch.Tensor | None = None,
) -> ImageParam:
    """``init_images`` (N x 3 x R x R in [0,1]) starts from given images instead of noise."""
    if kind == "pyramid":
        return PyramidParam(
            num,
            resolution,
            grow_every=grow_every,
            decorrelate=decorrelate,
            generator=generator,
            init_images=init_images,
        )
    if kind == "pixel":
        return PixelParam(num, resolution, decorrelate=decorrelate, generator=generator, init_images=init_images)
    raise DataError(f"unknown parameterisation '{kind}' (pyramid, pixel)")


def full_pyramid_steps(resolution: int, grow_every: int) -> int:
    """The step at which a pyramid started at 1x1 is complete."""
    return int(math.ceil(math.log2(resolution))) * grow_every + 1


class RawPixelParam(ImageParam):
    """Pixels optimised directly, as in DM, IDC and TGDD (no sigmoid, no colour decorrelation).

    With ``mean`` / ``std`` (per channel) the stored tensor is (x - mean) / std, so an SGD step on it is the DM
    code's step on normalised images; without them it holds raw pixels in [0, 1] space (IDC / TGDD). Grayscale
    sets (``images`` with one channel) are stored once and rendered as three equal channels. ``project_()``
    clamps the rendered pixels to [0, 1] (TGDD clamps before every iteration).
    """

    def __init__(self, images: torch.Tensor, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        c = images.shape[1]
        mean = torch.zeros(c) if mean is None else mean.float().reshape(c)
        std = torch.ones(c) if std is None else std.float().reshape(c)
        self.register_buffer("mean", mean.view(1, c, 1, 1))
        self.register_buffer("std", std.view(1, c, 1, 1))
        self.pixels = nn.Parameter((images.float() - self.mean) / self.std)

    def render(self) -> torch.Tensor:
        x = self.pixels * self.std + self.mean
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def project_(self) -> None:
        with torch.no_grad():
            self.pixels.copy_(
                torch.maximum(torch.minimum(self.pixels, (1 - self.mean) / self.std), -self.mean / self.std)
            )


def decode_multi_formation(
    images: torch.Tensor, labels: torch.Tensor, factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """IDC's uniform multi-formation: every stored image holds factor x factor tiles; each tile is upsampled
    (bilinear) to the full size and keeps the image's label. Output is tile-major (all images' first tile, ...),
    as in the IDC / TGDD code; a size not divisible by ``factor`` is padded with 0.5 first, as there."""
    if factor <= 1:
        return images, labels
    n, c, h, w = images.shape
    s = math.ceil(h / factor)
    if s * factor != h:
        images = nn.functional.pad(images, (0, s * factor - w, 0, s * factor - h), value=0.5)
    tiles = images.reshape(n, c, factor, s, factor, s).permute(2, 4, 0, 1, 3, 5).reshape(factor * factor * n, c, s, s)
    decoded = nn.functional.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)
    return decoded, labels.repeat(factor * factor)


def tile_images(images: torch.Tensor, factor: int) -> torch.Tensor:
    """The inverse layout of ``decode_multi_formation``: factor^2 * N images (tile-major) downscaled into the
    tiles of N images (IDC's "mix" initialisation). The size must be divisible by ``factor``."""
    if factor <= 1:
        return images
    m, c, h, w = images.shape
    if h % factor or w % factor or m % (factor * factor):
        raise DataError(
            f"multi-formation factor {factor} needs a size divisible by it and factor^2 x N images, "
            f"got {m} images of {h}x{w}"
        )
    n, s = m // (factor * factor), h // factor
    small = nn.functional.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
    return small.reshape(factor, factor, n, c, s, s).permute(2, 3, 0, 4, 1, 5).reshape(n, c, h, w)
