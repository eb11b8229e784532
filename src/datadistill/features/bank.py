"""One streaming pass over a real split through a frozen backbone: per-image features, class means and
counts (k-means modes on request), cached on disk by a fingerprint of (data, backbone, transform).

Features are written to a float16 ``.npy`` file batch by batch (plain writes, so its pages stay out of the
process's resident memory), so peak memory does not grow with the dataset; everything downstream (centroids,
neighbours, k-means, full-data probes) reads it as a memory map. Image files are decoded by loader workers; the
main process only moves each uint8 batch to the device, converts it and runs the forward.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core import dist
from ..core.errors import DataError
from ..core.io import atomic_dir, cache_root, write_json
from ..core.progress import log, progress
from ..data import FileImages, LabelledImages, RealData, as_float, iter_batches
from ..data.augment import aug_basic
from .backbones import Backbone
from .kmeans import kmeans

F16_MAX = float(np.finfo(np.float16).max)  # 65504: the largest feature magnitude the cache can store


def resize_for(crop: int) -> int:
    """The resize before a center crop, in LGM's 256 -> 224 proportion."""
    return round(crop * 256 / 224)


@dataclass
class FeatureBank:
    """Features of one split (N x F, float16 memory map), its labels and class statistics."""

    directory: Path
    labels: torch.Tensor
    means: torch.Tensor
    counts: torch.Tensor
    key: str

    @property
    def features(self) -> np.ndarray:
        return np.load(self.directory / "features.npy", mmap_mode="r")

    def tensor(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.features
        rows = feats if indices is None else feats[indices.numpy()]
        return torch.from_numpy(np.asarray(rows, dtype=np.float32))

    def nearest(self, queries: torch.Tensor, classes: torch.Tensor, metric: str = "l2") -> torch.Tensor:
        """Index of the same-class image nearest to each query (L2 or cosine)."""
        out = torch.empty(len(queries), dtype=torch.long)
        for c in classes.unique().tolist():
            members = torch.nonzero(self.labels == c).flatten()
            feats = self.tensor(members)
            q = queries[classes == c].float()
            if metric == "cos":
                score = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(feats, dim=1).T
                best = score.argmax(dim=1)
            else:
                best = torch.cdist(q, feats).argmin(dim=1)
            out[classes == c] = members[best]
        return out

    def kmeans(self, k: int, seed: int = 0, iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-class k-means (cached): centres C x k x F and masses C x k (cluster sizes / class size)."""
        with dist.main_first():  # rank 0 clusters and caches; the other ranks read its result
            return self._kmeans(k, seed, iters)

    def _kmeans(self, k: int, seed: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
        # "_r": clusters re-seeded when emptied; files of the earlier k-means (possibly mass-0 centres) are not read
        path = self.directory / f"kmeans_k{k}_s{seed}_r.safetensors"
        from safetensors.torch import load_file, save_file

        if path.exists():
            t = load_file(str(path))
            return t["centers"], t["masses"]
        centers, masses = [], []
        for c in range(len(self.counts)):
            feats = self.tensor(torch.nonzero(self.labels == c).flatten())
            ctr, mass = kmeans(feats, k, seed=seed + c, iters=iters)
            centers.append(ctr)
            masses.append(mass)
        result = torch.stack(centers), torch.stack(masses)
        save_file({"centers": result[0].contiguous(), "masses": result[1].contiguous()}, str(path))
        return result


def _jpeg_device(dataset: LabelledImages, device: torch.device) -> torch.device | None:
    """The device that decodes the split's JPEGs: the GPU for a folder of JPEGs on CUDA, else none (PIL)."""
    jpeg = dataset.jpeg if isinstance(dataset, FileImages) else None
    return device if device.type == "cuda" and jpeg is not None and len(jpeg) and bool(jpeg.all()) else None


def _key(
    data: RealData,
    split: str,
    backbone: Backbone,
    resize: int,
    crop: int,
    view_seed: int | None,
    decoder: str | None = None,
) -> str:
    ident = {
        "data": data.fingerprint(),
        "split": split,
        "backbone": backbone.identity(),
        "resize": resize,
        "crop": crop,
        "version": 1,
    }
    if view_seed is not None:
        ident["augbasic_view"] = {"seed": view_seed, "generator": "per batch"}
    if decoder is not None:  # the GPU's JPEG decoder gives slightly other pixels than PIL
        ident["decoder"] = decoder
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def feature_bank(
    data: RealData,
    backbone: Backbone,
    split: str = "train",
    crop: int | None = None,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    num_workers: int | None = None,
    view_seed: int | None = None,
) -> FeatureBank:
    """Features of ``split`` through ``backbone`` at ``crop`` px, cached.

    By default each image is resized and center-cropped (no augmentation). With ``view_seed``, each image
    gets one AugBasic view (flip + RandomResizedCrop) instead, drawn from a generator seeded by it and the batch
    index: one cached augmented view of the whole split, as used by the full-dataset probe. Image files are
    decoded by ``num_workers`` processes (default: the split's ``workers``); the count never changes the features.
    """
    crop = crop or backbone.input_size
    resize = resize_for(crop)
    device = torch.device(device)
    dataset = getattr(data, split)
    if dataset is None:
        raise DataError(f"dataset '{data.name}' has no {split} split")
    jpeg_device = _jpeg_device(dataset, device) if view_seed is None else None
    key = _key(data, split, backbone, resize, crop, view_seed, "torchvision-cuda" if jpeg_device else None)
    directory = cache_root() / "features" / key
    # A cache hit involves no other rank (so it is safe inside ``dist.main_first`` blocks).
    if (directory / "stats.json").exists():
        return _load_bank(directory, key)
    if dist.is_main():
        with atomic_dir(directory) as tmp:
            _compute(
                tmp, data, split, backbone, resize, crop, batch_size, device, num_workers, view_seed, key, jpeg_device
            )
    else:
        _compute(
            None, data, split, backbone, resize, crop, batch_size, device, num_workers, view_seed, key, jpeg_device
        )
    dist.barrier()  # rank 0 has renamed the finished folder into place
    log.info("cached %s features of %s/%s in %s", backbone.name, data.name, split, directory)
    return _load_bank(directory, key)


def _compute(
    tmp: Path | None,
    data: RealData,
    split: str,
    backbone: Backbone,
    resize: int,
    crop: int,
    batch_size: int,
    device: torch.device,
    num_workers: int | None,
    view_seed: int | None,
    key: str,
    jpeg_device: torch.device | None,
) -> None:
    """The pass itself. Under torchrun every rank takes every W-th batch (the single-process batches, so the same
    features), writes its rows into rank 0's features file, and class sums are all-reduced; rank 0 (``tmp`` given)
    writes the statistics."""
    dataset = getattr(data, split)
    n, c = len(dataset), data.num_classes
    tmp = Path(dist.broadcast_object(str(tmp) if tmp is not None else None))
    if dist.is_main():
        np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16, shape=(n, backbone.feat_dim))
    dist.barrier()
    offset = np.load(tmp / "features.npy", mmap_mode="r").offset  # where the rows start, after the .npy header
    starts = list(range(0, n, batch_size))[dist.rank() :: dist.world()]
    mine = torch.cat([torch.arange(s, min(s + batch_size, n)) for s in starts]) if starts else torch.arange(0)
    sums = torch.zeros(c, backbone.feat_dim, dtype=torch.float64)
    batches = iter_batches(
        dataset,
        batch_size,
        resize,
        resize if view_seed is not None else crop,
        indices=mine,
        num_workers=num_workers,
        keep_uint8=True,
        pin_memory=device.type == "cuda",
        jpeg_device=jpeg_device,
    )
    what = f"view {view_seed}" if view_seed is not None else "features"
    with torch.inference_mode(), open(tmp / "features.npy", "r+b") as out:
        for k, batch in enumerate(
            progress(batches, f"{what} {data.name}/{split} @ {backbone.name}", total=len(starts))
        ):
            batch_index = dist.rank() + k * dist.world()
            if hasattr(backbone, "begin_batch"):  # a stochastic encoder (latent space) reseeds per batch
                backbone.begin_batch(batch_index)
            if view_seed is not None:  # one generator per batch: the same views whichever rank draws them
                images = as_float(batch.images)
                images = aug_basic(crop)(images, torch.Generator().manual_seed(view_seed * 1_000_003 + batch_index))
                images = images.to(device)
            else:
                images = as_float(batch.images, device)
            f = backbone(images).cpu()
            with np.errstate(over="ignore"):  # an overflow is reported below, as an error naming the backbone
                half = f.numpy().astype(np.float16)
            if not np.isfinite(half).all():
                raise _feature_error(f, backbone, batch.indices, split)
            _write_rows(out, offset, batch.indices.numpy(), half)
            sums.index_add_(0, batch.labels, f.double())
    dist.all_reduce_sum(sums)
    if not dist.is_main():
        return
    counts = torch.bincount(dataset.targets, minlength=c)
    means = (sums / counts.clamp(min=1)[:, None]).float()
    from safetensors.torch import save_file

    save_file({"means": means, "counts": counts, "labels": dataset.targets.clone()}, str(tmp / "stats.safetensors"))
    write_json(
        tmp / "stats.json",
        {
            "key": key,
            "dataset": data.name,
            "split": split,
            "num_images": n,
            "backbone": backbone.identity(),
            "resize": resize,
            "crop": crop,
            "view_seed": view_seed,
        },
    )


def _write_rows(out, offset: int, rows: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` as rows ``rows`` of the .npy file ``out`` (a batch is one run of consecutive rows)."""
    row_bytes = values.shape[1] * values.itemsize
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for run_rows, run_values in zip(np.split(rows, breaks), np.split(values, breaks), strict=True):
        if len(run_rows):
            os.pwrite(out.fileno(), np.ascontiguousarray(run_values).tobytes(), offset + int(run_rows[0]) * row_bytes)


def _feature_error(f: torch.Tensor, backbone: Backbone, indices: torch.Tensor, split: str) -> DataError:
    """Features the float16 cache cannot hold: non-finite ones, or finite ones beyond float16's range."""
    images = f"images {indices[:5].tolist()}{'...' if len(indices) > 5 else ''} of {split}"
    if not torch.isfinite(f).all():
        return DataError(f"backbone '{backbone.name}' gives non-finite features for {images}")
    return DataError(
        f"backbone '{backbone.name}' gives features up to {float(f.abs().max()):.3g} in magnitude for {images}, "
        f"beyond the {F16_MAX:g} that the float16 feature cache holds; use a backbone whose features are "
        "normalised (or scale its outputs down)"
    )


def _load_bank(directory: Path, key: str) -> FeatureBank:
    from safetensors.torch import load_file

    try:
        t = load_file(str(directory / "stats.safetensors"))
        np.load(directory / "features.npy", mmap_mode="r")
    except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, not trusted
        shutil.rmtree(directory, ignore_errors=True)
        raise DataError(f"the feature cache {directory} was damaged and has been removed; run again") from None
    return FeatureBank(directory, t["labels"], t["means"], t["counts"], key)
