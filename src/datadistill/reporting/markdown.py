"""Markdown rendering of the comparison report, and the help texts and plan summaries both renderings show."""

from __future__ import annotations

import json

from ..core.version import __version__
from .table import Cell, Section, Table, fmt_acc


def accuracy_table(rows: list[tuple[str, dict]], name: str = "method") -> str:
    """Markdown table of (name, EvalResult.to_dict()) rows; the best test mean is in bold."""
    if not rows:
        return ""
    best = max(r["mean"] for _, r in rows)
    lines = [f"| {name} | test acc (%) | val acc (%) | seeds | backbone | protocol |", "|---|---|---|---|---|---|"]
    for name, r in rows:
        acc = fmt_acc(r)
        acc = f"**{acc}**" if r["mean"] == best else acc
        lines.append(
            f"| {name} | {acc} | {100 * r['val_mean']:.2f} | {len(r['seeds'])} | {r['backbone']} | {r['protocol']} |"
        )
    return "\n".join(lines)


def phases_table(phases: dict) -> str:
    lines = ["| phase | seconds | peak RSS (MB) | peak CUDA (MB) |", "|---|---|---|---|"]
    for name, p in phases.items():
        cuda = p.get("peak_cuda_mb", "-")
        lines.append(f"| {name} | {p.get('seconds', 0):.1f} | {p.get('peak_rss_mb', '')} | {cuda} |")
    return "\n".join(lines)


