"""Readable reports: a markdown page per run (config, phases, losses, evaluations, image grid)."""

from __future__ import annotations

import json
from pathlib import Path

from .io import write_text


def fmt_acc(entry: dict) -> str:
    return f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"


def accuracy_table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table of (name, EvalResult.to_dict()) rows; the best test mean is in bold."""
    if not rows:
        return ""
    best = max(r["mean"] for _, r in rows)
    lines = ["| method | test acc (%) | val acc (%) | seeds | backbone | protocol |", "|---|---|---|---|---|---|"]
    for name, r in rows:
        acc = fmt_acc(r)
        acc = f"**{acc}**" if r["mean"] == best else acc
        lines.append(f"| {name} | {acc} | {100 * r['val_mean']:.2f} | {len(r['seeds'])} | {r['backbone']} | "
                     f"{r['protocol']} |")
    return "\n".join(lines)


def phases_table(phases: dict) -> str:
    lines = ["| phase | seconds | peak RSS (MB) | peak CUDA (MB) |", "|---|---|---|---|"]
    for name, p in phases.items():
        cuda = p.get("peak_cuda_mb", "-")
        lines.append(f"| {name} | {p.get('seconds', 0):.1f} | {p.get('peak_rss_mb', '')} | {cuda} |")
    return "\n".join(lines)


def write_report(run: str | Path) -> Path:
    run = Path(run)
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    d = config.get("distill", {})
    res = config.get("resolved", {})
    parts = [f"# {d.get('method', 'run')} on {d.get('data', '?')}, IPC {d.get('ipc', '?')}", ""]
    parts += [f"- backbone: `{d.get('backbone')}` ({res.get('backbone_weights', 'weights not recorded')})",
              f"- data: {res.get('dataset_source', d.get('data'))}; train {res.get('train_images')} / "
              f"val {res.get('val_images')} / test {res.get('test_images')} images",
              f"- steps {d.get('steps')}, lr {d.get('lr')}, views per step {d.get('augs')}, "
              f"parameterisation {d.get('param')}, crop {res.get('crop')}, render {res.get('resolution')}, "
              f"seed {d.get('seed')}", ""]
    dist = metrics.get("distill", {})
    if dist.get("phases"):
        parts += ["## Time and memory", "", phases_table(dist["phases"]), ""]
        if dist.get("loss_first") is not None:
            parts += [f"Loss: {dist['loss_first']:.4f} at the first step, {dist['loss_last']:.4f} at the last.", ""]
    if metrics.get("eval"):
        parts += ["## Evaluation", "", accuracy_table(list(metrics["eval"].items())), ""]
    if (run / "synset" / "grid.png").exists():
        parts += ["## Synthetic images", "", "![synthetic set](synset/grid.png)", ""]
    path = run / "report.md"
    write_text(path, "\n".join(parts))
    return path
