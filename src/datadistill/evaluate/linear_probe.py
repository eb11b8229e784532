"""Linear-probe evaluation (docs/protocols.md): vanilla, CI, KD, JT and ST, with and without
initial parameters (IP) from the golden classifier.

All modes train small linear maps on frozen features. The synthetic images' AugBasic views are drawn once
per seed (``views`` of them, a fresh one per epoch when views >= epochs as in the original) and pushed
through the evaluation backbone and, for the modes that need it, the distillation backbone, with the same
crop geometry for both; the maps then train on cached features. With ``augment`` off, the single view is the
resize + center crop the test images get (evaluation without augmentation, DD-Ranking's ARS). The view pass
streams (one batch of pixels at a time) and keeps the features as float16; the golden classifier is trained per
evaluation seed. Test and validation features are computed once per (data, backbone, crop), cached, and read in
chunks. Accuracy is taken at the last epoch (no selection); the validation split (held out of train) is reported
beside test for any choice a user makes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError, DataError
from ..core.options import at_least, fraction, option, positive
from ..core.progress import progress
from ..data import resize_center_crop
from ..data.augment import aug_basic
from ..features.backbones import Backbone
from ..features.bank import feature_bank, resize_for
from ..synset.set import SyntheticSet
from .golden import FullProbeOptions, golden_classifier, golden_summary
from .protocols import EvalBackboneOptions, EvalJob, Protocol, register_protocol
from .results import EvalResult
from .training import PROJECTOR_INITS, accuracy, copy_head, fit, new_head, new_projector

# The synthetic views' features are held as float16 between the pass and the probe's training and cast to float32
# per batch: half the memory of float32 (100 views x 1000 images x 1280 features: 256 MB instead of 512 MB). The
# real images' cached features are float16 too. Measured against float32, 3 seeds each: on digits (two sets;
# linear-probe, CI, KD, JT, ST-IP) every test accuracy was identical; on Fashion-MNIST (linear-probe, CI, ST-IP)
# three of nine differed, each by one test image in 10,000, against a seed-to-seed spread of about six.
FEATURE_DTYPE = torch.float16


@dataclass
class ProbeOptions(EvalBackboneOptions):
    epochs: int = option(1000, "probe epochs (passes over the synthetic set)")
    base_lr: float = option(1e-3, "head lr before the batch/256 scaling")
    batch_size: int = option(100, "probe batch size (at most the synthetic set's size)")
    views: int = option(100, "cached AugBasic views per synthetic image (fresh every epoch when >= epochs)")
    augment: bool = option(
        True,
        "AugBasic views of the synthetic images; off: one resized center view, as the "
        "test images get (evaluation without augmentation, for DD-Ranking's ARS)",
    )

    def validate(self) -> None:
        EvalBackboneOptions.validate(self)
        if self.epochs < 1 or self.views < 1 or self.batch_size < 1:
            raise ConfigError("--epochs, --views and --batch-size must be at least 1")
        positive(self, "base_lr")


@dataclass
class InheritOptions(ProbeOptions, FullProbeOptions):
    distill_backbone: str | None = option(
        None, "backbone of the golden classifier and projector target (default: the run's distillation backbone)"
    )
    distill_weights: str | None = option(None, "local weights for the distillation backbone")
    distill_crop: int | None = option(None, "input size of the distillation backbone (default: the run's crop)")
    projector_lr: float = option(0.01, "projector lr before the batch/256 scaling (CI, JT, ST)")
    projector_init: str = option(
        "default",
        "projector start: PyTorch's default (the original), identity "
        "(rectangular when the feature sizes differ) or zero",
        choices=PROJECTOR_INITS,
    )

    def validate(self) -> None:
        ProbeOptions.validate(self)
        FullProbeOptions.validate(self)
        at_least(self, 1, "distill_crop")
        positive(self, "projector_lr")


@dataclass
class KDOptions(InheritOptions):
    temperature: float = option(4.0, "KD temperature T")
    alpha: float = option(0.5, "KD weight of the soft-label term (1 - alpha on the hard labels)")

    def validate(self) -> None:
        InheritOptions.validate(self)
        positive(self, "temperature")
        fraction(self, "alpha")


def view_features(
    models: list[tuple[Backbone, int]],
    images: torch.Tensor,
    views: int,
    generator: torch.Generator,
    device: torch.device,
    batch_size: int = 100,
    augment: bool = True,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """Features of ``views`` AugBasic views of every image through each (backbone, crop): views x N x F each.

    Every backbone sees the same crop geometry (the generator is rewound per backbone), sampled at its
    own input size. Without ``augment`` a view is the resize + center crop the test images get.

    The pass streams: chunk k holds positions k x batch .. (k + 1) x batch - 1 of the view-major sequence
    (view 0 of every image, then view 1, ...), gathered from ``images`` by index, so only one chunk of pixels
    exists at a time and only the features are kept (as ``dtype``; the probes keep ``FEATURE_DTYPE``, float16):
    memory is O(batch) in pixels and O(views x N x F) in features. The chunks, and so the random draws, are those
    of repeating the set ``views`` times and slicing it.
    """
    n = len(images)
    total = views * n
    out: list[torch.Tensor | None] = [None] * len(models)
    for start in range(0, total, batch_size):
        chunk = images[torch.arange(start, min(start + batch_size, total)) % n].to(device)
        state = generator.get_state()
        for k, (backbone, crop) in enumerate(models):
            generator.set_state(state)
            with torch.inference_mode():
                if augment:
                    view = aug_basic(crop)(chunk, generator)
                else:
                    view = resize_center_crop(chunk, resize_for(crop), crop)
                features = backbone(view).float().cpu()
            if out[k] is None:  # allocated outside inference mode: the probes train on these tensors
                out[k] = torch.empty(total, features.shape[1], dtype=dtype)
            stored = out[k][start : start + len(chunk)]
            stored.copy_(features)
            if not torch.isfinite(stored).all():
                why = "are not finite" if not torch.isfinite(features).all() else f"exceed the {dtype} range"
                raise DataError(f"the synthetic images' {backbone.name} features {why}")
    return [features.view(views, n, -1) for features in out]


def train_head(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, opts: ProbeOptions, generator: torch.Generator
) -> nn.Linear:
    """Vanilla probe: a fresh head on views x N x F cached features with cross-entropy."""
    views, n, dim = features.shape
    head = new_head(dim, num_classes, generator)
    fit(
        [(head, opts.base_lr)],
        n,
        views,
        opts.epochs,
        opts.batch_size,
        lambda i, v: F.cross_entropy(head(features[v, i].float()), labels[i]),
        generator,
    )
    return head


def train_projector(
    source: torch.Tensor, target: torch.Tensor, opts: InheritOptions, generator: torch.Generator
) -> nn.Linear:
    """CI's projector P: F_e -> F_d, MSE between P(phi_e(view)) and phi_d(view); no labels."""
    views, n, dim = source.shape
    proj = new_projector(dim, target.shape[-1], generator, opts.projector_init)
    fit(
        [(proj, opts.projector_lr)],
        n,
        views,
        opts.epochs,
        opts.batch_size,
        lambda i, v: F.mse_loss(proj(source[v, i].float()), target[v, i].float()),
        generator,
    )
    return proj


