"""Write a synthetic set in the layouts other tools read (``datadistill export``), each folder with a meta.json
that says what its values are and how to evaluate them (``tensorfiles.py`` reads every layout back):

- ``pt``: ``images.pt`` (float32 N x 3 x H x W exactly as stored: pixels in [0, 1], or beyond for an unbounded set;
  multi-formation sets as their tiles unless decoded) and ``labels.pt`` (int64 N), plain tensors;
- ``imagefolder``: ``<class>/<index>.png`` (class names made file-system safe, the mapping in ``classes.json``;
  pixels clamped to [0, 1]), multi-formation sets decoded unless told not to;
- ``ddranking``: ``images.pt`` / ``labels.pt`` as the ``ddranking`` package's ``compute_metrics(image_tensor=...,
  hard_labels=...)`` takes them: normalised with the statistics and at the image size its ``get_dataset`` uses for
  the dataset (version 0.2.0), decoded.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError, DatadistillError
from ..core.io import atomic_dir, save_torch, write_json
from ..core.progress import log
from ..data import RealData
from .params import decode_multi_formation
from .set import SyntheticSet
from .tensorfiles import EXPORT_FORMAT

FORMATS = ("pt", "imagefolder", "ddranking")

# ddranking 0.2.0, ddranking/utils/data.py, get_dataset(): the dataset's name there, the image size it falls back to
# (im_size; the test images of the ImageNet family are resized to it, CIFAR's stay 32 px) and the mean / std of its
# transforms.Normalize (CIFAR-100 uses CIFAR-10's numbers there).
_CIFAR = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DDRANKING_DATASETS: dict[str, tuple[str, int, tuple]] = {
    "cifar10": ("CIFAR10", 32, _CIFAR),
    "cifar100": ("CIFAR100", 32, _CIFAR),
    "imagenette": ("ImageNette", 128, _IMAGENET),
    "imagewoof": ("ImageWoof", 128, _IMAGENET),
    "imagenet": ("ImageNet1K", 224, _IMAGENET),
}


def check_format(layout: str, dataset: str | None = "", name: str = "the set") -> None:
    """``layout`` is one of ``FORMATS`` and can hold a set of ``dataset`` (``""``: not known yet, not checked)."""
    if layout not in FORMATS:
        raise ConfigError(f"unknown export format '{layout}' ({', '.join(FORMATS)})")
    if layout == "ddranking" and dataset != "" and dataset not in DDRANKING_DATASETS:
        known = ", ".join(f"{ours} ({v[0]})" for ours, v in DDRANKING_DATASETS.items())
        raise ConfigError(
            f"ddranking 0.2.0 evaluates {known}; {name} is of dataset '{dataset}': export it with --format pt or "
            "imagefolder"
        )


def check_out(out: str | Path, force: bool) -> Path:
    """``out`` may be written: missing or empty, or ``force`` (its content is then replaced as a whole)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatadistillError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DatadistillError(f"--out {out} is not empty: choose another folder, or pass --force to replace it")
    return out


def safe_names(classes: list[str]) -> list[str]:
    """A file-system-safe, unique folder name per class (``T-shirt/top`` -> ``T-shirt_top``); names that differ
    only in case count as the same (case-insensitive file systems)."""
    names, seen = [], set()
    for i, name in enumerate(classes):
        safe = re.sub(r"[^\w.\- ]", "_", name).strip(" .") or f"class_{i}"
        if safe.lower() in seen:
            safe = f"{safe}_{i}"
        seen.add(safe.lower())
        names.append(safe)
    return names


def decoded(synset: SyntheticSet) -> SyntheticSet:
    """A multi-formation set as the images it decodes into (tile-major, as the evaluation trains on them)."""
    factor = int(synset.meta.get("factor") or 1)
    if factor <= 1:
        return synset
    images, labels = decode_multi_formation(synset.images, synset.labels, factor)
    meta = {k: v for k, v in synset.meta.items() if k != "factor"}
    return SyntheticSet(images, labels, synset.classes, {**meta, "decoded_from_factor": factor})


def export_set(
    synset: SyntheticSet,
    layout: str,
    out: str | Path,
    describe: dict,
    decode: bool | None = None,
    name: str = "the set",
) -> Path:
    """Write ``synset`` to ``out`` (atomically) in ``layout``; ``describe`` is the rest of meta.json (dataset,
    source, normalisation, ...). ``decode`` None: the layout's default (pt keeps the stored tiles, the others
    decode them). ``name`` names the set in warnings."""
    check_format(layout, synset.meta.get("dataset"), name)
    factor = int(synset.meta.get("factor") or 1)
    if decode if decode is not None else layout != "pt":
        synset = decoded(synset)
    writer = {"pt": _write_pt, "imagefolder": _write_imagefolder, "ddranking": _write_ddranking}[layout]
    with atomic_dir(out) as tmp:
        meta = writer(synset, tmp, name)
        set_meta = {**synset.meta, **meta.pop("set_meta", {})}
        stored_factor = int(synset.meta.get("factor") or 1)
        lo, hi = (float(v) for v in synset.images.aminmax()) if len(synset) else (0.0, 1.0)
        write_json(
            tmp / "meta.json",
            {
                "format": EXPORT_FORMAT,
                "layout": layout,
                **describe,
                "classes": synset.classes,
                "num_images": len(synset),
                "ipc": synset.ipc,
                "channels": 3,
                "factor": stored_factor,
                "decoded": factor > 1 and stored_factor == 1,
                "value_range": [lo, hi],
                "unbounded": bool(synset.meta.get("unbounded")),
                **meta,
                "set_meta": set_meta,
            },
        )
    return Path(out)


