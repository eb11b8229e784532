"""Image datasets with a common shape: items are (float image in [0,1], 3xHxW; int label).

Passes over a dataset go through ``iter_batches``: in-memory sets are sliced; image files are decoded, resized and
cropped as uint8 by DataLoader worker processes, one whole batch per task (``--workers``; one per available core by
default). The worker count never changes the images: each file is decoded on its own, the same way in any process.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..core.errors import ConfigError, DataError
from .decode import decode_resized, load_image, resize_center_crop


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LabelledImages(Dataset):
    """Base class: a dataset that knows all its labels without decoding images."""

    targets: torch.Tensor
    # Worker processes that decode files for a pass (None: one per available core; 0: the calling process).
    workers: int | None = None

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
    """Images read from files on demand (ImageFolder layout and friends).

    Paths are kept in one numpy byte array, not a list of Python strings: worker processes read them without
    touching reference counts, so they do not copy the parent's pages. ``identity`` (with ``rows``, the positions in
    the listing it names) identifies the files without reading them, e.g. a manifest's digest; without it the
    fingerprint reads each file's size and modification time once. ``jpeg`` marks JPEG files (for the GPU decoder).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        targets: torch.Tensor,
        root: str | Path = "",
        *,
        identity: str | None = None,
        rows: np.ndarray | None = None,
        jpeg: np.ndarray | None = None,
    ):
        self._paths = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
        self.targets = targets.long()
        self.root = str(root)
        self.identity = identity
        self.rows = np.arange(len(self._paths)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.jpeg = jpeg
        self._fingerprint: str | None = None

    def path(self, i: int) -> str:
        return os.fsdecode(self._paths[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return load_image(self.path(i)), int(self.targets[i])

    def subset(self, indices: torch.Tensor) -> FileImages:
        idx = indices.numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        out = FileImages.__new__(FileImages)
        out._paths, out.targets, out.root = self._paths[idx], self.targets[indices], self.root
        out.identity, out.rows, out._fingerprint = self.identity, self.rows[idx], None
        out.jpeg = None if self.jpeg is None else self.jpeg[idx]
        out.workers = self.workers
        return out

    def fingerprint(self) -> str:
        """Computed once per object (the statistics pass asks for it at every call)."""
        if self._fingerprint is None:
            h = hashlib.sha1()
            if self.identity is not None:
                h.update(self.identity.encode())
                h.update(self.rows.tobytes())
                h.update(self.targets.numpy().tobytes())
            else:
                for i, label in enumerate(self.targets.tolist()):
                    path = self.path(i)
                    st = Path(path).stat()
                    rel = path[len(self.root) :] if self.root and path.startswith(self.root) else path
                    h.update(f"{rel}|{st.st_size}|{int(st.st_mtime)}|{label}\n".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


def to_rgb_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x (1|3) x H x W -> float32 N x 3 x H x W in [0, 1]."""
    images = images.float().div_(255.0)
    return images.expand(-1, 3, -1, -1).contiguous() if images.shape[1] == 1 else images


def as_float(images: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """A batch from ``iter_batches`` on ``device`` as float in [0, 1]. uint8 batches (image files) move first
    and convert there: a quarter of the bytes to copy, and the conversion runs on the GPU when there is one."""
    if device is not None:
        images = images.to(device, non_blocking=True)
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


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
    num_workers: int | None = None,
    *,
    keep_uint8: bool = False,
    pin_memory: bool = False,
    jpeg_device: torch.device | None = None,
) -> Iterator[Batch]:
    """Yield preprocessed batches in index order. In-memory sets are sliced, never per-item.

    Image files are decoded by ``num_workers`` processes (default: ``data.workers``). ``keep_uint8`` leaves their
    batches uint8 (convert with ``as_float`` where they are used); in-memory sets always give float.
    ``pin_memory`` pins them for an asynchronous copy to a GPU. ``jpeg_device``: decode a folder of JPEGs on that
    device with torchvision (CUDA: nvJPEG) instead of PIL in the workers.
    """
    order = torch.arange(len(data)) if indices is None else indices
    if isinstance(data, TensorImages):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield Batch(resize_center_crop(data.batch(idx), resize, crop), data.targets[idx], idx)
        return
    starts = range(0, len(order), batch_size)
    workers = loader_workers(data.workers if num_workers is None else num_workers, len(starts))
    if isinstance(data, FileImages):
        gpu = jpeg_device is not None and data.jpeg is not None and bool(data.jpeg[order.numpy()].all())
        tasks = _FileBatches(data, order, batch_size, resize, crop, raw=gpu)
        loader = _loader(tasks, workers, pin_memory and not gpu)
        if gpu:
            from .gpu_jpeg import decode_jpeg_batch

            for start, (blob, lengths) in zip(starts, loader, strict=True):
                idx = order[start : start + batch_size]
                paths = [data.path(i) for i in idx.tolist()]
                images = decode_jpeg_batch(blob, lengths, paths, resize, crop, jpeg_device)
                yield Batch(images if keep_uint8 else as_float(images), data.targets[idx], idx)
            return
        for start, images in zip(starts, loader, strict=True):
            idx = order[start : start + batch_size]
            yield Batch(images if keep_uint8 else as_float(images), data.targets[idx], idx)
        return
    # Any other dataset: its items as they are (e.g. already prepared for a model), batched by a DataLoader.
    loader = DataLoader(
        torch.utils.data.Subset(data, order.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
    )
    start = 0
    for images, labels in loader:
        idx = order[start : start + len(labels)]
        start += len(labels)
        yield Batch(images, labels, idx)


def loader_workers(requested: int | None, batches: int) -> int:
    """Worker processes for a pass of ``batches`` batches: as requested (None: one per available core), at most
    one per batch, and none for a single batch (starting a process costs more than decoding it here)."""
    workers = available_cores() if requested is None else requested
    if workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {workers}")
    return 0 if batches <= 1 else min(workers, batches)


def _loader(tasks: Dataset, workers: int, pin_memory: bool) -> DataLoader:
    """A loader of whole batches (``batch_size=None``): a task decodes one batch, one tensor crosses back. Each
    worker keeps two batches ready; it is iterated once, so its workers end with the pass. Torch runs each worker
    with one thread (its worker loop sets it), so the workers share the cores and the main process keeps its
    threads for the forward; the workers also run at the lowest scheduling priority (``_decode_in_spare_time``)."""
    return DataLoader(
        tasks,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        worker_init_fn=_decode_in_spare_time if workers else None,
    )


def _decode_in_spare_time(_worker: int) -> None:
    """Lowest priority for a decoding worker. On a CPU the forward's threads wait for one another at every
    operation, so a worker that preempts one of them stalls all; at the lowest priority the workers decode in the
    time the forward leaves, and still get the cores whenever the forward waits for data. Measured on 2 cores at
    crop 32: the pass at 0.82-0.96 of its bound per round instead of 0.65-0.87; at crop 224 at the bound either way
    (benchmarks/data_pipeline.py)."""
    if hasattr(os, "nice"):
        os.nice(19)


class _FileBatches(Dataset):
    """Task ``k``: batch ``k`` of ``order``, decoded and cropped to uint8 B x 3 x crop x crop, or (``raw``) the
    files' bytes concatenated with their lengths, for a decoder on the GPU."""

    def __init__(self, files: FileImages, order: torch.Tensor, batch_size: int, resize: int, crop: int, raw: bool):
        self.files, self.order, self.batch_size = files, order, batch_size
        self.resize, self.crop, self.raw = resize, crop, raw

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __getitem__(self, k: int):
        idx = self.order[k * self.batch_size : (k + 1) * self.batch_size].tolist()
        paths = [self.files.path(i) for i in idx]
        if self.raw:
            from .gpu_jpeg import read_files

            return read_files(paths)
        out = np.empty((len(paths), self.crop, self.crop, 3), dtype=np.uint8)
        for j, path in enumerate(paths):
            out[j] = decode_resized(path, self.resize, self.crop)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


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
