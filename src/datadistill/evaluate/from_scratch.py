"""Train a network from scratch on the synthetic set and test it (docs/protocols.md): the ``convnet`` protocol,
and ``convnet-full``, the same network trained on the whole real train split (the table's upper bound).

Two recipes:
- ``dm`` (DM / DSA code): batch 256, 1000 epochs, lr 0.01 x0.1 at half, per-sample DSA
  ``color_crop_cutout_flip_scale_rotate`` with one operation per batch (the code's ``aug_mode='S'``);
- ``idc`` (IDC / TGDD code): batch 64, 1500 epochs, x0.2 at 2/3 and 5/6, per-sample DSA
  ``color_crop_flip_scale_rotate`` (flip and color always, one of crop / scale / rotate) + CutMix p 0.5, beta 1.

Model selection uses the VALIDATION split only: accuracy on it every ``val_every`` epochs, the best epoch's
weights are kept and tested, and the last epoch's test accuracy is reported beside it. (The IDC / TGDD code
reports the best of its periodic tests on the test set, which selects on test; we do not.) Sets made with
multi-formation (``meta.factor`` > 1) are decoded first, as the code does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..core.errors import ConfigError
from ..core.options import option
from ..data import RealData
from ..data.augment import DSA, DSA_CODE_STRATEGY, default_strategy
from ..data.memory import MemorySplit, StreamedSplit, channel_stats, in_memory
from ..models.architectures import ARCHITECTURES, ModelSpec, build_model
from ..synset.params import decode_multi_formation
from ..synset.set import SyntheticSet
from ..training.experts import ExpertOptions, TrajectoryStore, train_experts
from ..training.supervised import FloatImages, InputNorm, Recipe, accuracy
from .linear_probe import check_compatible
from .protocols import EvalJob, Protocol, register_protocol
from .results import EvalResult
from .training import fit_and_select

RECIPES = {
    "dm": {
        "epochs": 1000,
        "batch_size": 256,
        "milestones": (0.5,),
        "gamma": 0.1,
        "dsa_strategy": DSA_CODE_STRATEGY,
        "dsa_mode": "one",
        "cutmix": 0.0,
    },
    "idc": {
        "epochs": 1500,
        "batch_size": 64,
        "milestones": (2 / 3, 5 / 6),
        "gamma": 0.2,
        "dsa_strategy": "color_crop_flip_scale_rotate",
        "dsa_mode": "idc",
        "cutmix": 0.5,
    },
}


@dataclass
class ConvNetOptions:
    arch: str = option(
        "convnet", "network trained from scratch; others give the cross-architecture test", tuple(ARCHITECTURES)
    )
    recipe: str = option("idc", "training recipe: dm (DM/DSA code) or idc (IDC/TGDD code, with CutMix)", ("dm", "idc"))
    epochs: int | None = option(None, "training epochs (default: the recipe's, 1000 dm / 1500 idc)")
    lr: float = option(0.01, "SGD learning rate (momentum 0.9, weight decay 5e-4)")
    batch_size: int | None = option(None, "batch size (default: the recipe's, 256 dm / 64 idc)")
    dsa: bool = option(True, "per-sample DSA augmentation while training")
    dsa_strategy: str | None = option(
        None,
        "DSA strategy (default: the recipe's, without flip on digit datasets "
        "as the DSA / DM authors and the IDC code do)",
    )
    cutmix: float | None = option(None, "CutMix probability per batch (default: the recipe's, 0 dm / 0.5 idc)")
    val_every: int | None = option(
        None,
        "validation accuracy every N epochs for model selection "
        "(default: epochs/6, as the code's test interval 250 of 1500)",
    )
    width: int | None = option(None, "network width (default: 128 ConvNet, 64 ResNet)")
    depth: int | None = option(None, "ConvNet depth (default: from the resolution)")
    resolution: int | None = option(None, "training resolution (default: the synthetic set's)")
    decode: bool = option(True, "decode multi-formation sets before training")
    factor: int | None = option(None, "multi-formation factor of the set (default: its meta or run config, else 1)")
    val_images: int | None = option(
        None,
        "periodic validation on a fixed class-balanced subset of this many "
        "images (default: the whole validation split)",
    )

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "val_every", "width", "depth", "resolution", "factor", "val_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or (self.cutmix is not None and not 0 <= self.cutmix <= 1):
            raise ConfigError("--lr must be positive and --cutmix in [0, 1]")
        self.make_recipe()

    def make_recipe(self, mirror_safe: bool = True) -> Recipe:
        """The training recipe; ``mirror_safe`` is the dataset's (``RealData.mirror_safe``)."""
        base = RECIPES[self.recipe]
        strategy = self.dsa_strategy or default_strategy(base["dsa_strategy"], mirror_safe)
        dsa = DSA(strategy, mode=base["dsa_mode"]) if self.dsa else None
        return Recipe(
            epochs=self.epochs or base["epochs"],
            batch_size=self.batch_size or base["batch_size"],
            lr=self.lr,
            milestones=base["milestones"],
            gamma=base["gamma"],
            dsa=dsa,
            cutmix=base["cutmix"] if self.cutmix is None else self.cutmix,
        )


