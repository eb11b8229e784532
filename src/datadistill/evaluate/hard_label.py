"""The hard-label from-scratch protocol of Minimax / MGD3 / DMGD for ImageNet subsets (docs/protocols.md):
protocol ``hard-label``.

ResNet-10-AP (average-pool downsampling, instance norm; ``--arch`` from the architecture registry) trained on
the synthetic set at 224 px: RandomResizedCrop(224, scale 0.5-1) + flip + ColorJitter(0.4, 0.4, 0.4) + PCA
lighting (0.1) per sample, ImageNet normalisation, CutMix (beta 1, probability 1.0); batch 64; MultiStepLR
x0.2 at 2/3 and 5/6; epochs from the IPC table (IPC 1: 3000, <= 10: 2000, <= 50: 1500, <= 200: 1000, <= 500:
500, else 300; x2/3 rounded down to a multiple of 100 for 100-class sets). Optimiser: SGD lr 0.01, momentum
0.9, wd 5e-4 (Minimax) or ``--optimizer adamw`` lr 1e-3, wd 0.01 (DMGD's released ``train.py``). Test images:
resize to 256 / 224 of the input, center crop.

Selection: the papers report the best of periodic test accuracies; here the epoch is selected on the
VALIDATION split (held out of train) every ``--val-every`` epochs, and its test accuracy is reported (the last
epoch's beside it), as the ``convnet`` protocol does. Training reuses the ConvNet protocol's loop
(``training.fit_and_select``), with this recipe's augmentation and optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import ConfigError
from ..core.options import at_least, option, positive
from ..data.augment import StandardAugment
from ..data.memory import MemorySplit, in_memory
from ..features.bank import resize_for
from ..models.architectures import ARCHITECTURES, ModelSpec
from ..training.supervised import FloatImages, InputNorm, Recipe, make_optimizer
from .from_scratch import synset_tensors
from .linear_probe import check_compatible
from .protocols import EvalJob, Protocol, register_protocol
from .results import EvalResult
from .training import fit_and_select

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LIGHTING_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
LIGHTING_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
OPTIMIZERS = {"sgd": {"lr": 0.01, "weight_decay": 5e-4}, "adamw": {"lr": 1e-3, "weight_decay": 0.01}}


def epochs_for(ipc: int, num_classes: int) -> int:
    """Minimax's epochs-by-IPC table."""
    epochs = (
        3000
        if ipc == 1
        else 2000
        if ipc <= 10
        else 1500
        if ipc <= 50
        else 1000
        if ipc <= 200
        else 500
        if ipc <= 500
        else 300
    )
    if num_classes >= 100:
        epochs = int(epochs * 2 / 3) // 100 * 100
    return epochs


@dataclass
class HardLabelOptions:
    arch: str = option("resnet10-ap", "network trained from scratch", tuple(ARCHITECTURES))
    optimizer: str = option("sgd", "SGD (Minimax) or AdamW (DMGD's released train.py)", tuple(OPTIMIZERS))
    lr: float | None = option(None, "learning rate (default: 0.01 SGD, 1e-3 AdamW)")
    weight_decay: float | None = option(None, "weight decay (default: 5e-4 SGD, 0.01 AdamW)")
    epochs: int | None = option(None, "training epochs (default: Minimax's table by IPC and class count)")
    batch_size: int = option(64, "batch size")
    resolution: int = option(224, "training and test input size")
    rrc_scale: float = option(0.5, "smallest area fraction of RandomResizedCrop")
    jitter: bool = option(True, "ColorJitter(0.4, 0.4, 0.4) + PCA lighting (0.1)")
    cutmix: float = option(1.0, "CutMix probability per batch (beta 1)")
    val_every: int | None = option(None, "validation every N epochs for model selection (default: epochs / 10)")
    width: int | None = option(None, "network width (default: the architecture's)")

    def validate(self) -> None:
        for name in ("epochs", "val_every", "width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.batch_size < 1 or self.resolution < 8 or not 0 < self.rrc_scale <= 1 or not 0 <= self.cutmix <= 1:
            raise ConfigError("need --batch-size >= 1, --resolution >= 8, --rrc-scale in (0, 1], --cutmix in [0, 1]")
        positive(self, "lr")
        at_least(self, 0, "weight_decay")


class MinimaxAugment:
    """Per-sample RRC + flip (``StandardAugment``), then ColorJitter and PCA lighting in [0,1] pixel space.
    Called by the training loop on normalised images: it undoes and redoes ``norm`` around the colour ops.
    ``strategy`` names it in the result details."""

    def __init__(self, norm: InputNorm, size: int, scale_min: float, jitter: bool):
        self.norm, self.jitter = norm, jitter
        self.crop = StandardAugment(out_size=size, scale=(scale_min, 1.0), noise_p=0.0)
        self.strategy = f"rrc{size}(scale {scale_min}-1)+flip" + ("+jitter0.4+lighting0.1" if jitter else "")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.crop(x, generator)
        if not self.jitter or x.shape[1] != 3:
            return x
        mean = self.norm.mean.to(x).view(1, -1, 1, 1)
        std = self.norm.std.to(x).view(1, -1, 1, 1)
        img = x * std + mean
        b = len(x)
        f = (1 + (torch.rand(b, 3, generator=generator) * 2 - 1) * 0.4).to(x)  # brightness, contrast, saturation
        img = img * f[:, 0].view(b, 1, 1, 1)
        gray = (0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]).unsqueeze(1)
        img = (img - gray.mean(dim=(2, 3), keepdim=True)) * f[:, 1].view(b, 1, 1, 1) + gray.mean(
            dim=(2, 3), keepdim=True
        )
        gray = (0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]).unsqueeze(1)
        img = (img - gray) * f[:, 2].view(b, 1, 1, 1) + gray
        alpha = torch.randn(b, 3, generator=generator) * 0.1
        rgb = (alpha * LIGHTING_EIGVAL) @ LIGHTING_EIGVEC.T
        img = (img + rgb.to(x).view(b, 3, 1, 1)).clamp(0, 1)
        return (img - mean) / std


