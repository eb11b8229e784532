"""Differentiable augmentations. LGM's "standard" one: flip + RandomResizedCrop + additive noise, per sample;
and DSA (Zhao & Bilen's differentiable Siamese augmentation, docs/methods/dm.md) for DM, TGDD and the ConvNet
protocols.

The flip is folded into the crop's affine matrix, so one ``grid_sample`` does both. Random parameters come from a
CPU ``torch.Generator``, so a run is reproducible and resumable from its saved generator state. The one large
draw, the standard augmentation's additive noise, is generated on the images' device from a seed per image drawn
with those parameters: it costs no host-to-device copy, and an image's noise does not depend on which process of
a torchrun job augments it (a CUDA run's noise differs from a CPU run's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.errors import ConfigError


@dataclass(frozen=True)
class StandardDraw:
    """The random parameters of a ``StandardAugment`` call, one row per image, so a slice of the images (a rank's
    share under torchrun) can be augmented exactly as in the whole batch: ``draw[rows]``."""

    uniform: torch.Tensor  # N x 6: crop area, aspect ratio, centre x, centre y, flip, noise gate
    seeds: torch.Tensor | None  # N int64 seeds of the images' noise, None without noise

    def __len__(self) -> int:
        return len(self.uniform)

    def __getitem__(self, rows: slice | torch.Tensor) -> StandardDraw:
        return StandardDraw(self.uniform[rows], None if self.seeds is None else self.seeds[rows])


@dataclass(frozen=True)
class StandardAugment:
    """LGM's distillation augmentation (docs/methods/lgm.md). ``noise_p = 0`` gives AugBasic (probe training).

    ``aug(x, g)`` is ``aug.apply(x, aug.draw(len(x), g))``: parameters are drawn for a whole batch and can be
    applied to any slice of it.
    """

    out_size: int
    flip_p: float = 0.5
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    noise_p: float = 0.5
    noise_std: float = 0.2
    noise_mean: float = 0.0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.draw(len(x), generator))

    def draw(self, n: int, generator: torch.Generator) -> StandardDraw:
        """Parameters for ``n`` images (without noise, exactly the draws of the crop and flip)."""
        uniform = torch.rand(n, 6, generator=generator)
        seeds = torch.randint(_SEED_BOUND, (n,), generator=generator) if self.noise_p > 0 else None
        return StandardDraw(uniform, seeds)

    def apply(self, x: torch.Tensor, draw: StandardDraw) -> torch.Tensor:
        """Augment ``x`` with one row of ``draw`` per image."""
        b, u = x.shape[0], draw.uniform
        if b == 0:  # a process's empty share of a batch
            return x.new_zeros(0, x.shape[1], self.out_size, self.out_size)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        log_r = math.log(self.ratio[0]) + (math.log(self.ratio[1]) - math.log(self.ratio[0])) * u[:, 1]
        aspect = torch.exp(log_r)
        # Crop width and height as fractions of the image side (normalised coordinates span 2).
        w = torch.sqrt(area * aspect).clamp(max=1.0)
        h = torch.sqrt(area / aspect).clamp(max=1.0)
        cx = (2 * u[:, 2] - 1) * (1 - w)
        cy = (2 * u[:, 3] - 1) * (1 - h)
        flip = torch.where(u[:, 4] < self.flip_p, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = w * flip
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, [b, x.shape[1], self.out_size, self.out_size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        noisy = [] if draw.seeds is None else torch.nonzero(u[:, 5] < self.noise_p).flatten().tolist()
        if noisy:
            seeds = draw.seeds.tolist()
            noise = torch.stack([_seeded_normal(out.shape[1:], seeds[i], out.device) for i in noisy])
            noise = (noise * self.noise_std + self.noise_mean).to(out.dtype)
            out = out.index_add(0, torch.tensor(noisy, device=out.device), noise)
        return out


_SEED_BOUND = 1 << 62


def _seeded_normal(shape: torch.Size, seed: int, device: torch.device) -> torch.Tensor:
    """Standard normal noise generated on ``device`` by a generator of its own, seeded with ``seed``."""
    return torch.randn(shape, generator=torch.Generator(device).manual_seed(seed), device=device)


def aug_basic(out_size: int) -> StandardAugment:
    """Flip + RandomResizedCrop, no noise: the probe-training augmentation of LGM/SFM."""
    return StandardAugment(out_size=out_size, noise_p=0.0)


# ---- DSA -----------------------------------------------------------------------------------------------------

DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DSA_MODES = ("all", "one", "idc")
DSA_CODE_STRATEGY = "color_crop_cutout_flip_scale_rotate"  # the DSA / DM code's default (every operation)
# Columns of a draw: every parameter is one uniform number, mapped to its range when applied, so a draw does not
# depend on the image size and real and synthetic batches of different sizes can share it.
_BRIGHT, _SAT, _CONTRAST, _SHIFT_X, _SHIFT_Y, _CUT_X, _CUT_Y, _FLIP, _SCALE_X, _SCALE_Y, _ANGLE, _CHOICE = range(12)
_COLUMNS = 12


@dataclass(frozen=True)
class DSA:
    """Differentiable Siamese augmentation with the strategy string of the DSA / DM / IDC code.

    ``mode`` decides which of the strategy's operations run on a call:
    - ``all``: every operation, in the string's order;
    - ``one``: one operation of the string, drawn per call (the DSA / DM code's default ``aug_mode='S'``);
    - ``idc``: flip and color always, then one of the geometric operations (crop / scale / rotate), then cutout
      (IDC's and TGDD's ``single_aug``).

    ``x = dsa(x, g)`` draws parameters per sample (one operation choice per call, as the code does when training
    networks). ``dsa.siamese([real, syn], g, [real_groups, syn_groups])`` draws once per group id and applies the
    same draw to every batch: DM uses one group per class, TGDD one group for a class's real + synthetic batch.
    """

    strategy: str = DSA_CODE_STRATEGY
    mode: str = "one"
    flip_p: float = 0.5
    scale: float = 1.2
    rotate: float = 15.0
    crop: float = 0.125
    cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5

    def __post_init__(self) -> None:
        bad = [op for op in self.ops if op not in DSA_OPS]
        if bad:
            raise ConfigError(
                f"unknown DSA operation(s) {', '.join(bad)} in '{self.strategy}'; "
                f"use {', '.join(DSA_OPS)} joined by '_', or 'none'"
            )
        if self.mode not in DSA_MODES:
            raise ConfigError(f"DSA mode must be one of {', '.join(DSA_MODES)}, got '{self.mode}'")

    @property
    def ops(self) -> tuple[str, ...]:
        if self.strategy.lower() in ("", "none"):
            return ()
        return tuple(self.strategy.lower().split("_"))

    def draw(self, groups: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform parameters for ``groups`` independent draws: groups x 12."""
        return torch.rand(groups, _COLUMNS, generator=generator)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.ops:
            return x
        u = self.draw(len(x), generator)
        u[:, _CHOICE] = u[0, _CHOICE]
        return self.apply(x, u)

    def siamese(
        self, batches: list[torch.Tensor], generator: torch.Generator, groups: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """The same draw for every batch: sample i of a batch uses the draw of its group id (default: one group)."""
        if not self.ops:
            return batches
        if groups is None:
            groups = [torch.zeros(len(b), dtype=torch.long) for b in batches]
        u = self.draw(int(max(int(g.max()) for g in groups if len(g))) + 1, generator)
        return [self.apply(b, u[g]) for b, g in zip(batches, groups, strict=True)]

    def apply(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Apply per-sample parameters ``u`` (len(x) x 12 uniforms)."""
        u = u.to(device=x.device, dtype=x.dtype)
        ops = self.ops
        if self.mode == "all":
            for op in ops:
                x = self._op(op, x, u)
            return x
        if self.mode == "one":
            return self._one_of(ops, x, u)
        always_first = [op for op in ("flip", "color") if op in ops]
        choose = tuple(op for op in ops if op not in ("flip", "color", "cutout"))
        for op in always_first:
            x = self._op(op, x, u)
        if choose:
            x = self._one_of(choose, x, u)
        return self._op("cutout", x, u) if "cutout" in ops else x

    def _one_of(self, ops: tuple[str, ...], x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        choice = (u[:, _CHOICE] * len(ops)).long().clamp(max=len(ops) - 1)
        for k, op in enumerate(ops):
            idx = torch.nonzero(choice == k).flatten()
            if len(idx) == len(x):
                return self._op(op, x, u)
            if len(idx):
                x = x.index_copy(0, idx, self._op(op, x[idx], u[idx]))
        return x

    def _op(self, op: str, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        col = lambda k: u[:, k].view(-1, 1, 1, 1)  # noqa: E731
        if op == "color":
            x = x + (col(_BRIGHT) - 0.5) * self.brightness
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (col(_SAT) * self.saturation) + mean
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            return (x - mean) * (col(_CONTRAST) + self.contrast) + mean
        if op == "flip":
            return torch.where(col(_FLIP) < self.flip_p, x.flip(3), x)
        if op == "crop":
            return _translate(x, u[:, _SHIFT_X], u[:, _SHIFT_Y], self.crop)
        if op == "cutout":
            return x * _cutout_mask(x, u[:, _CUT_X], u[:, _CUT_Y], self.cutout)
        if op == "scale":
            lo = 1.0 / self.scale
            sx = u[:, _SCALE_X] * (self.scale - lo) + lo
            sy = u[:, _SCALE_Y] * (self.scale - lo) + lo
            zero = torch.zeros_like(sx)
            theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
            return _warp(x, theta)
        angle = (u[:, _ANGLE] - 0.5) * 2 * self.rotate / 180 * math.pi
        cos, sin, zero = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        return _warp(x, theta)


def default_strategy(strategy: str, mirror_safe: bool) -> str:
    """A recipe's default DSA strategy for a dataset: without ``flip`` where mirroring changes what an image shows
    (``RealData.mirror_safe`` False: digits), as the DSA / DM authors advise for MNIST and SVHN and the IDC code
    does. An explicitly chosen strategy is used as given."""
    if mirror_safe:
        return strategy
    return "_".join(op for op in strategy.split("_") if op != "flip") or "none"


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _translate(x: torch.Tensor, ux: torch.Tensor, uy: torch.Tensor, ratio: float) -> torch.Tensor:
    """Integer shifts in [-s, s], s = round(ratio * size), with zero fill (DSA's "crop")."""
    n, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = (ux * (2 * sh + 1)).long().clamp(max=2 * sh) - sh
    ty = (uy * (2 * sw + 1)).long().clamp(max=2 * sw) - sw
    padded = F.pad(x, (1, 1, 1, 1))
    rows = (torch.arange(h, device=x.device)[None] + tx[:, None] + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device)[None] + ty[:, None] + 1).clamp(0, w + 1)
    out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2))
    return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def _cutout_mask(x: torch.Tensor, ux: torch.Tensor, uy: torch.Tensor, ratio: float) -> torch.Tensor:
    """A mask zeroing a (ratio*H) x (ratio*W) square centred at a random pixel, clipped at the borders."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = (ux * (h + 1 - ch % 2)).long().clamp(max=h - ch % 2)
    oy = (uy * (w + 1 - cw % 2)).long().clamp(max=w - cw % 2)
    r, k = torch.arange(h, device=x.device)[None], torch.arange(w, device=x.device)[None]
    in_r = (r >= (ox - ch // 2)[:, None]) & (r <= (ox - ch // 2 + ch - 1)[:, None])
    in_c = (k >= (oy - cw // 2)[:, None]) & (k <= (oy - cw // 2 + cw - 1)[:, None])
    return (~(in_r[:, :, None] & in_c[:, None, :])).to(x.dtype)[:, None]
