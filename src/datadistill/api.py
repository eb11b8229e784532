"""The public Python surface: ``distill``, ``evaluate``, ``export``, ``compute_stats``, ``pretrain``,
``report_runs``."""

from __future__ import annotations

import hashlib
import platform
import re
from contextlib import nullcontext
from pathlib import Path

import torch

from .core import dist, layout
from .core.config import DistillConfig, EvalConfig, check_val_fraction
from .core.errors import ConfigError, DatadistillError, DataError, user_message
from .core.io import check_creatable, hold_lock
from .core.options import build, fields_of, split, to_dict
from .core.progress import log
from .core.version import __version__
from .data import RealData, load_dataset
from .evaluate import EvalJob, EvalResult, get_protocol
from .evaluate.identity import data_identity, eval_key, eval_settings
from .evaluate.linear_probe import check_compatible
from .features.backbones import Backbone, load_backbone
from .features.bank import FeatureBank, feature_bank
from .methods import Method, RunContext, get_method
from .methods.base import BackboneOptions
from .reporting.run_report import write_report
from .run.device import resolve_device
from .run.directory import RunDir, buffered_log
from .run.engine import execute
from .run.timing import PhaseTimer
from .synset.set import SyntheticSet
from .synset.tensorfiles import export_meta, tensor_files
from .training.pretrainers import get_pretrainer


def make_config(method: str | Method, data: str, ipc: int = 1, **values) -> DistillConfig:
    """A validated config: common fields from ``values``, the rest checked against the method's options."""
    algo = get_method(method) if isinstance(method, str) else method
    common, rest = split(values, DistillConfig)
    for reserved in ("method", "data", "options"):
        if reserved in common:
            raise ConfigError(f"'{reserved}' cannot be passed as an option")
    opts = algo.resolve(build(algo.Options, rest, f"method '{algo.name}'"))
    fields = {"method": algo.name, "data": data, "ipc": ipc, "options": to_dict(opts), **common}
    return build(DistillConfig, fields, "distill")


def _check_ipc(data: RealData, ipc: int) -> None:
    counts = data.class_counts()
    smallest = int(counts.min())
    if ipc > smallest:
        c = int(counts.argmin())
        raise DataError(
            f"--ipc {ipc} is larger than class '{data.classes[c]}', which has only {smallest} "
            f"training images (after holding out the validation split)"
        )


def build_context(
    config: DistillConfig, data: RealData | None = None, model: Backbone | None = None, method: Method | None = None
) -> RunContext:
    """The run context of ``config``: its method (``method``, or the one the config names), loaded data, device."""
    algo = method or get_method(config.method)
    device = resolve_device(config.device)
    data = data or load_dataset(
        config.data,
        config.root,
        config.val_fraction,
        config.split_seed,
        workers=config.workers,
        skip_corrupt=config.skip_corrupt,
    )
    ctx = RunContext(config, algo.Options(**config.options), data, device, algo, model=model)
    ctx.generator.manual_seed(config.seed)
    return ctx


def distill(
    method: str,
    data: str,
    ipc: int = 1,
    out: str | Path | None = None,
    *,
    dataset: RealData | None = None,
    model: Backbone | None = None,
    recipe: dict | None = None,
    **options,
) -> SyntheticSet:
    """Distill ``data`` into ``ipc`` images per class with ``method``; with ``out``, write and resume a run dir.

    ``options`` are the common run options (seed, device, checkpoint_every, ...) and the method's own
    (``datadistill distill METHOD --help`` lists them). ``dataset`` / ``model`` pass an already loaded
    dataset / backbone (the dataset's own loading then decides workers and skip_corrupt). ``recipe`` (path and
    sha256 of the recipe file the settings came from) is recorded in the run's config.json; it is no part of the
    run's identity, so the same settings by flags or by a recipe resume the same run.
    """
    algo = get_method(method)
    if dataset is not None:
        options.setdefault("skip_corrupt", dataset.extras.get("skip_corrupt", False))
    config = make_config(algo, data, ipc, **options)
    if dataset is not None and config.skip_corrupt != dataset.extras.get("skip_corrupt", False):
        raise ConfigError("skip_corrupt differs from the loaded dataset's; load it with the same setting")
    if out is not None:
        check_creatable(out)  # before the data is loaded, creating nothing
        finished = _finished_run(out, config)
        if finished is not None:
            return finished
    # Everything that can refuse the input runs before the run folder exists, so a refusal leaves nothing behind.
    timer = PhaseTimer()
    with buffered_log() as earlier, timer.phase("load"):
        ctx = build_context(config, dataset, model, algo)
        timer.device = ctx.device
        _check_ipc(ctx.data, ipc)
        resolved = _resolved(ctx) | ({"recipe": recipe} if recipe else {})
    run = RunDir(out) if out is not None else None
    with run.session(earlier) if run else nullcontext():
        if run is not None:
            resumed = run.claim(config, resolved)
            log.info("%s run in %s%s", method, run.path, " (resuming)" if resumed else "")
        synset = execute(algo, ctx, run, timer)
        if run is not None and dist.is_main():
            write_report(run.path)
    dist.barrier()
    return synset


