"""Image datasets with a common shape: items are (float image in [0,1], 3xHxW; int label)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


class LabelledImages(Dataset):
    """Base class: a dataset that knows all its labels without decoding images."""

    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: torch.Tensor) -> LabelledImages:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError


class TensorImages(LabelledImages):
    """Images held in memory as uint8 N x C x H x W (C = 1 or 3)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"expected uint8 images N x (1|3) x H x W, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise DataError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = targets.long()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_rgb_float(self.images[i : i + 1])[0], int(self.targets[i])

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        return to_rgb_float(self.images[indices])

    def subset(self, indices: torch.Tensor) -> TensorImages:
        return TensorImages(self.images[indices], self.targets[indices])

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        h.update(np.ascontiguousarray(self.images.numpy()).tobytes())
        h.update(self.targets.numpy().tobytes())
        return h.hexdigest()


class FileImages(LabelledImages):
    """Images read from files on demand (ImageFolder layout and friends)."""

    def __init__(self, paths: Sequence[str | Path], targets: torch.Tensor, root: str | Path = ""):
        self.paths = [str(p) for p in paths]
        self.targets = targets.long()
        self.root = str(root)
        # Set by iter_batches so that decoded images of different sizes can be stacked.
        self.transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.paths[i])
        if self.transform is not None:
            image = self.transform(image[None])[0]
        return image, int(self.targets[i])

    def subset(self, indices: torch.Tensor) -> FileImages:
        return FileImages([self.paths[int(i)] for i in indices], self.targets[indices], self.root)

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for path, label in zip(self.paths, self.targets.tolist(), strict=True):
            st = Path(path).stat()
            rel = path[len(self.root) :] if self.root and path.startswith(self.root) else path
            h.update(f"{rel}|{st.st_size}|{int(st.st_mtime)}|{label}\n".encode())
        return h.hexdigest()


def to_rgb_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x (1|3) x H x W -> float32 N x 3 x H x W in [0, 1]."""
    images = images.float().div_(255.0)
    return images.expand(-1, 3, -1, -1).contiguous() if images.shape[1] == 1 else images


def load_image(path: str | Path) -> torch.Tensor:
    """Decode one image file to float 3 x H x W in [0, 1]; grayscale, RGBA, palette and 16-bit are converted."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                arr = arr / (65535.0 if arr.max() > 255 else 255.0)
                return torch.from_numpy(np.ascontiguousarray(arr))[None].expand(3, -1, -1).clamp(0, 1).clone()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"corrupt or unreadable image {path}: {exc}") from None
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def resize_center_crop(images: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """Resize the shorter side to ``resize`` (bilinear, antialiased) then center-crop ``crop``."""
    h, w = images.shape[-2:]
    if (h, w) != (resize, resize) or h != w:
        scale = resize / min(h, w)
        size = (max(resize, round(h * scale)), max(resize, round(w * scale)))
        if size != (h, w):
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
    h, w = images.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    return images[..., top : top + crop, left : left + crop]


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


def iter_batches(
    data: LabelledImages,
    batch_size: int,
    resize: int,
    crop: int,
    indices: torch.Tensor | None = None,
    num_workers: int = 0,
) -> Iterator[Batch]:
    """Yield preprocessed batches in index order. In-memory sets are sliced, never per-item."""
    order = torch.arange(len(data)) if indices is None else indices
    if isinstance(data, TensorImages):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield Batch(resize_center_crop(data.batch(idx), resize, crop), data.targets[idx], idx)
        return
    if isinstance(data, FileImages):
        data.transform = lambda x: resize_center_crop(x, resize, crop)
    loader = DataLoader(
        torch.utils.data.Subset(data, order.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
    )
    start = 0
    for images, labels in loader:
        idx = order[start : start + len(labels)]
        start += len(labels)
        yield Batch(images, labels, idx)


@dataclass
class RealData:
    """A labelled dataset with train / validation (held out of train) / test splits. ``mirror_safe`` is False
    where a horizontal flip changes what an image shows (digits), so augmentations leave flip out by default."""

    name: str
    classes: list[str]
    train: LabelledImages
    val: LabelledImages
    test: LabelledImages | None
    native_size: int
    source: str
    extras: dict = field(default_factory=dict)
    mirror_safe: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        h = hashlib.sha1(self.name.encode())
        for split in (self.train, self.val, self.test):
            h.update(b"|" + (split.fingerprint().encode() if split is not None else b"none"))
        return h.hexdigest()[:16]

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.train.targets, minlength=self.num_classes)


def stratified_split(
    targets: torch.Tensor, num_classes: int, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out ``fraction`` of every class (at least one image of a class with two or more)."""
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in range(num_classes):
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = round(fraction * len(idx))
        if fraction > 0 and len(idx) >= 2:
            n_val = max(1, n_val)
        held.append(idx[:n_val])
        keep.append(idx[n_val:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values
