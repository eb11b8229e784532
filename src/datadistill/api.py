"""The public Python surface: ``distill``, ``evaluate``, ``compute_stats``, ``demo``."""

from __future__ import annotations

import platform
from contextlib import nullcontext
from pathlib import Path

import torch

from . import __version__
from .config import DistillConfig, ProbeConfig
from .data import RealData, load_dataset
from .engine import PhaseTimer, RunDir, optimise, resolve_device
from .errors import ConfigError, DataError
from .evaluate import EvalResult, linear_probe
from .methods import RunContext, get_method
from .models.backbones import Backbone, load_backbone
from .progress import log
from .report import write_report
from .stats import FeatureBank, feature_bank
from .synset import SyntheticSet

PROTOCOLS = ("linear-probe",)


def _check_ipc(data: RealData, ipc: int) -> None:
    counts = data.class_counts()
    smallest = int(counts.min())
    if ipc > smallest:
        c = int(counts.argmin())
        raise DataError(f"--ipc {ipc} is larger than class '{data.classes[c]}', which has only {smallest} "
                        f"training images (after holding out the validation split)")


def build_context(config: DistillConfig, data: RealData | None = None, backbone: Backbone | None = None) -> RunContext:
    device = resolve_device(config.device)
    data = data or load_dataset(config.data, config.root, config.val_fraction, config.split_seed)
    backbone = backbone or load_backbone(config.backbone, config.weights, device)
    ctx = RunContext(config, data, backbone.to(device), device)
    ctx.generator.manual_seed(config.seed)
    return ctx


def distill(method: str, data: str, backbone: str = "efficientnet_lite0", ipc: int = 1, out: str | Path | None = None,
            *, dataset: RealData | None = None, model: Backbone | None = None, **options) -> SyntheticSet:
    """Distill ``data`` into ``ipc`` images per class with ``method``; with ``out``, write and resume a run dir."""
    config = DistillConfig(method=method, data=data, backbone=backbone, ipc=ipc, **options).validate()
    algo = get_method(method)
    run = RunDir(out) if out is not None else None
    if run is not None and run.synset_path.exists() and run.metrics().get("distill", {}).get("complete"):
        run.claim(config, {})
        log.info("%s is already complete", run.path)
        return SyntheticSet.load(run.synset_path)
    timer = PhaseTimer()
    with run.logging() if run else nullcontext():
        with timer.phase("load"):
            ctx = build_context(config, dataset, model)
            timer.device = ctx.device
            _check_ipc(ctx.data, ipc)
        if run is not None:
            resumed = run.claim(config, _resolved(ctx))
            log.info("%s run in %s%s", method, run.path, " (resuming)" if resumed else "")
        if algo.needs_stats:
            with timer.phase("stats"):
                _ = ctx.stats
        losses: list[float] = []
        with timer.phase("distill"):
            if algo.optimises:
                images, losses = optimise(algo, ctx, run)
                synset = ctx.synset(images.cpu(), ctx.class_labels(), steps=config.steps)
            else:
                synset = algo.select(ctx)
        if algo.optimises and config.steps:
            timer.phases["distill"]["seconds_per_step"] = round(timer.phases["distill"]["seconds"] / config.steps, 4)
        if run is not None:
            with timer.phase("save"):
                synset.save(run.synset_path)
            run.update_metrics(distill={"complete": True, "method": method, "phases": timer.phases,
                                        "loss_first": losses[0] if losses else None,
                                        "loss_last": losses[-1] if losses else None, "losses": losses})
            write_report(run.path)
    return synset


def _resolved(ctx: RunContext) -> dict:
    return {"resolved": {"dataset_source": ctx.data.source, "num_classes": ctx.data.num_classes,
                         "train_images": len(ctx.data.train), "val_images": len(ctx.data.val),
                         "test_images": len(ctx.data.test) if ctx.data.test is not None else 0,
                         "backbone_weights": ctx.backbone.weights, "crop": ctx.crop, "resolution": ctx.resolution,
                         "device": str(ctx.device), "torch": torch.__version__, "datadistill": __version__,
                         "python": platform.python_version()}}


def evaluate(synset: SyntheticSet | list[SyntheticSet] | str | Path, protocol: str = "linear-probe",
             data: str | RealData | None = None, backbone: str | Backbone | None = None, *,
             root: str | None = None, weights: str | None = None, **probe_options) -> EvalResult:
    """Evaluate a synthetic set (or a run directory, whose config supplies data and backbone)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol '{protocol}'. Known: {', '.join(PROTOCOLS)}")
    run = None
    run_cfg: dict = {}
    if isinstance(synset, str | Path):
        path = Path(synset)
        if (path / "config.json").exists():
            run = RunDir(path)
            run_cfg = run.read_config()["distill"]
        synset = SyntheticSet.load(path)
    if data is None and not run_cfg:
        raise ConfigError("evaluate needs data= (the dataset the synthetic set was distilled from)")
    cfg = ProbeConfig(**probe_options)
    device = resolve_device(cfg.device)
    if not isinstance(data, RealData):
        data = load_dataset(data or run_cfg["data"], root or run_cfg.get("root"),
                            run_cfg.get("val_fraction", 0.1), run_cfg.get("split_seed", 0))
    if not isinstance(backbone, Backbone):
        name = backbone or cfg.backbone or run_cfg.get("backbone")
        if name is None:
            raise ConfigError("evaluate needs backbone= (the evaluation backbone)")
        same = name == run_cfg.get("backbone")
        backbone = load_backbone(name, weights or cfg.weights or (run_cfg.get("weights") if same else None), device)
    if cfg.crop is None and run_cfg.get("crop") and backbone.name == run_cfg.get("backbone"):
        cfg.crop = run_cfg["crop"]
    timer = PhaseTimer(device)
    with timer.phase("eval"):
        result = linear_probe(synset, data, backbone, cfg, device)
    result.details["phases"] = timer.phases
    if run is not None:
        key = f"{protocol}@{backbone.name}"
        run.update_metrics(eval={key: result.to_dict()})
        write_report(run.path)
    return result


def compute_stats(data: str | RealData, backbone: str | Backbone = "efficientnet_lite0", split: str = "train",
                  crop: int | None = None, kmeans: int = 0, root: str | None = None, weights: str | None = None,
                  device: str = "auto") -> FeatureBank:
    """The cached statistics pass (features, class means, counts; k-means modes when ``kmeans`` > 0)."""
    dev = resolve_device(device)
    data = data if isinstance(data, RealData) else load_dataset(data, root)
    backbone = backbone if isinstance(backbone, Backbone) else load_backbone(backbone, weights, dev)
    bank = feature_bank(data, backbone, split, crop=crop, device=dev)
    if kmeans:
        bank.kmeans(kmeans)
    return bank