def synset_tensors(
    synset: SyntheticSet, resolution: int, decode: bool, factor: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images of a set: decoded when it was made with multi-formation (its meta or run config say the
    factor), resized to ``resolution`` if needed."""
    images, labels = synset.images, synset.labels
    factor = int(factor if factor and factor > 1 else synset.meta.get("factor") or 1)
    if decode and factor > 1:
        images, labels = decode_multi_formation(images, labels, factor)
    if images.shape[-1] != resolution or images.shape[-2] != resolution:
        from ..data import resize_center_crop

        images = resize_center_crop(images, resolution, resolution)
    return images, labels


def balanced_subset(targets: torch.Tensor, num_classes: int, n: int) -> torch.Tensor:
    """Indices of the first ``n / C`` images of every class (index order, so the subset is fixed)."""
    per = max(1, n // num_classes)
    return torch.cat([torch.nonzero(targets == c).flatten()[:per] for c in range(num_classes)]).sort().values


def _eval_splits(data: RealData, resolution: int, val_images: int | None = None) -> tuple[MemorySplit, StreamedSplit]:
    """The validation split in memory (it is tested every few epochs; with ``val_images``, a fixed class-balanced
    subset of it) and the test split read batch by batch (tested once or twice). The train split is never
    loaded: training is on the synthetic set, and the input normalisation comes from a cached streaming pass."""
    if data.test is None:
        raise ConfigError(f"dataset '{data.name}' has no test split")
    val = data.val
    if val_images and val_images < len(val):
        val = val.subset(balanced_subset(val.targets, data.num_classes, val_images))
    return in_memory(val, resolution, data.num_classes), StreamedSplit(data.test, resolution, data.num_classes)


def run_convnet(job: EvalJob[ConvNetOptions]) -> EvalResult:
    opts: ConvNetOptions = job.opts
    check_compatible(job.synsets, job.data)
    recipe = opts.make_recipe(job.data.mirror_safe)
    resolution = opts.resolution or job.synsets[0].images.shape[-1]
    val, test = _eval_splits(job.data, resolution, opts.val_images)
    norm = InputNorm(*channel_stats(job.data.train, resolution, job.data.num_classes))
    spec = ModelSpec(opts.arch, job.data.num_classes, norm.channels, resolution, opts.width, opts.depth)
    val_every = opts.val_every or max(1, recipe.epochs // 6)
    runs = []
    for seed, synset in zip(job.seeds, job.synsets, strict=True):
        factor = opts.factor or job.run_config.get("options", {}).get("factor") or 1
        images, labels = synset_tensors(synset, resolution, opts.decode, factor)
        source = FloatImages(images.to(job.device), labels)
        runs.append(fit_and_select(spec, norm, source, recipe, val, test, seed, val_every, job.device))
    details = {
        "recipe": opts.recipe,
        "epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "dsa": recipe.dsa.strategy if recipe.dsa else None,
        "cutmix": recipe.cutmix,
        "val_every": val_every,
        "resolution": resolution,
        "train_images": len(labels),
        "channels": norm.channels,
        "val_images": len(val.labels),
        **_summary(runs),
    }
    return EvalResult("convnet", opts.arch, [r["test"] for r in runs], [r["val"] for r in runs], job.seeds, details)


def _summary(runs: list[dict]) -> dict:
    import numpy as np

    last = [r["test_last"] for r in runs]
    return {
        "selected_epoch": [r["epoch"] for r in runs],
        "test_last": last,
        "test_last_mean": float(np.mean(last)),
        "test_last_std": float(np.std(last)),
        "val_curves": [r["val_curve"] for r in runs],
    }


def run_full(job: EvalJob[ExpertOptions]) -> EvalResult:
    """Experts k = 0..seeds-1 (seeds first_seed + k), trained on the whole real train split with the expert
    recipe (cached; TGDD's own experts when first_seed is their expert_seed, 3407); the epoch is selected on
    validation."""
    defaults, seeds, first = ExpertOptions(), job.common.seeds, job.common.first_seed
    if job.opts.num_experts not in (defaults.num_experts, seeds) or job.opts.expert_seed not in (
        defaults.expert_seed,
        first,
    ):
        # the experts are this protocol's seeds: a different count or seed would be silently overridden
        raise ConfigError(
            f"convnet-full trains one expert per evaluation seed ({seeds} from seed {first}): set them with "
            f"--seeds and --first-seed, not --num-experts {job.opts.num_experts} / --expert-seed {job.opts.expert_seed}"
        )
    opts = replace(job.opts, num_experts=job.common.seeds, expert_seed=job.common.first_seed)
    folder = train_experts(job.data, opts, job.device)
    store = TrajectoryStore.load(folder)
    val, test = _eval_splits(job.data, store.spec.resolution)
    model = build_model(store.spec).to(job.device)
    runs = []
    for i, info in enumerate(store.infos):
        curve = [(j + 1, v) for j, v in enumerate(info["val_acc"]) if v is not None]
        if not curve:
            raise ConfigError("convnet-full selects the epoch on validation: use --expert-val-every >= 1")
        epoch, val_acc = max(curve, key=lambda t: (t[1], t[0]))
        model.load_state_dict(store.params(i, epoch))
        selected = accuracy(model, store.norm, test, job.device)
        model.load_state_dict(store.params(i, store.epochs))
        last = accuracy(model, store.norm, test, job.device) if epoch != store.epochs else selected
        runs.append({"test": selected, "val": val_acc, "epoch": epoch, "test_last": last, "val_curve": curve})
    details = {
        "epochs": store.epochs,
        "batch_size": opts.expert_batch,
        "lr": opts.expert_lr,
        "dsa": opts.expert_dsa,
        "cutmix": opts.expert_cutmix,
        "epoch_images": opts.expert_epoch_images,
        "train_images": len(job.data.train),
        "resolution": store.spec.resolution,
        **_summary(runs),
    }
    return EvalResult(
        "convnet-full", store.spec.arch, [r["test"] for r in runs], [r["val"] for r in runs], job.seeds, details
    )


register_protocol(
    Protocol(
        "convnet",
        "train a ConvNet (or --arch) from scratch on the synthetic set; epoch "
        "selected on validation (DM / IDC-TGDD recipes)",
        ConvNetOptions,
        run_convnet,
    )
)
register_protocol(
    Protocol(
        "convnet-full",
        "the expert ConvNets trained on the whole real train split (upper bound; seeds = experts, "
        "TGDD's own with --first-seed 3407)",
        ExpertOptions,
        run_full,
        needs_synset=False,
    )
)