def _write_pt(synset: SyntheticSet, tmp: Path, name: str) -> dict:
    save_torch(tmp / "images.pt", synset.images.contiguous().clone())
    save_torch(tmp / "labels.pt", synset.labels.clone())
    return {"resolution": list(synset.images.shape[2:]), "normalised": None}


def _write_imagefolder(synset: SyntheticSet, tmp: Path, name: str) -> dict:
    from PIL import Image

    images = synset.images
    clipped = int(((images < 0) | (images > 1)).sum())
    if synset.meta.get("unbounded"):
        log.warning(
            "%s is unbounded (its values are not confined to [0, 1]): %d of %d pixel values (%.2f %%) were "
            "clipped to [0, 1] for the PNGs; --format pt keeps them",
            name,
            clipped,
            images.numel(),
            100 * clipped / max(1, images.numel()),
        )
    pixels = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    folders = safe_names(synset.classes)
    if sorted(folders) != folders:
        log.warning(
            "the class folders of %s do not sort in the dataset's class order: tools that number classes by sorted "
            "folder name (torchvision's ImageFolder) need classes.json to map them back",
            name,
        )
    width = len(str(max(len(synset) - 1, 0)))
    for folder in set(folders[y] for y in synset.labels.tolist()):
        (tmp / folder).mkdir()
    for i, (arr, y) in enumerate(zip(pixels, synset.labels.tolist(), strict=True)):
        Image.fromarray(arr).save(tmp / folders[y] / f"{i:0{width}d}.png")
    mapping = dict(zip(folders, synset.classes, strict=True))
    write_json(tmp / "classes.json", {"classes": synset.classes, "folders": mapping})
    lo, hi = (float(v) for v in images.clamp(0, 1).aminmax()) if len(synset) else (0.0, 1.0)
    return {
        "resolution": list(images.shape[2:]),
        "normalised": None,
        "value_range": [lo, hi],  # of the PNGs: clipped to [0, 1]
        "unbounded": False,
        "clipped_values": clipped,
        "folders": {f: i for i, f in enumerate(folders)},
        "set_meta": {"unbounded": False},
    }


def _write_ddranking(synset: SyntheticSet, tmp: Path, name: str) -> dict:
    from ..data import resize_center_crop

    dataset = synset.meta.get("dataset")
    check_format("ddranking", dataset, name)
    ddr_name, size, (mean, std) = DDRANKING_DATASETS[dataset]
    images = synset.images
    if tuple(images.shape[2:]) != (size, size):
        images = resize_center_crop(images, size, size)
    shape = (1, 3, 1, 1)
    normalised = (images - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
    save_torch(tmp / "images.pt", normalised.contiguous().clone())
    save_torch(tmp / "labels.pt", synset.labels.clone())
    lo, hi = (float(v) for v in normalised.aminmax()) if len(synset) else (0.0, 0.0)
    return {
        "resolution": [size, size],
        "value_range": [lo, hi],  # of the normalised values the file holds
        "normalised": {"mean": list(mean), "std": list(std)},
        "normalisation": {
            "kind": "ddranking",
            "mean": list(mean),
            "std": list(std),
            "why": f"already applied: ddranking normalises {ddr_name}'s real images with these statistics",
        },
        "ddranking": {"dataset": ddr_name, "im_size": [size, size], "ipc": synset.ipc, "version": "0.2.0"},
    }


def normalisation_advice(synset: SyntheticSet, data: RealData | None, missing: str = "") -> dict:
    """The normalisation an evaluator should give the pixels, and why: the backbone's statistics for a set made
    through a backbone (its linear-probe evaluations feed the images to that backbone), else the dataset's
    per-channel mean and std, as datadistill's from-scratch ConvNet protocols compute them (``missing`` says why
    there are none, without ``data``)."""
    backbone = synset.meta.get("backbone")
    if backbone:
        from ..features.backbones import backbone_spec

        spec = backbone_spec(backbone)
        return {
            "kind": "backbone",
            "backbone": backbone,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "why": f"made through the backbone {backbone}: its linear-probe evaluations give the images to "
            f"{backbone}, which normalises them with these statistics",
        }
    if data is None:
        return {"kind": None, "why": missing}
    from ..data.memory import channel_stats

    resolution = int(synset.images.shape[-1])
    mean, std = channel_stats(data.train, resolution, data.num_classes)
    gray = len(mean) == 1
    mean, std = mean.expand(3), std.expand(3)
    return {
        "kind": "dataset",
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "why": f"made without a backbone: datadistill's from-scratch protocols (convnet) normalise with the "
        f"per-channel mean and std of {data.name}'s training split at the set's resolution ({resolution} px)"
        + ("; the dataset is grayscale, its one channel is repeated" if gray else ""),
    }