def check_compatible(synsets: list[SyntheticSet], data) -> None:
    for s in synsets:
        if list(s.classes) != list(data.classes):
            raise DataError(
                f"the synthetic set's classes ({len(s.classes)}: {s.classes[:3]}...) do not match "
                f"dataset '{data.name}' ({data.num_classes}: {data.classes[:3]}...)"
            )


# ---- modes: each gets (features through phi_e, through phi_d, labels, classes, golden head, options, generator)
# and returns the predictor applied to phi_e test features -------------------------------------------------

Mode = Callable[..., Callable[[torch.Tensor], torch.Tensor]]


def _vanilla(z_e, z_d, labels, num_classes, golden, opts, g):
    return train_head(z_e, labels, num_classes, opts, g)


def _ci(z_e, z_d, labels, num_classes, golden, opts, g):
    proj = train_projector(z_e, z_d, opts, g)
    return lambda x: golden(proj(x))


def _kd(z_e, z_d, labels, num_classes, golden, opts, g):
    views, n, dim = z_e.shape
    head = new_head(dim, num_classes, g)
    t, a = opts.temperature, opts.alpha

    def loss(i, v):
        logits = head(z_e[v, i].float())
        with torch.no_grad():  # the teacher per batch: views x N x C soft labels would not fit at scale
            teacher = F.softmax(golden(z_d[v, i].float()) / t, dim=-1)
        soft = F.kl_div(F.log_softmax(logits / t, dim=-1), teacher, reduction="batchmean") * t * t
        return a * soft + (1 - a) * F.cross_entropy(logits, labels[i])

    fit([(head, opts.base_lr)], n, views, opts.epochs, opts.batch_size, loss, g)
    return head


def _joint(ip: bool) -> Mode:
    def run(z_e, z_d, labels, num_classes, golden, opts, g):
        views, n, dim = z_e.shape
        proj = new_projector(dim, z_d.shape[-1], g, opts.projector_init)
        cls = copy_head(golden) if ip else new_head(z_d.shape[-1], num_classes, g)

        def loss(i, v):
            p = proj(z_e[v, i].float())
            return F.mse_loss(p, z_d[v, i].float()) + F.cross_entropy(cls(p), labels[i])

        fit([(proj, opts.projector_lr), (cls, opts.base_lr)], n, views, opts.epochs, opts.batch_size, loss, g)
        return lambda x: cls(proj(x))

    return run