def _finished_run(out: str | Path, config: DistillConfig) -> SyntheticSet | None:
    """The synthetic set of a complete run in ``out`` made with ``config`` (another config is refused), else None."""
    if not Path(out, layout.SYNSET).exists():
        return None
    run = RunDir(out)
    if not run.metrics().get("distill", {}).get("complete"):
        return None
    run.claim(config, {})
    log.info("%s is already complete", run.path)
    return SyntheticSet.load(run.synset_path)


def _resolved(ctx: RunContext) -> dict:
    resolved = {
        "dataset_source": ctx.data.source,
        "num_classes": ctx.data.num_classes,
        "train_images": len(ctx.data.train),
        "val_images": len(ctx.data.val),
        "test_images": len(ctx.data.test) if ctx.data.test is not None else 0,
        "resolution": ctx.resolution,
        "device": str(ctx.device),
        "torch": torch.__version__,
        "datadistill": __version__,
        "python": platform.python_version(),
    }
    if isinstance(ctx.opts, BackboneOptions):
        resolved.update(backbone_weights=ctx.backbone.weights, crop=ctx.crop)
    return {"resolved": resolved}


def evaluate(
    synset: SyntheticSet | list[SyntheticSet] | str | Path | None = None,
    protocol: str = "linear-probe",
    data: str | RealData | None = None,
    *,
    root: str | None = None,
    backbone: str | Backbone | None = None,
    models: list[Backbone] | None = None,
    input_norm: str | None = None,
    **options,
) -> EvalResult:
    """Evaluate a synthetic set (a run directory, a saved set, a folder ``export`` wrote, another project's tensor
    files, a folder of PNGs, a ``SyntheticSet``, or one set per seed) with ``protocol``; a run directory supplies
    data and backbones and records the result. ``input_norm`` (a preset such as ``"cifar10"``, or
    ``"MEAN,STD"``) undoes the normalisation of tensor files from other projects (docs/interop.md).

    ``backbone`` is the evaluation backbone (a name or a loaded one); ``models`` are other loaded backbones
    to reuse (e.g. the distillation backbone for CI). ``options`` are the common evaluation options (seeds,
    device, ...) and the protocol's own (``datadistill eval --protocol P --help``). A run directory keeps every
    evaluation in its metrics.json under a key of all its settings, so evaluations with other settings (another
    crop, other options or seeds) are kept beside one another.
    """
    proto = get_protocol(protocol)
    common_values, rest = split(options, EvalConfig)
    common = build(EvalConfig, common_values, "evaluation")
    loaded = {m.name: m for m in models or []}
    if isinstance(backbone, Backbone):
        loaded[backbone.name] = backbone
        backbone = backbone.name
    if backbone is not None:
        rest.setdefault("eval_backbone", backbone)
    opts = build(proto.Options, rest, f"protocol '{protocol}'")
    run, run_cfg = None, {}
    if isinstance(synset, str | Path):
        path = Path(synset)
        run, run_cfg = _run_of(path)
        data_cfg = run_cfg or exported_data(path)  # a run, or a folder export wrote, names its dataset
        if data is None and not data_cfg:
            raise _not_a_run(path)
        data = _eval_data(data, data_cfg, root, protocol, common)
        # tensor files and folders of PNGs take the dataset's classes
        synset = SyntheticSet.load(path, classes=list(data.classes), input_norm=input_norm)
    elif input_norm is not None:
        raise ConfigError("input_norm applies to a set given by its path (tensor files of other projects)")
    synsets = synset if isinstance(synset, list) else ([synset] * common.seeds if synset is not None else [])
    if proto.needs_synset and not synsets:
        raise _user_error(
            ConfigError,
            f"{protocol} evaluates a synthetic set: {{synset}}",
            synset=(
                "pass one as the first argument (a run directory, a saved set, a folder of PNGs or a SyntheticSet)",
                "give its run directory (or a saved set, or a folder of PNGs with --data NAME): datadistill eval RUN",
            ),
        )
    if synsets and len(synsets) != common.seeds:
        raise ConfigError(f"{len(synsets)} synthetic sets given for {common.seeds} seeds")
    if not run_cfg and synsets and synsets[0].meta.get("backbone"):
        meta = synsets[0].meta
        run_cfg = {"options": {"backbone": meta["backbone"], "crop": meta.get("crop")}}
    data = _eval_data(data, run_cfg, root, protocol, common)
    check_compatible(synsets, data)  # a set of another dataset is the first thing to say
    _check_backbones(proto, opts, run_cfg, run)
    device = resolve_device(common.device)
    timer = PhaseTimer(device)
    # A run's metrics.json is read, extended and rewritten: one writer at a time (another eval, a distill).
    owner = run is not None and dist.is_main()
    with hold_lock(run.lock_path, run.path, "wait for it to finish") if owner else nullcontext():
        with timer.phase("eval"):
            result = _run_protocol(proto, EvalJob(synsets, data, opts, common, device, run_cfg, loaded))
        result.details["phases"] = timer.phases
        if owner:
            settings = eval_settings(
                protocol, to_dict(opts), common.seeds, common.first_seed, data_identity(data), run_cfg.get("options")
            )
            key = eval_key(protocol, result.backbone, settings)
            run.update_metrics(eval={key: {**result.to_dict(), "settings": settings}})
            write_report(run.path)
    return result


