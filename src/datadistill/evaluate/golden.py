"""The full-dataset linear probe (docs/protocols.md, "full"), whose head is the golden classifier of CI.

A fresh head (N(0, 0.01^2)) trains on frozen features of every real training image: Adam, lr = base x
batch/256, cosine over ``full_epochs``, accuracy at the last epoch. The paper draws a fresh AugBasic view of
every image each epoch; here the features come from the cached statistics pass (center crops) and, with
``full_views`` K > 0, from K cached AugBasic views of the whole train split (each epoch picks one of them per
image). The training features are read from their memory maps batch by batch, never held whole. Heads are
cached by (features, options, seed): an evaluation seed's CI, KD, JT and ST (and the ``full`` protocol with the
same seed) reuse one training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core import dist
from ..core.errors import ConfigError
from ..core.io import atomic_dir, cache_root, write_json
from ..core.options import option, positive
from ..core.progress import log
from ..data import RealData
from ..features.backbones import Backbone
from ..features.bank import FeatureBank, feature_bank
from .protocols import EvalBackboneOptions, EvalJob, Protocol, register_protocol
from .results import EvalResult
from .training import accuracy, fit, new_head


@dataclass
class FullProbeOptions:
    full_epochs: int = option(100, "epochs of the full-dataset probe (the golden classifier)")
    full_batch: int = option(128, "batch size of the full-dataset probe")
    full_views: int = option(
        0,
        "cached AugBasic views per real training image for the full-dataset probe "
        "(0: center crops from the statistics pass)",
    )
    full_base_lr: float = option(1e-3, "full-dataset probe lr before the batch/256 scaling")

    def validate(self) -> None:
        if self.full_epochs < 1 or self.full_batch < 1 or self.full_views < 0:
            raise ConfigError("--full-epochs and --full-batch must be >= 1, --full-views >= 0")
        positive(self, "full_base_lr")

    def full_settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k in FullProbeOptions.__dataclass_fields__}


@dataclass
class GoldenResult:
    head: nn.Linear
    test_acc: float
    val_acc: float
    seed: int
    backbone: str
    crop: int
    settings: dict

    def summary(self) -> dict:
        return {
            "backbone": self.backbone,
            "crop": self.crop,
            "seed": self.seed,
            "test_acc": self.test_acc,
            "val_acc": self.val_acc,
            **self.settings,
        }


def golden_summary(results: list[GoldenResult]) -> dict:
    """The golden classifiers of one evaluation (one per seed) for its result details: backbone, crop, settings
    and each seed's accuracies."""
    first = results[0]
    return {
        "backbone": first.backbone,
        "crop": first.crop,
        "seeds": [r.seed for r in results],
        "test_acc": [r.test_acc for r in results],
        "val_acc": [r.val_acc for r in results],
        **first.settings,
    }


def train_banks(data: RealData, backbone: Backbone, crop: int, views: int, device: torch.device) -> list[FeatureBank]:
    """The cached training features of the full-dataset probe: the center crops (``views`` 0) or ``views``
    AugBasic views of the whole train split, one float16 memory map each."""
    if views == 0:
        return [feature_bank(data, backbone, "train", crop=crop, device=device)]
    return [feature_bank(data, backbone, "train", crop=crop, device=device, view_seed=v) for v in range(views)]


