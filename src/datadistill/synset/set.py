"""The synthetic set and the image parameterisations optimised by pixel-space methods."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import DataError
from ..core.io import atomic_dir, write_json

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
    def load(cls, path: str | Path, classes: list[str] | None = None) -> SyntheticSet:
        """Load a saved set, a ``.safetensors`` file, or a folder of PNGs (class sub-folders or ``c{label}_*.png``)."""
        path = Path(path)
        if path.is_dir() and (path / "synset" / "manifest.json").exists():
            path = path / "synset"
        if path.is_dir() and (path / "manifest.json").exists():
            manifest = json.loads((path / "manifest.json").read_text())
            images, labels = read_tensors(path / "synset.safetensors", ("images", "labels"))
            return cls(images, labels, manifest["classes"], manifest.get("meta", {}))
        if path.is_dir():
            return cls._from_png_folder(path, classes)
        raise DataError(f"no synthetic set at {path} (expected a run directory, a synset folder or a folder of PNGs)")

    @classmethod
    def _from_png_folder(cls, folder: Path, classes: list[str] | None) -> SyntheticSet:
        from ..data.datasets import load_image, resize_center_crop

        subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
        items: list[tuple[Path, int]] = []
        if subdirs:
            names = classes or [p.name for p in subdirs]
            for p in subdirs:
                if p.name not in names:
                    raise DataError(f"folder {p} is not one of the classes {names}")
                items += [(f, names.index(p.name)) for f in sorted(p.glob("*.png"))]
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
        return cls(batch, labels, list(names), {"source": str(folder)})
