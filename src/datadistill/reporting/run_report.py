"""A run directory's report.md: its config, phases, losses, every stored evaluation and the image grid."""

from __future__ import annotations

import json
from pathlib import Path

from ..core import layout
from ..core.io import write_text
from .collect import RunInfo, run_records
from .comparison import column_labels
from .markdown import accuracy_table, phases_table

# Method options the run report names in words, in this order (shown only when the method has them).
RUN_OPTIONS = (("steps", "steps"), ("lr", "lr"), ("augs", "views per step"), ("param", "parameterisation"))


def write_report(run: str | Path) -> Path:
    """The run directory's report.md: its config, phases, losses, every stored evaluation and the image grid."""
    run = Path(run)
    config = json.loads((run / layout.RUN_CONFIG).read_text()) if layout.is_run_dir(run) else {}
    metrics = json.loads((run / layout.RUN_METRICS).read_text()) if (run / layout.RUN_METRICS).exists() else {}
    d = config.get("distill", {})
    opts = d.get("options", {})
    res = config.get("resolved", {})
    parts = [f"# {d.get('method', 'run')} on {d.get('data', '?')}, IPC {d.get('ipc', '?')}", ""]
    if "backbone" in opts:
        parts.append(f"- backbone: `{opts['backbone']}` ({res.get('backbone_weights') or 'weights not recorded'})")
    parts.append(
        f"- data: {res.get('dataset_source', d.get('data'))}; train {res.get('train_images')} / "
        f"val {res.get('val_images')} / test {res.get('test_images')} images"
    )
    named = [f"{label} {opts[key]}" for key, label in RUN_OPTIONS if key in opts]
    sizes = [f"crop {res['crop']}"] if res.get("crop") is not None else []
    parts.append("- " + ", ".join(named + sizes + [f"render {res.get('resolution')}", f"seed {d.get('seed')}"]))
    shown = {*dict(RUN_OPTIONS), "backbone", "crop", "resolution"}
    others = {k: v for k, v in opts.items() if k not in shown and v is not None}
    if others:
        parts.append("- options: " + ", ".join(f"{k} {v}" for k, v in others.items()))
    parts.append("")
    dist = metrics.get("distill", {})
    if dist.get("phases"):
        parts += ["## Time and memory", "", phases_table(dist["phases"]), ""]
        if dist.get("loss_first") is not None:
            # runs written before the names were recorded are optimisation runs: a loss per step
            name, unit = dist.get("progress_name", "loss"), dist.get("step_unit", "step")
            parts += [
                f"{name[0].upper()}{name[1:]}: {dist['loss_first']:.4f} at the first {unit}, "
                f"{dist['loss_last']:.4f} at the last.",
                "",
            ]
    records = run_records(RunInfo(run, config, metrics))
    if records:
        labels = column_labels(records)
        rows = [(labels[r["key"]], {**r, "backbone": r["evaluated_with"]}) for r in records]
        parts += ["## Evaluation", "", accuracy_table(rows, "evaluation"), ""]
    if (run / layout.SYNSET / layout.SYNSET_GRID).exists():
        parts += ["## Synthetic images", "", "![synthetic set](synset/grid.png)", ""]
    path = run / layout.RUN_REPORT
    write_text(path, "\n".join(parts))
    return path