class CenterCropped:
    """A memory split resized to 256/224 of ``size``, served center-cropped to ``size`` (the test transform)."""

    def __init__(self, split: MemorySplit, size: int):
        self.split, self.size, self.labels = split, size, split.labels

    def batch(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        x = self.split.batch(indices)
        top = (x.shape[-1] - self.size) // 2
        return x[..., top : top + self.size, top : top + self.size]


def _adamw(model: torch.nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)


def run_hard_label(job: EvalJob[HardLabelOptions]) -> EvalResult:
    opts: HardLabelOptions = job.opts
    check_compatible(job.synsets, job.data)
    ipc = job.synsets[0].ipc
    epochs = opts.epochs or epochs_for(ipc, job.data.num_classes)
    defaults = OPTIMIZERS[opts.optimizer]
    lr = opts.lr or defaults["lr"]
    wd = defaults["weight_decay"] if opts.weight_decay is None else opts.weight_decay
    size = opts.resolution
    if job.data.test is None:
        raise ConfigError(f"dataset '{job.data.name}' has no test split")
    val = CenterCropped(in_memory(job.data.val, resize_for(size), job.data.num_classes), size)
    test = CenterCropped(in_memory(job.data.test, resize_for(size), job.data.num_classes), size)
    channels = val.split.channels
    norm = (
        InputNorm(torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)) if channels == 3 else InputNorm.of(val.split)
    )
    augment = MinimaxAugment(norm, size, opts.rrc_scale, opts.jitter)
    recipe = Recipe(
        epochs=epochs,
        batch_size=opts.batch_size,
        lr=lr,
        milestones=(2 / 3, 5 / 6),
        gamma=0.2,
        weight_decay=wd,
        dsa=augment,
        cutmix=opts.cutmix,
    )
    optimizer = make_optimizer if opts.optimizer == "sgd" else _adamw
    spec = ModelSpec(opts.arch, job.data.num_classes, channels, size, opts.width)
    val_every = opts.val_every or max(1, epochs // 10)
    runs = []
    for seed, synset in zip(job.seeds, job.synsets, strict=True):
        images, labels = synset_tensors(synset, synset.images.shape[-1], decode=True)
        if channels == 1:
            images = images.mean(dim=1, keepdim=True)
        source = FloatImages(images.to(job.device), labels)
        runs.append(fit_and_select(spec, norm, source, recipe, val, test, seed, val_every, job.device, optimizer))
    details = {
        "optimizer": opts.optimizer,
        "lr": lr,
        "weight_decay": wd,
        "epochs": epochs,
        "batch_size": opts.batch_size,
        "augment": augment.strategy,
        "cutmix": opts.cutmix,
        "resolution": size,
        "val_every": val_every,
        "selected_epoch": [r["epoch"] for r in runs],
        "test_last": [r["test_last"] for r in runs],
        "val_curves": [r["val_curve"] for r in runs],
        "train_images": len(job.synsets[0]),
    }
    return EvalResult("hard-label", opts.arch, [r["test"] for r in runs], [r["val"] for r in runs], job.seeds, details)


register_protocol(
    Protocol(
        "hard-label",
        "Minimax/MGD3/DMGD hard-label protocol: ResNet-10-AP at 224 px, RRC + "
        "jitter + lighting + CutMix, SGD or AdamW; epoch selected on validation",
        HardLabelOptions,
        run_hard_label,
    )
)
