"""Datasets: registry, splits, batched iteration."""

from .catalog import DATASETS, available_datasets, load_dataset
from .datasets import (
    FileImages,
    LabelledImages,
    RealData,
    TensorImages,
    as_float,
    iter_batches,
    load_image,
    resize_center_crop,
)

__all__ = [
    "DATASETS",
    "FileImages",
    "LabelledImages",
    "RealData",
    "TensorImages",
    "as_float",
    "available_datasets",
    "iter_batches",
    "load_dataset",
    "load_image",
    "resize_center_crop",
]