# Python arguments and the flags that set them, for messages that name one: (Python, command line).
_ARGUMENTS = {
    "data": ("data=NAME", "--data NAME"),
    "eval_backbone": ("backbone=NAME", "--eval-backbone NAME"),
    "distill_backbone": ("distill_backbone=NAME", "--distill-backbone NAME"),
}


def _user_error(cls: type[DatadistillError], text: str, **other: tuple[str, str]) -> DatadistillError:
    """``text`` with each ``{name}`` of ``_ARGUMENTS`` spelled for Python users (``data=NAME (CLI: --data NAME)``)
    and, in the command-line form of the error, as the flag alone; ``{name:VALUE}`` spells an example with VALUE.
    ``other`` gives more (Python, command line) wordings by name."""

    def spell(cli: bool) -> str:
        def word(m: re.Match) -> str:
            name, value = m.groups()
            if name in other:
                return other[name][cli]
            if name not in _ARGUMENTS:
                return m.group(0)
            py, flag = _ARGUMENTS[name]
            if value:
                return flag.replace("NAME", value) if cli else py.replace("NAME", repr(value))
            return flag if cli else f"{py} (CLI: {flag})"

        return re.sub(r"\{(\w+)(?::([\w.-]+))?\}", word, text)

    return cls(spell(False), cli=spell(True))


def _run_of(path: Path) -> tuple[RunDir | None, dict]:
    """The run directory at ``path`` and its distill config, ``(None, {})`` for a set that is not a run; a missing
    path and an unfinished run are refused (before the data is asked for, which they cannot supply)."""
    if not path.exists():
        raise DataError(f"no synthetic set at {path}: the path does not exist")
    if not layout.is_run_dir(path):
        return None, {}
    run = RunDir(path)
    if not (path / layout.SYNSET / layout.SYNSET_MANIFEST).exists():
        raise DataError(
            f"{path} is a run directory whose distillation has not finished (no synset/ yet): run the same "
            "distill command again to finish it"
        )
    return run, run.read_config()["distill"]


def exported_data(path: Path) -> dict:
    """The dataset (name and validation split) a folder ``export`` wrote comes from; ``{}`` for anything else."""
    meta = export_meta(path)
    if not meta or not meta.get("dataset"):
        return {}
    return {"data": meta["dataset"], **(meta.get("data_split") or {})}