def bank_rows(banks: list[FeatureBank], images: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Row ``images[j]`` of bank ``views[j]`` for every j, as float32: one sorted read per view from its memory
    map, opened for the read only (pages a map has touched count as resident memory until it is closed)."""
    out = None
    for v in views.unique().tolist():
        where = torch.nonzero(views == v).flatten()
        rows, order = images[where].sort()
        features = banks[v].tensor(rows)
        if out is None:
            out = features.new_empty(len(images), features.shape[1])
        out[where[order]] = features
    return out


def golden_classifier(
    data: RealData, backbone: Backbone, crop: int, opts: FullProbeOptions, seed: int, device: torch.device
) -> GoldenResult:
    """The full-dataset probe head for (data, backbone, crop, options, seed), trained once and cached (under
    torchrun by rank 0; the other ranks read the cache)."""
    for split in ("train", "val", "test"):  # collective passes when distributed; cache hits inside the block
        feature_bank(data, backbone, split, crop=crop, device=device)
    for v in range(opts.full_views):
        feature_bank(data, backbone, "train", crop=crop, device=device, view_seed=v)
    with dist.main_first():
        return _golden_classifier(data, backbone, crop, opts, seed, device)


def _golden_classifier(
    data: RealData, backbone: Backbone, crop: int, opts: FullProbeOptions, seed: int, device: torch.device
) -> GoldenResult:
    settings = FullProbeOptions.full_settings(opts)
    test = feature_bank(data, backbone, "test", crop=crop, device=device)
    val = feature_bank(data, backbone, "val", crop=crop, device=device)
    train_key = feature_bank(data, backbone, "train", crop=crop, device=device).key
    ident = json.dumps({"train": train_key, "test": test.key, "val": val.key, "seed": seed, **settings}, sort_keys=True)
    directory = cache_root() / "golden" / hashlib.sha1(ident.encode()).hexdigest()[:20]
    head = nn.Linear(backbone.feat_dim, data.num_classes)
    if (directory / "info.json").exists():
        from safetensors.torch import load_file

        head.load_state_dict(load_file(str(directory / "head.safetensors")))
        info = json.loads((directory / "info.json").read_text())
        return GoldenResult(head, info["test_acc"], info["val_acc"], seed, backbone.name, crop, settings)

    banks = train_banks(data, backbone, crop, opts.full_views, device)
    labels, views, n = banks[0].labels, len(banks), len(banks[0].labels)
    g = torch.Generator().manual_seed(seed)
    # On a GPU the head trains there: over a million images x 100 epochs is hours on one CPU thread.
    head = new_head(backbone.feat_dim, data.num_classes, g).to(device)
    on_device = labels.to(device)
    log.info("training the full-dataset probe on %d images x %d view(s) of %s @ %s", n, views, data.name, backbone.name)
    fit(
        [(head, opts.full_base_lr)],
        n,
        views,
        opts.full_epochs,
        opts.full_batch,
        lambda i, v: F.cross_entropy(head(bank_rows(banks, i, v).to(device, non_blocking=True)), on_device[i]),
        g,
        desc=f"full probe @ {backbone.name}",
    )
    head = head.cpu()
    result = GoldenResult(
        head,
        accuracy(head, test),
        accuracy(head, val),
        seed,
        backbone.name,
        crop,
        settings,
    )
    from safetensors.torch import save_file

    with atomic_dir(directory) as tmp:
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp / "head.safetensors"))
        write_json(tmp / "info.json", {**result.summary(), "dataset": data.name})
    return result


@dataclass
class FullOptions(EvalBackboneOptions, FullProbeOptions):
    def validate(self) -> None:
        EvalBackboneOptions.validate(self)
        FullProbeOptions.validate(self)


def run_full(job: EvalJob[FullOptions]) -> EvalResult:
    opts = job.opts
    backbone = job.backbone(opts.eval_backbone, opts.weights)
    crop = job.crop_for(backbone, opts.crop)
    runs = [golden_classifier(job.data, backbone, crop, opts, seed, job.device) for seed in job.seeds]
    return EvalResult(
        "full",
        backbone.name,
        [r.test_acc for r in runs],
        [r.val_acc for r in runs],
        job.seeds,
        {
            "crop": crop,
            "backbone_weights": backbone.weights,
            "num_images": len(job.data.train),
            **FullProbeOptions.full_settings(opts),
        },
    )


register_protocol(
    Protocol(
        "full",
        "linear probe on the full real training set (its head is the golden classifier)",
        FullOptions,
        run_full,
        needs_synset=False,
        shard_seeds=False,
    )
)
