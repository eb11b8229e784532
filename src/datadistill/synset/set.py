"""The synthetic set and the image parameterisations optimised by pixel-space methods."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError, DataError
from ..core.io import atomic_dir, write_json
from ..core.progress import log
from .tensorfiles import (
    check_tensors,
    export_meta,
    images_and_labels,
    labels_beside,
    parse_input_norm,
    read_plain,
    tensor_files,
    undo_norm,
)

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
        from ..data.datasets import load_image, resize_center_crop

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


def load_tensor_set(path: Path, classes: list[str] | None, input_norm: str | None = None):
    """A set of another project's tensor files (see the module's docstring) as a ``SyntheticSet`` with the
    dataset's ``classes``; its meta names the source and the files read (``source_files``, for its identity)."""
    found = tensor_files(path)
    if found is None:
        raise DataError(f"no synthetic set at {path}")
    if classes is None:
        raise ConfigError(f"{path} holds tensors without class names: pass the dataset they come from (--data NAME)")
    norm = parse_input_norm(input_norm)
    images_file, labels_file = found
    if not images_file.is_file():
        raise DataError(f"no synthetic set at {path}: {images_file.name} is missing")
    obj = read_plain(images_file)
    if labels_file is None:
        if isinstance(obj, torch.Tensor):
            beside = labels_beside(images_file)
            raise DataError(
                f"{images_file} holds images but no labels: put the labels beside it "
                f"({beside[0].name if beside else 'labels_best.pt'}, as MTT saves them) or save one file holding "
                "{'images': ..., 'labels': ...}"
            )
        images, labels = images_and_labels(obj, images_file)
        files = [images_file]
    else:
        if not labels_file.is_file():
            raise DataError(f"{images_file} has no labels beside it: {labels_file.name} is missing")
        images, labels = obj, read_plain(labels_file)
        files = [images_file, labels_file]
    images, labels, soft = check_tensors(images, labels, classes, str(images_file), str(labels_file or images_file))
    if soft:
        log.warning("%s holds soft labels (one score per class): evaluated with their argmax as hard labels", path)
    images, unbounded = undo_norm(images, norm, str(images_file))
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1).contiguous()
    meta = {
        "source": str(path),
        "source_files": [str(f) for f in files],
        "input_norm": None if norm is None or norm == "none" else {"mean": list(norm[0]), "std": list(norm[1])},
        "soft_labels": soft,
    }
    if unbounded:
        meta["unbounded"] = True
    return SyntheticSet(images, labels, list(classes), meta)


def load_export(folder: Path, meta: dict, input_norm: str | None = None):
    """A folder ``datadistill export`` wrote: its tensors (normalised ones, ``ddranking``, are un-normalised with
    the statistics its meta.json records) or its class folders of PNGs, with the classes and set meta it records."""
    if input_norm is not None:
        raise ConfigError(
            f"{folder} was written by datadistill export and its meta.json says how its values are stored: "
            "leave out --input-norm"
        )
    classes = list(meta["classes"])
    set_meta = {**meta.get("set_meta", {}), "source": str(folder)}
    if meta["layout"] == "imagefolder":
        folders = {name: classes[i] for name, i in meta["folders"].items()}
        synset = SyntheticSet._from_png_folder(folder, classes, folders=folders)
        synset.meta = {**set_meta, "source_files": synset.meta["source_files"]}
        return synset
    files = [folder / "images.pt", folder / "labels.pt"]
    images, labels, _ = check_tensors(read_plain(files[0]), read_plain(files[1]), classes, str(files[0]), str(files[1]))
    norm = meta.get("normalised")
    if norm:
        images, _ = undo_norm(images, (tuple(norm["mean"]), tuple(norm["std"])), str(files[0]))
    set_meta["source_files"] = [str(f) for f in files]
    return SyntheticSet(images, labels, classes, set_meta)