def _not_a_run(path: Path) -> DatadistillError:
    """What ``path`` is, for a set given without the dataset it comes from."""
    saved = (path / "manifest.json").exists() or (path / "synset" / "manifest.json").exists()
    pngs = path.is_dir() and (any(path.glob("*.png")) or any(path.glob("*/*.png")))
    tensors = tensor_files(path) is not None
    if saved or pngs or tensors:
        what = "a saved synthetic set" if saved else "another project's tensor files" if tensors else "a folder of PNGs"
        return _user_error(
            ConfigError,
            f"{path} is {what}, not a run directory (no config.json), so it does not say which dataset it comes "
            "from: pass {data}",
        )
    return _user_error(
        DataError,
        f"{path} is not a run directory (no config.json), not a saved synthetic set (no manifest.json), holds no "
        "tensor files (.pt / .pth; a folder with images_best.pt) and no PNGs (class sub-folders of .png files, or "
        "c<label>_*.png): give a run directory, or tensor files or a folder of PNGs with {data}",
    )


def _check_backbones(proto, opts, run_cfg: dict, run: RunDir | None) -> None:
    """A protocol that needs a backbone the options do not name and the evaluated set cannot supply: say which
    option to pass, and why (before any model is loaded)."""
    if run_cfg.get("options", {}).get("backbone"):
        return
    known = fields_of(proto.Options)
    if run is not None:
        why = f"this run ({run_cfg.get('method', '?')}) was made without a backbone, so {proto.name} needs one"
    elif proto.needs_synset:
        why = f"the set does not say which backbone made it, so {proto.name} needs one"
    else:
        why = f"{proto.name} learns from the real data's features, so it needs a backbone"
    for name, role in (("eval_backbone", "evaluate with"), ("distill_backbone", "inherit the classifier of")):
        if name in known and getattr(opts, name) is None:
            raise _user_error(
                ConfigError,
                f"{why} to {role}: pass {{{name}}}, e.g. {{{name}:efficientnet_lite0}} "
                "(`datadistill list backbones` lists them)",
            )


def pretrain(
    kind: str,
    data: str | RealData,
    *,
    root: str | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
    skip_corrupt: bool = False,
    **options,
) -> Path:
    """Train (or reuse from the cache) a model of ``kind`` on ``data``; returns its folder. Resumable."""
    trainer = get_pretrainer(kind)
    opts = build(trainer.Options, options, f"pretrain '{kind}'")
    check_val_fraction(val_fraction)
    if not isinstance(data, RealData):
        data = load_dataset(data, root, val_fraction, split_seed, workers=workers, skip_corrupt=skip_corrupt)
    return trainer.run(data, opts, resolve_device(device))


def _run_protocol(proto, job: EvalJob) -> EvalResult:
    """Run ``proto``; under torchrun its seeds are shared out and the per-seed results gathered in order.

    A process left without a seed evaluates the last one again and drops it, so that every process runs the same
    collective steps (statistics passes, the golden classifier) as the others.
    """
    seeds = job.seeds
    if not (dist.active() and proto.shard_seeds and len(seeds) > 1):
        return proto.run(job)
    mine = list(range(len(seeds)))[dist.part(len(seeds))]
    job.seed_list = [seeds[i] for i in mine or [-1]]
    if job.synsets:
        job.synsets = [job.synsets[i] for i in mine or [-1]]
    result = proto.run(job)
    shares = dist.all_gather_objects((mine, result.test_acc, result.val_acc) if mine else ([], [], []))
    result.test_acc = [a for _, test, _ in shares for a in test]
    result.val_acc = [a for _, _, val in shares for a in val]
    result.seeds = [seeds[i] for share, _, _ in shares for i in share]
    return result


def _eval_data(
    data: str | RealData | None, run_cfg: dict, root: str | None, protocol: str, common: EvalConfig
) -> RealData:
    """The dataset to evaluate on: given, or the run's (with the run's validation split and unreadable files
    left out as the run left them out, unless ``skip_corrupt`` says otherwise)."""
    if isinstance(data, RealData):
        return data
    if data is None and not run_cfg.get("data"):
        raise _user_error(
            ConfigError,
            f"{protocol} needs the dataset "
            + ("the set was distilled from" if get_protocol(protocol).needs_synset else "to train and test on")
            + ": pass {data}",
        )
    return _dataset(data, run_cfg, root, common.workers, common.skip_corrupt)


def _dataset(
    data: str | None, run_cfg: dict, root: str | None, workers: int | None = None, skip_corrupt: bool | None = None
) -> RealData:
    """Dataset ``data`` (default: the run's), with the run's root, validation split and unreadable files left out
    as the run left them out (unless ``skip_corrupt`` says otherwise)."""
    skip = skip_corrupt if skip_corrupt is not None else run_cfg.get("skip_corrupt", False)
    return load_dataset(
        data or run_cfg["data"],
        root or run_cfg.get("root"),
        run_cfg.get("val_fraction", 0.1),
        run_cfg.get("split_seed", 0),
        workers=workers,
        skip_corrupt=skip,
    )


