"""Synthetic sets stored as torch tensor files: the folders ``datadistill export`` writes (``meta.json`` beside
``images.pt`` / ``labels.pt``, or beside class folders of PNGs), and the files other projects release:

- an image tensor with its label tensor beside it, as MTT and DATM save theirs (``images_best.pt`` and
  ``labels_best.pt``; ``images_K.pt`` / ``labels_K.pt``): a folder holding ``images_best.pt``, or the images file;
- one ``.pt`` / ``.pth`` file holding a dict (``{"images": ..., "labels": ...}``, as LGM's ``data.pth``) or a
  tuple / list ``(images, labels)``.

Files are read with ``torch.load(weights_only=True)``: plain tensors, lists and dicts only; a pickle of other
objects is refused. Images are N x C x H x W with C = 1 or 3 (one channel is repeated to three, as datadistill's
own sets of grayscale data are); labels are N class indices, or N x classes scores (DATM's learned soft labels),
which are evaluated as their argmax. Other projects save images normalised with their dataset's statistics:
``input_norm`` (``--input-norm``) undoes that normalisation, by name (``NORM_PRESETS``) or as ``MEAN,STD`` or
``MEAN:STD``.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path

import torch

from ..core.errors import ConfigError, DataError
from ..core.progress import log

EXPORT_FORMAT = "datadistill.export/1"
TENSOR_SUFFIXES = (".pt", ".pth")

# Per-channel (mean, std) with which other projects normalise their sets, by the name --input-norm takes.
NORM_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # CIFAR-10 in the DC / DSA / DM code, MTT, DATM and DD-Ranking; MTT, DATM and DD-Ranking use it for CIFAR-100 too
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # CIFAR-100 in the DC / DSA / DM and IDC code
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    # ImageNet and its subsets, Tiny ImageNet (torchvision's statistics; MTT, DATM, DD-Ranking)
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2861,), (0.3530,)),
}

# Keys under which a dict file holds its images and its labels (lower case).
IMAGE_KEYS = ("images", "image", "x", "data", "image_syn", "images_syn", "syn_images")
LABEL_KEYS = ("labels", "label", "y", "targets", "label_syn", "labels_syn", "syn_labels")

# Pixels further than this outside [0, 1] mark a set as unbounded (float rounding of a normalisation round trip
# stays far below it).
RANGE_SLACK = 1e-4

InputNorm = tuple[tuple[float, ...], tuple[float, ...]] | None

NORM_HELP = (
    "undo the normalisation of a tensor file from another project: a preset ("
    + ", ".join(NORM_PRESETS)
    + "), MEAN,STD or MEAN:STD with one value or one per channel (e.g. 0.5,0.5 or "
    "0.4914,0.4822,0.4465:0.2023,0.1994,0.2010), or none "
    "(the values are pixels; kept as they are even outside [0, 1])"
)


def parse_input_norm(spec: str | None) -> InputNorm | str:
    """``None`` (not given), ``"none"`` (given: the values are pixels), or (mean, std) from a preset, from MEAN,STD
    (comma-separated: the means, then as many stds) or from MEAN:STD."""
    if spec is None:
        return None
    text = spec.strip().lower()
    if text == "none":
        return "none"
    if text in NORM_PRESETS:
        return NORM_PRESETS[text]
    mean, sep, std = text.partition(":")
    if not sep:  # MEAN,STD: the first half of the values are the means, the second half the stds
        items = text.split(",")
        mean, std = ",".join(items[: len(items) // 2]), ",".join(items[len(items) // 2 :])
    try:
        values = tuple(tuple(float(v) for v in part.split(",")) for part in (mean, std))
    except ValueError:
        values = ()
    if len(values) != 2 or len(values[0]) != len(values[1]) or min(values[1]) <= 0:
        raise ConfigError(
            f"--input-norm '{spec}' is not a preset ({', '.join(NORM_PRESETS)}), none, MEAN,STD or MEAN:STD with as "
            "many means as positive stds (e.g. 0.5,0.5 or 0.4914,0.4822,0.4465:0.2023,0.1994,0.2010)"
        )
    return values


def export_meta(folder: Path) -> dict | None:
    """The meta.json of a folder ``datadistill export`` wrote, else None."""
    path = folder / "meta.json"
    if not (folder.is_dir() and path.is_file()):
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT else None


def tensor_files(path: Path) -> tuple[Path, Path | None] | None:
    """The (images, labels) files of a tensor set at ``path``; labels None where the images file holds both;
    None when ``path`` is not a tensor set (a folder without ``images_best.pt``, a file of another type)."""
    if path.is_dir():
        images = path / "images_best.pt"
        return (images, path / "labels_best.pt") if images.is_file() else None
    if path.suffix not in TENSOR_SUFFIXES:
        return None
    return path, next((f for f in labels_beside(path) if f.is_file()), None)


def labels_beside(images: Path) -> list[Path]:
    """Where the labels of an images file would lie: ``images_best.pt`` -> ``labels_best.pt``; MTT's un-whitened
    ``images_zca_K.pt`` -> ``labels_K.pt``."""
    name = re.sub(r"image", "label", images.name, count=1)
    names = dict.fromkeys([name, name.replace("_zca", "")] if name != images.name else [])
    return [images.with_name(n) for n in names]


def read_plain(path: Path) -> object:
    """``torch.load(path, weights_only=True)`` with one clear line for a file that is not plain tensors."""
    try:
        with warnings.catch_warnings():  # a bare pickle of a newer protocol draws a warning; its error says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        # torch's weights-only unpickler names the first global it refuses: "Unsupported global: GLOBAL module.Class"
        # in its zip files, "unsupported GLOBAL module.name whose module ... is blocked" in a bare pickle
        refused = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(exc), re.IGNORECASE)
        if refused:
            raise DataError(
                f"{path} holds Python objects ({refused.group(1)}) besides tensors, lists and dicts: only plain "
                "tensors are read (torch.load with weights_only=True); save the images and labels as tensors"
            ) from None
        raise DataError(
            f"cannot read {path} as a torch file of plain tensors (torch.load with weights_only=True: "
            f"{type(exc).__name__})"
        ) from None


def images_and_labels(obj: object, path: Path) -> tuple[object, object]:
    """(images, labels) from a dict or a 2-sequence."""
    if isinstance(obj, dict):
        lower = {str(k).lower(): v for k, v in obj.items()}
        images = next((lower[k] for k in IMAGE_KEYS if k in lower), None)
        labels = next((lower[k] for k in LABEL_KEYS if k in lower), None)
        if images is None or labels is None:
            raise DataError(
                f"{path} holds a dict with keys {sorted(map(str, obj))}: expected its images under one of "
                f"{', '.join(IMAGE_KEYS[:4])} and its labels under one of {', '.join(LABEL_KEYS[:4])}"
            )
        return images, labels
    if isinstance(obj, list | tuple) and len(obj) == 2:
        return obj[0], obj[1]
    raise DataError(
        f"{path} holds {_describe(obj)}, not images and labels: give an images file with its labels file beside it "
        "(images_best.pt and labels_best.pt), or a file holding a dict {'images': ..., 'labels': ...} or a "
        "tuple (images, labels)"
    )


def _describe(obj: object) -> str:
    if isinstance(obj, torch.Tensor):
        return f"one tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, list | tuple):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def check_tensors(
    images: object, labels: object, classes: list[str], where: str, labels_where: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Float N x C x H x W images (uint8 read as /255) and int64 labels within ``classes``, or one clear line
    naming what is wrong. The third value says the labels were scores (soft labels) reduced to their argmax."""
    labels_where = labels_where or where
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DataError(f"{where}: images and labels must be tensors, got {_describe(images)} and {_describe(labels)}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        channels_last = images.ndim == 4 and images.shape[-1] in (1, 3)
        hint = " (channels last? store them as N x C x H x W)" if channels_last else ""
        raise DataError(
            f"{where} holds images of shape {tuple(images.shape)}: expected N x C x H x W with C = 1 or 3{hint}"
        )
    soft = labels.ndim == 2 and labels.is_floating_point()
    if soft:
        if labels.shape[1] != len(classes):
            raise DataError(
                f"{labels_where} holds label scores for {labels.shape[1]} classes, but the dataset has {len(classes)}"
            )
        labels = labels.argmax(dim=1)
    elif labels.ndim != 1 or labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise DataError(
            f"{labels_where} holds labels of shape {tuple(labels.shape)} ({labels.dtype}): expected N class indices "
            "(or N x classes scores)"
        )
    if len(labels) != len(images):
        raise DataError(f"{where} holds {len(images)} images but {labels_where} {len(labels)} labels")
    if not len(images):
        raise DataError(f"{where} holds no images (a tensor of shape {tuple(images.shape)})")
    labels = labels.long()
    if int(labels.min()) < 0 or int(labels.max()) >= len(classes):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise DataError(
            f"{labels_where} has label {bad}, outside the {len(classes)} classes of the dataset (0-{len(classes) - 1})"
        )
    images = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    if not torch.isfinite(images).all():
        raise DataError(f"{where} holds NaN or infinite pixel values")
    return images, labels, soft


def undo_norm(images: torch.Tensor, norm: InputNorm | str, where: str) -> tuple[torch.Tensor, bool]:
    """Pixels from normalised values (per channel x * std + mean) and whether they leave [0, 1]. Without a
    normalisation (``None``) values outside [0, 1] are refused: they are normalised, and which statistics undo it
    is the user's to say."""
    if isinstance(norm, tuple):
        mean, std = (torch.tensor(v, dtype=torch.float64) for v in norm)
        c = images.shape[1]
        if len(mean) not in (1, c):
            raise ConfigError(f"--input-norm gives {len(mean)} channel statistics, but {where} has {c} channels")
        shape = (1, -1, 1, 1)
        images = (images.double() * std.view(shape) + mean.view(shape)).float()
    lo, hi = (float(v) for v in images.aminmax()) if images.numel() else (0.0, 1.0)
    outside = lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK
    if outside and norm is None:
        raise ConfigError(
            f"{where} holds values in [{lo:.3g}, {hi:.3g}], not pixels in [0, 1]: it is normalised; pass "
            f"--input-norm with the statistics it was normalised with (a preset: {', '.join(NORM_PRESETS)}; or "
            "MEAN:STD), or --input-norm none to evaluate the values as they are"
        )
    if outside:
        log.info("%s spans [%.3g, %.3g]: evaluated as it is, without clamping to [0, 1]", where, lo, hi)
    return (images if outside else images.clamp(0, 1)), outside


def reads_input_norm(path: Path) -> bool:
    """Whether the set at ``path`` is another project's tensor files, the sets ``input_norm`` applies to."""
    return export_meta(path) is None and tensor_files(path) is not None
