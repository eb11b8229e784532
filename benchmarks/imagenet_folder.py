"""An ImageNet-shaped ImageFolder for the benchmarks: N classes of 500x375 JPEGs (ImageNet's most common size),
cut from scikit-image's sample photos (random 4:3 crops and scales, a random flip, a colour shift per class), in
any splits (``train/``, ``val/``, ``test/``). The images are made for timing and memory; their classes differ only
by colour, so accuracies on them say nothing about a method.

    from imagenet_folder import build_folder
    build_folder(root, classes=100, splits={"train": 30000, "test": 5000})

A folder is built once (one process per core) and reused while its ``built.json`` matches the shape asked for.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "camera")
FOLDER_VERSION = 2  # 2: per-split random streams (a held-out image is never a copy of a train image)
SIZE = (500, 375)
SPLITS = ("train", "val", "test")


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


@functools.cache  # once per worker process, not once per class
def _photos() -> list[np.ndarray]:
    from skimage import data as samples

    out = []
    for name in PHOTOS:
        photo = getattr(samples, name)()
        out.append(np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo[..., :3])
    return out


def _make_class(job: tuple[Path, int, int, int, int]) -> None:
    """Write ``count`` JPEGs of class ``label`` into ``folder``: random 4:3 crops of the sample photos, rescaled to
    500x375, with the class's colour shift (per-channel gain and offset, the same in every split) and a random flip.
    Each split draws its images from its own stream (``stream``), so no split repeats another's images."""
    from PIL import Image

    folder, label, count, stream, seed = job
    photos = _photos()
    colour = np.random.default_rng([seed, label])
    gain, offset = colour.uniform(0.7, 1.3, 3), colour.uniform(-30, 30, 3)
    rng = np.random.default_rng([seed, label, stream])
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        ch = int(min(h, w * 3 / 4) * rng.uniform(0.5, 1.0))
        cw = min(w, round(ch * 4 / 3))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[top : top + ch, left : left + cw].astype(np.float32) * gain + offset
        image = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize(SIZE, Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(folder / f"{i:06d}.jpg", quality=90)


def per_class(total: int, classes: int) -> list[int]:
    """``total`` images shared out over ``classes``: the first ``total % classes`` classes get one more."""
    return [total // classes + (c < total % classes) for c in range(classes)]


def _clear(root: Path) -> None:
    """Remove the splits of an earlier build of another shape (or one cut short); refuse a folder holding anything
    this module did not write."""
    if not root.exists():
        return
    foreign = sorted(p.name for p in root.iterdir() if p.name not in (*SPLITS, "built.json"))
    if foreign:
        raise ValueError(
            f"{root} holds files this builder did not write ({', '.join(foreign[:3])}); use another folder"
        )
    for split in SPLITS:
        if (root / split).exists():
            shutil.rmtree(root / split)


def build_folder(root: Path, classes: int, splits: dict[str, int], seed: int = 0) -> Path:
    """``root/SPLIT/cNNNN/*.jpg`` for each split (``{"train": 30000, "test": 5000}``: images in all, shared out
    over ``classes``); reused when a folder of the same shape is already there."""
    unknown = set(splits) - set(SPLITS)
    if unknown or splits.get("train", 0) < classes:
        raise ValueError(f"splits must be among {SPLITS} with at least one train image per class, got {splits}")
    marker = root / "built.json"
    shape = {"classes": classes, "splits": splits, "seed": seed, "version": FOLDER_VERSION}
    if marker.exists() and json.loads(marker.read_text()) == shape:
        return root
    _clear(root)
    jobs = [
        (root / split / f"c{c:04d}", c, n, SPLITS.index(split), seed)
        for split, total in splits.items()
        for c, n in enumerate(per_class(total, classes))
        if n
    ]
    start = time.perf_counter()
    with ProcessPoolExecutor(cores()) as pool:
        list(pool.map(_make_class, jobs))
    marker.write_text(json.dumps(shape))
    made = " + ".join(f"{n} {split}" for split, n in splits.items())
    print(f"built {made} JPEGs in {root} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return root