def export(
    synset: str | Path,
    format: str = "pt",
    out: str | Path | None = None,
    *,
    data: str | None = None,
    root: str | None = None,
    force: bool = False,
    decode: bool | None = None,
) -> Path:
    """Write a synthetic set (a run directory, a saved set, or any set ``evaluate`` reads by path) for other tools,
    as ``format``: ``pt`` (``images.pt`` / ``labels.pt``, plain tensors exactly as stored), ``imagefolder`` (one
    PNG per image in a folder per class) or ``ddranking`` (the tensors the ``ddranking`` package's
    ``compute_metrics`` takes). ``out`` is created atomically; an existing non-empty folder is replaced only with
    ``force``. ``decode`` writes multi-formation sets (TGDD ``factor`` > 1) as the images they decode into (default:
    yes, except for ``pt``). ``data`` / ``root`` name the dataset (default: the run's, or the one the set records),
    whose statistics meta.json records. Returns ``out``; docs/interop.md describes every file."""
    from .synset.export import check_format, check_out, export_set, normalisation_advice

    check_format(format)  # the format's name now, the set's dataset once it is known
    if out is None:
        raise _user_error(ConfigError, "export needs a folder to write: pass {out}", out=("out=DIR", "--out DIR"))
    path = Path(synset)
    run, run_cfg = _run_of(path)
    out = check_out(out, force)
    data_cfg = run_cfg or exported_data(path)
    dataset = _dataset(data, data_cfg, root) if data is not None else None
    synset = SyntheticSet.load(path, classes=list(dataset.classes) if dataset else None)
    name = data or data_cfg.get("data") or synset.meta.get("dataset")
    synset.meta.setdefault("dataset", name)
    check_format(format, synset.meta["dataset"], str(path))
    missing = "the set does not say its dataset: pass --data to record the dataset's statistics"
    if dataset is None and name and format != "ddranking" and not synset.meta.get("backbone"):
        try:  # its statistics, for meta.json; a dataset not at hand does not stop the export
            dataset = _dataset(name, data_cfg, root)
        except DatadistillError as exc:
            missing = f"dataset '{name}' could not be read here ({user_message(exc)})"
            log.warning("meta.json does not record the statistics of %s", missing)
    config = path / layout.RUN_CONFIG
    describe = {
        "dataset": name,
        "method": synset.meta.get("method") or run_cfg.get("method"),
        "source": str(path.absolute()),
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest() if run is not None else None,
        "data_split": {k: data_cfg[k] for k in ("val_fraction", "split_seed") if k in data_cfg},
        "datadistill": __version__,
    }
    if format != "ddranking":
        describe["normalisation"] = normalisation_advice(synset, dataset, missing)
    return export_set(synset, format, out, describe, decode, name=str(path))


def compute_stats(
    data: str | RealData,
    backbone: str | Backbone = "efficientnet_lite0",
    split: str = "train",
    crop: int | None = None,
    kmeans: int = 0,
    root: str | None = None,
    weights: str | None = None,
    device: str = "auto",
    workers: int | None = None,
    skip_corrupt: bool = False,
) -> FeatureBank:
    """The cached statistics pass (features, class means, counts; k-means modes when ``kmeans`` > 0).
    ``workers`` and ``skip_corrupt`` apply when ``data`` is a name (see ``load_dataset``)."""
    dev = resolve_device(device)
    if not isinstance(data, RealData):
        data = load_dataset(data, root, workers=workers, skip_corrupt=skip_corrupt)
    backbone = backbone if isinstance(backbone, Backbone) else load_backbone(backbone, weights, dev)
    bank = feature_bank(data, backbone, split, crop=crop, device=dev)
    if kmeans:
        bank.kmeans(kmeans)
    return bank


def report_runs(runs: list[str | Path] | str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Compare the results of bench directories and/or run directories (or folders holding them) on one page:
    writes ``out/report.html`` (self-contained: images embedded, no network resources), ``out/report.md`` and
    ``out/report_files/``; returns their paths. ``out`` defaults to the bench directory when one is given."""
    from .reporting.comparison import write_comparison

    return write_comparison([runs] if isinstance(runs, str | Path) else list(runs), out)