def markdown_table_of(table: Table) -> str:
    def text(c: Cell) -> str:
        t = c.text + (f" (val {c.sub[4:]})" if c.sub.startswith("val ") and c.text else "")
        t = f"**{t}**" if c.best and c.text else t
        return t + (f" [{c.note}]" if c.note else "")

    lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(text(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


SCORES_HELP = [
    "Scores relative to random selection, after DD-Ranking (Li et al. 2025, arXiv 2505.13300); accuracies as "
    "fractions, shown in percentage points (pp):",
    "- **IOR** (improvement over random) = Acc(distilled set) − Acc(random real images, same IPC), under the same "
    "evaluation (protocol, model, seeds). Higher is better.",
    "- **HLR** (hard-label recovery) = Acc(full real training set, hard labels) − Acc(distilled set, hard labels), "
    "on the same model. Lower is better.",
    "- **LRS** (label-robust score) = (e^α − e^−1) / (e − e^−1) with α = 0.5·IOR − 0.5·HLR; 0-100 %, higher is "
    "better. Random itself scores (e^(−HLR/2) − e^−1) / (e − e^−1).",
    "- **ARS** (augmentation-robust score) = the same map of β = 0.5·IOR(with augmentation) + 0.5·IOR(without); "
    "it needs the evaluation with and without augmentation "
    "(e.g. `--protocols linear-probe,linear-probe:augment=false`).",
    "- Scores are computed per seed (seed k of the set against seed k of Random and of the full-data run) and "
    "reported as mean ± std; from the means (no ±) when the numbers of seeds differ.",
]


COST_HELP = (
    "Seconds are wall time of each phase of the distillation (load, statistics pass, distillation, save); "
    "a cached statistics pass costs nothing here. Peak RSS and peak CUDA memory are measured per phase (on "
    "Linux the resident high-water mark restarts at each phase; elsewhere it is the process's, so in a bench "
    "a method listed later may show an earlier method's peak). Peak RSS includes what the process already "
    "held (backbone, data)."
)


def _section_markdown(s: Section) -> list[str]:
    seeds = sorted({len(r.get("test_acc") or []) for r in s.records})
    parts = [
        f"## {s.title}",
        "",
        f"Test accuracy (%) on the test split, mean ± std over {'/'.join(map(str, seeds))} seeds; val = the "
        "validation split held out of train. Best per column in bold.",
        "",
        *_imported_markdown(s),
        "### Overview",
        "",
        markdown_table_of(s.overview),
        "",
        "### Accuracy",
        "",
        markdown_table_of(s.accuracy),
        "",
    ]
    figures = {f.name.rsplit("-", 1)[-1]: f for f in s.figures}
    if "accuracy.png" in figures:
        parts += [f"![{figures['accuracy.png'].caption}](report_files/{figures['accuracy.png'].name})", ""]
    parts += ["### Scores relative to random (DD-Ranking)", "", markdown_table_of(s.scores), ""]
    parts += [f"{i}. {text}" for i, text in enumerate(s.notes, 1)] + ([""] if s.notes else [])
    parts += ["### Time and memory", "", markdown_table_of(s.cost), "", COST_HELP, ""]
    for key in ("cost.png", "losses.png"):
        if key in figures:
            parts += [f"![{figures[key].caption}](report_files/{figures[key].name})", ""]
    if s.grids:
        parts += ["### Synthetic images (one row per class)", ""]
        for g in s.grids:
            parts += [f"**{g.caption}**", "", f"![{g.caption}](report_files/{g.name})", ""]
    for m, info in s.runs.items():
        if info.phases:
            parts += [
                f"<details><summary>{m}: phases of {info.path}</summary>",
                "",
                phases_table(info.phases),
                "",
                "</details>",
                "",
            ]
    return parts


def given_summary(records: list[dict]) -> str:
    """The settings the records were given, per method or protocol (``sfm: steps=2, crop=32; linear-probe:
    epochs=7``; values that differ between records joined by ``/``), read from the records themselves."""
    scopes: dict[str, dict[str, list]] = {}
    for r in records:
        for scope, options in (r.get("given") or {}).items():
            for key, value in options.items():
                values = scopes.setdefault(scope, {}).setdefault(key, [])
                if value not in values:
                    values.append(value)
    text = "; ".join(
        f"{scope}: " + ", ".join(f"{k}={'/'.join(map(_setting, vs))}" for k, vs in options.items())
        for scope, options in scopes.items()
        if options
    )
    unknown = sum("given" not in r for r in records)
    note = f" ({unknown} of {len(records)} results do not record theirs)" if unknown else ""
    return (text or "defaults") + note


def _setting(value: object) -> str:
    return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def plan_summary(plan: dict, records: list[dict] | None = None, earlier: int = 0) -> str:
    """One line naming a bench plan's methods and protocols, with the seeds and settings of the results shown (read
    from their records; from the plan for a bench whose records do not carry them), and how many results of
    earlier plans its results.json keeps besides."""
    narrowed = "".join(f" ({m}: {', '.join(ps)} only)" for m, ps in (plan.get("evaluate_with") or {}).items())
    text = f"methods {', '.join(plan['methods'])}; protocols {', '.join(plan['protocols'])}{narrowed}; "
    if records and all("given" in r for r in records):
        seeds = "/".join(str(n) for n in sorted({len(r.get("test_acc") or []) for r in records}))
        text += f"seeds {seeds}; settings {given_summary(records)}"
    else:
        text += (
            f"seeds {plan['seeds']}; crops {plan.get('crops') or 'backbone defaults'}; "
            f"settings {plan.get('settings') or 'defaults'}"
        )
    if plan.get("recipe"):
        text += f"; recipe {plan['recipe']['path']} (sha256 {plan['recipe']['sha256'][:12]})"
    if earlier:
        text += f"; not shown: {earlier} result{'s' if earlier > 1 else ''} of earlier plans kept in results.json"
    return text


def comparison_markdown(collection, sections: list[Section]) -> str:
    datasets = ", ".join(dict.fromkeys(str(s.data) for s in sections))
    parts = [f"# Comparison on {datasets}", "", f"datadistill {__version__}. Inputs:", ""]
    for src in collection.sources:
        plan = src.get("plan")
        extra = f" ({plan_summary(plan, src.get('records'), src.get('earlier', 0))})" if plan else ""
        parts.append(f"- {src['kind']} `{src['path']}`{extra}")
    parts.append("")
    for s in sections:
        parts += _section_markdown(s)
    parts += ["## How the scores are computed", ""] + SCORES_HELP + [""]
    return "\n".join(parts)


IMPORTED_HELP = "Sets made elsewhere, read from files and evaluated as they are (the same set for every seed):"


def _imported_markdown(s: Section) -> list[str]:
    if not s.imported:
        return []
    return [IMPORTED_HELP, "", *(f"- {row}: `{source}`" for row, source in s.imported.items()), ""]