def _sequential(ip: bool) -> Mode:
    def run(z_e, z_d, labels, num_classes, golden, opts, g):
        proj = train_projector(z_e, z_d, opts, g).requires_grad_(False)
        cls = copy_head(golden) if ip else new_head(z_d.shape[-1], num_classes, g)
        views, n, _ = z_e.shape
        fit(  # the frozen projector runs per batch: projecting every view up front would hold views x N x F_d
            [(cls, opts.base_lr)],
            n,
            views,
            opts.epochs,
            opts.batch_size,
            lambda i, v: F.cross_entropy(cls(proj(z_e[v, i].float())), labels[i]),
            g,
        )
        return lambda x: cls(proj(x))

    return run


def run_probe(job: EvalJob[ProbeOptions], mode: str, train: Mode) -> EvalResult:
    opts = job.opts
    data = job.data
    check_compatible(job.synsets, data)
    eval_bb = job.backbone(opts.eval_backbone, opts.weights)
    crop_e = job.crop_for(eval_bb, opts.crop)
    models = [(eval_bb, crop_e)]
    goldens, details = {}, {}
    if isinstance(opts, InheritOptions):
        dist_bb = job.backbone(opts.distill_backbone, opts.distill_weights)
        crop_d = job.crop_for(dist_bb, opts.distill_crop)
        # One golden classifier per evaluation seed, so the spread over seeds includes its training. Every
        # process (under torchrun) takes every seed in the same order: rank 0 trains into the cache, the others
        # read it, and each uses its own seeds' heads.
        goldens = {s: golden_classifier(data, dist_bb, crop_d, opts, s, job.device) for s in job.all_seeds}
        details.update(
            distill_backbone=dist_bb.name, distill_crop=crop_d, golden=golden_summary(list(goldens.values()))
        )
        if (dist_bb.name, crop_d) != (eval_bb.name, crop_e):
            models.append((dist_bb, crop_d))
    test = feature_bank(data, eval_bb, "test", crop=crop_e, device=job.device)
    val = feature_bank(data, eval_bb, "val", crop=crop_e, device=job.device)
    views = min(opts.views, opts.epochs) if opts.augment else 1  # without augmentation every view is the same
    test_acc, val_acc = [], []
    for seed, synset in progress(list(zip(job.seeds, job.synsets, strict=True)), f"{mode} @ {eval_bb.name}"):
        g = torch.Generator().manual_seed(seed)
        feats = view_features(models, synset.images, views, g, job.device, augment=opts.augment, dtype=FEATURE_DTYPE)
        z_e, z_d = feats[0], feats[-1]
        golden = goldens[seed].head if goldens else None
        predict = train(z_e, z_d, synset.labels, data.num_classes, golden, opts, g)
        del feats, z_e, z_d  # before the next seed's pass allocates its own
        test_acc.append(accuracy(predict, test))
        val_acc.append(accuracy(predict, val))
    details.update(
        epochs=opts.epochs,
        views=views,
        augment=opts.augment,
        crop=crop_e,
        base_lr=opts.base_lr,
        batch_size=opts.batch_size,
        backbone_weights=eval_bb.weights,
        num_images=len(job.synsets[0]),
    )
    if goldens:
        details.update(projector_lr=opts.projector_lr, projector_init=opts.projector_init)
    return EvalResult(mode, eval_bb.name, test_acc, val_acc, job.seeds, details)


def _protocol(name: str, summary: str, options: type, mode: Mode) -> None:
    register_protocol(Protocol(name, summary, options, lambda job: run_probe(job, name, mode)))


_protocol("linear-probe", "vanilla linear probe on frozen features (LGM/SFM protocol)", ProbeOptions, _vanilla)
_protocol(
    "ci",
    "classifier inheritance: golden classifier + projector trained with MSE on the synthetic set",
    InheritOptions,
    _ci,
)
_protocol("kd", "soft labels from the golden classifier (KD, T and alpha)", KDOptions, _kd)
_protocol("jt", "joint training of projector and a fresh classifier", InheritOptions, _joint(ip=False))
_protocol("jt-ip", "joint training, classifier initialised from the golden classifier", InheritOptions, _joint(ip=True))
_protocol("st", "sequential: projector (MSE), then a fresh classifier on it", InheritOptions, _sequential(ip=False))
_protocol(
    "st-ip", "sequential, classifier initialised from the golden classifier", InheritOptions, _sequential(ip=True)
)
