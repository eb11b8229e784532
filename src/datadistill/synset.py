"""The synthetic set and the image parameterisations optimised by pixel-space methods."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, DataError
from .io import atomic_dir, write_json

# DAS/LGM colour decorrelation (docs/methods/lgm.md): normalised by the largest column norm.
_COLOR = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_DECORRELATION = _COLOR / _COLOR.norm(dim=0).max()


# The preview grid.png of a saved set: at most this many class rows, images per row, and pixels.
GRID_CLASSES, GRID_PER_CLASS, GRID_PIXELS = 100, 20, 32_000_000

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "I64": torch.int64, "U8": torch.uint8}


def read_tensors(path: Path, names: tuple[str, ...]) -> list[torch.Tensor]:
    """Tensors of a safetensors file, read straight into their own memory.

    ``safetensors.torch.load_file`` maps the file: every page read stays resident (and counted in the process's
    memory) as long as any tensor of the file lives, so a set copied out of it briefly costs twice its size. Here
    each tensor's bytes go from the file into a fresh tensor with one ``readinto``.
    """
    try:
        with open(path, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_size))
            out = []
            for name in names:
                entry = header[name]
                tensor = torch.empty(entry["shape"], dtype=_SAFETENSORS_DTYPES[entry["dtype"]])
                start, end = entry["data_offsets"]
                f.seek(8 + header_size + start)
                view = memoryview(tensor.numpy()).cast("B") if tensor.numel() else memoryview(b"")
                if f.readinto(view) != end - start:
                    raise ValueError(f"{name} is truncated")
                out.append(tensor)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the synthetic set {path}: {exc}") from None
    return out


@dataclass
class SyntheticSet:
    """Images in [0,1] (N x 3 x H x W, float32), hard labels, class names and free-form metadata.

    ``meta["unbounded"]`` keeps pixel values outside [0, 1], for methods whose code evaluates what it optimised
    without clamping (DM with ``--no-clamp``); the PNG grid shows them clamped.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = self.images.detach().float().cpu()
        if not self.meta.get("unbounded"):
            lo, hi = self.images.aminmax() if self.images.numel() else (0, 1)
            if lo < 0 or hi > 1:  # a clamped copy (the caller's tensor is left alone); none for a set in range
                self.images = self.images.clamp(0, 1)
        self.labels = self.labels.detach().long().cpu()
        if self.images.ndim != 4 or self.images.shape[1] != 3 or len(self.images) != len(self.labels):
            raise DataError(
                f"a synthetic set needs N x 3 x H x W images and N labels, got "
                f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def ipc(self) -> int:
        return int(torch.bincount(self.labels, minlength=len(self.classes)).max()) if len(self) else 0

    def grid_shape(self) -> tuple[int, int, int]:
        """(classes, images per class, tile side scale) that the preview grid shows: the first ``GRID_CLASSES``
        classes and ``GRID_PER_CLASS`` images of each at most, tiles scaled down to keep it within ``GRID_PIXELS``
        (a set of 1000 classes at 256 px would otherwise make a PNG that image libraries refuse to open)."""
        rows, cols = min(len(self.classes), GRID_CLASSES), max(1, min(self.ipc, GRID_PER_CLASS))
        h, w = self.images.shape[2:]
        scale = min(1.0, math.sqrt(GRID_PIXELS / max(1, rows * cols * h * w)))
        return rows, cols, scale

    def grid(self) -> np.ndarray:
        """A uint8 H x W x 3 preview grid: one row per class, one column per image (see ``grid_shape``)."""
        rows, cols, scale = self.grid_shape()
        images = self.images
        if scale < 1:
            size = [max(1, int(d * scale)) for d in images.shape[2:]]
            images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", antialias=True)
        h, w, pad = images.shape[2], images.shape[3], 2
        canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
        slot = [0] * len(self.classes)
        for img, y in zip(images, self.labels.tolist(), strict=True):
            r, k = y, slot[y]
            slot[y] += 1
            if r >= rows or k >= cols:
                continue
            arr = (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = arr
        return canvas

    def save(self, directory: str | Path) -> Path:
        """Write ``synset.safetensors``, ``grid.png`` and ``manifest.json`` atomically into ``directory``."""
        from PIL import Image
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            save_file(
                {"images": self.images.contiguous(), "labels": self.labels.contiguous()},
                str(tmp / "synset.safetensors"),
            )
            Image.fromarray(self.grid()).save(tmp / "grid.png")
            manifest = {
                "format": "datadistill.synset/1",
                "num_images": len(self),
                "ipc": self.ipc,
                "image_size": list(self.images.shape[2:]),
                "classes": self.classes,
                "labels": self.labels.tolist(),
                "meta": self.meta,
                "grid": dict(zip(("classes", "per_class", "scale"), self.grid_shape(), strict=True)),
            }
            write_json(tmp / "manifest.json", manifest)
        return directory

    @classmethod
    def load(cls, path: str | Path, classes: list[str] | None = None, input_norm: str | None = None) -> SyntheticSet:
        """Load any synthetic set: a run directory, a saved set (``synset/``), a folder ``datadistill export``
        wrote, another project's tensor files (``tensorfiles.py``; ``input_norm`` undoes their normalisation), or
        a folder of PNGs (class sub-folders or ``c{label}_*.png``). ``classes`` names the classes of sets that do
        not record theirs (tensor files, PNG folders)."""
        from .tensorfiles import export_meta, load_export, load_tensor_set, tensor_files

        path = Path(path)
        if path.is_dir() and (path / "synset" / "manifest.json").exists():
            path = path / "synset"
        if path.is_dir() and (path / "manifest.json").exists():
            _pixels_only(path, input_norm, "a saved datadistill set")
            manifest = json.loads((path / "manifest.json").read_text())
            images, labels = read_tensors(path / "synset.safetensors", ("images", "labels"))
            return cls(images, labels, manifest["classes"], manifest.get("meta", {}))
        meta = export_meta(path)
        if meta is not None:
            return load_export(path, meta, input_norm)
        if tensor_files(path) is not None:
            return load_tensor_set(path, classes, input_norm)
        if path.is_dir():
            _pixels_only(path, input_norm, "a folder of PNGs")
            return cls._from_png_folder(path, classes)
        raise DataError(
            f"no synthetic set at {path} (expected a run directory, a saved set, a folder datadistill export wrote, "
            "tensor files (.pt / .pth) or a folder of PNGs)"
        )

    @classmethod
    def _from_png_folder(
        cls, folder: Path, classes: list[str] | None, folders: dict[str, str] | None = None
    ) -> SyntheticSet:
        """PNGs of class sub-folders (``folders`` maps folder names to class names, and then the files, named by
        their index in the set, are read in that order) or named ``c{label}_*.png``."""
        from .data.datasets import load_image, resize_center_crop

        subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
        items: list[tuple[Path, int]] = []
        if subdirs:
            names = classes or [p.name for p in subdirs]
            for p in subdirs:
                name = (folders or {}).get(p.name, p.name)
                if name not in names:
                    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                    raise DataError(f"folder {p} is not one of the {len(names)} classes of the dataset ({shown})")
                items += [(f, names.index(name)) for f in sorted(p.glob("*.png"))]
            if folders:
                items.sort(key=lambda item: item[0].name)
        else:
            for f in sorted(folder.glob("*.png")):
                m = re.match(r"c(\d+)_", f.name)
                if not m:
                    raise DataError(f"cannot tell the class of {f}: use class sub-folders or name it c<label>_*.png")
                items.append((f, int(m.group(1))))
            names = classes or [str(i) for i in range(max(y for _, y in items) + 1)] if items else []
        if not items:
            raise DataError(f"no PNG images in {folder}")
        images = [load_image(f) for f, _ in items]
        size = min(min(im.shape[-2:]) for im in images)
        batch = torch.stack([resize_center_crop(im[None], size, size)[0] for im in images])
        labels = torch.tensor([y for _, y in items])
        if int(labels.max()) >= len(names):
            raise DataError(f"label {int(labels.max())} is outside the {len(names)} classes")
        return cls(batch, labels, list(names), {"source": str(folder), "source_files": [str(f) for f, _ in items]})


def _pixels_only(path: Path, input_norm: str | None, what: str) -> None:
    if input_norm is not None:
        raise ConfigError(
            f"{path} is {what}, whose values are pixels: --input-norm applies to tensor files of other projects only"
        )


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
