"""Readable reports: a markdown page per run (config, phases, losses, evaluations, image grid), and the comparison
report of ``datadistill report``: tables (accuracy, scores relative to random, cost) per dataset, IPC and
distillation backbone, figures, and the markdown page; report_html.py renders the same sections as HTML."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .io import write_text


def fmt_acc(entry: dict) -> str:
    return f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"


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


# Method options the run report names in words, in this order (shown only when the method has them).
RUN_OPTIONS = (("steps", "steps"), ("lr", "lr"), ("augs", "views per step"), ("param", "parameterisation"))


def write_report(run: str | Path) -> Path:
    """The run directory's report.md: its config, phases, losses, every stored evaluation and the image grid."""
    from .collect import RunInfo, run_records

    run = Path(run)
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
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
            parts += [f"Loss: {dist['loss_first']:.4f} at the first step, {dist['loss_last']:.4f} at the last.", ""]
    records = run_records(RunInfo(run, config, metrics))
    if records:
        labels = column_labels(records)
        rows = [(labels[r["key"]], {**r, "backbone": r["evaluated_with"]}) for r in records]
        parts += ["## Evaluation", "", accuracy_table(rows, "evaluation"), ""]
    if (run / "synset" / "grid.png").exists():
        parts += ["## Synthetic images", "", "![synthetic set](synset/grid.png)", ""]
    path = run / "report.md"
    write_text(path, "\n".join(parts))
    return path


# ---- comparison report: several methods (a bench, or run directories) on one page -----------------------------

MAX_GRID_CLASSES = 20  # rows of a synthetic-image grid shown in a report (the run keeps the full grid)


@dataclass
class Cell:
    text: str
    best: bool = False
    sub: str = ""  # a second, smaller line (e.g. validation accuracy)
    note: int | None = None  # number of the note that explains an empty cell


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    text_columns: int = 1  # leading columns that hold names (left-aligned); the rest hold numbers


@dataclass
class Figure:
    name: str  # file name under report_files/
    caption: str
    png: bytes
    labels: list[str] = field(default_factory=list)  # row labels of an image grid (class names)


@dataclass
class Section:
    """One IPC and distillation backbone of one dataset: the tables and figures a report shows for it."""

    title: str
    data: str
    ipc: int
    group: str
    methods: list[str]  # row labels (a method, with its folder where several inputs give it)
    records: list[dict]  # evaluations of synthetic sets
    row_of: dict[str, str] = field(default_factory=dict)  # record key -> its row (row_labels)
    column_of: dict[str, str] = field(default_factory=dict)  # record key -> its column (column_labels)
    full: list[dict] = field(default_factory=list)  # evaluations on the full real data of the same dataset
    columns: list[str] = field(default_factory=list)  # evaluations (protocol @ model, settings), in run order
    full_by_column: dict[str, dict] = field(default_factory=dict)  # the full-data evaluation of each column's model
    overview: Table | None = None
    accuracy: Table | None = None
    scores: Table | None = None
    cost: Table | None = None
    notes: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    grids: list[Figure] = field(default_factory=list)
    runs: dict[str, object] = field(default_factory=dict)  # method -> RunInfo
    imported: dict[str, str] = field(default_factory=dict)  # row of a set made elsewhere (file:NAME) -> its source

    def first(self, row: str) -> dict:
        """The first record of a row."""
        return next(r for r in self.records if self.row_of[r["key"]] == row)


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return ""
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _stat_text(stat, signed: bool = False) -> str:
    if stat is None:
        return ""
    return _pct(stat.mean, signed) + ("" if stat.std is None else f" ± {100 * stat.std:.2f}")


def evaluation_label(record: dict) -> str:
    """An evaluation as shown: ``linear-probe @ efficientnet_lite0 (64 px)``."""
    from .evaluate.ranking import model_of

    _, model, size = model_of(record)
    name = record["protocol"]
    label = name if model in (None, name.split(":")[0]) else f"{name} @ {model}"
    return f"{label} ({size} px)" if size else label


def column_labels(records: list[dict]) -> dict[str, str]:
    """Each record's column (by key): its evaluation label, followed by the settings that tell different
    evaluations sharing that label apart (``epochs=5`` / ``epochs=7``), so no evaluation hides another."""
    from .identity import differences, evaluation_of

    base = {r["key"]: evaluation_label(r) for r in records}
    labels = dict(base)
    for label in dict.fromkeys(base.values()):
        group = [r for r in records if base[r["key"]] == label]
        evaluations = {}
        for r in group:
            evaluations.setdefault(evaluation_of(r), (r.get("settings") or {}).get("evaluation"))
        if len(evaluations) > 1:
            extra = dict(zip(evaluations, differences(list(evaluations.values())), strict=True))
            for r in group:
                if extra[evaluation_of(r)]:
                    labels[r["key"]] = f"{label}, {extra[evaluation_of(r)]}"
    return labels


def row_labels(records: list[dict]) -> dict[str, str]:
    """Each record's row (by key): its method, followed by the folder it comes from where several inputs give
    the same method (two SFM runs of different settings are two rows)."""
    sources: dict[str, list[str]] = {}
    for r in records:
        sources.setdefault(r["method"], [])
        if r.get("source") not in sources[r["method"]]:
            sources[r["method"]].append(r.get("source"))
    labels = {}
    for r in records:
        mine = sources[r["method"]]
        names = [Path(str(p)).name for p in mine]
        where = Path(str(r.get("source"))).name if len(set(names)) == len(names) else str(r.get("source"))
        labels[r["key"]] = r["method"] if len(mine) == 1 else f"{r['method']} ({where})"
    return labels


def _peak(phases: dict, key: str) -> float | None:
    values = [p.get(key) for p in phases.values() if p.get(key) is not None]
    return max(values) if values else None


def build_sections(collection) -> list[Section]:
    """Group a collection's records by (dataset, IPC, distillation backbone) and build every table."""
    from .evaluate.ranking import score_records, trains_on_real

    records = collection.records
    scores = score_records(records)
    synthetic = [r for r in records if not trains_on_real(r)]
    sections = []
    for data in dict.fromkeys(r.get("data") for r in synthetic):
        mine = [r for r in synthetic if r.get("data") == data]
        full = [r for r in records if trains_on_real(r) and r.get("data") == data]
        for ipc in sorted({r["ipc"] for r in mine if r.get("ipc") is not None}):
            at_ipc = [r for r in mine if r["ipc"] == ipc]
            groups = [g for g in dict.fromkeys(r.get("distill_backbone") or "-" for r in at_ipc) if g != "-"] or ["-"]
            for group in groups:
                rows = [r for r in at_ipc if (r.get("distill_backbone") or "-") in (group, "-")]
                title = f"{data}, IPC {ipc}" + (f", distilled with {group}" if group != "-" else "")
                row_of = row_labels(rows)
                methods = list(dict.fromkeys(row_of[r["key"]] for r in rows))
                section = Section(title, data, ipc, group, methods, rows, row_of, column_labels(rows), full)
                section.imported = {row_of[r["key"]]: r["set_source"] for r in rows if r.get("set_source")}
                _fill(section, scores, collection)
                sections.append(section)
    return sections


def _fill(s: Section, scores: dict, collection) -> None:
    from .evaluate.ranking import model_of

    columns = s.columns = list(dict.fromkeys(s.column_of[r["key"]] for r in s.records))
    cell = {(s.row_of[r["key"]], s.column_of[r["key"]]): r for r in s.records}
    best = {c: max(r["mean"] for (m, col), r in cell.items() if col == c) for c in columns}
    notes: dict[str, int] = {}

    def note(text: str) -> int:
        return notes.setdefault(text, len(notes) + 1)

    acc_rows = []
    for m in s.methods:
        row = [Cell(m)]
        for c in columns:
            r = cell.get((m, c))
            row.append(Cell(fmt_acc(r), r["mean"] == best[c], f"val {_pct(r.get('val_mean'))}") if r else Cell(""))
        acc_rows.append(row)
    full_by_col = s.full_by_column
    for c in columns:
        model = model_of(next(r for r in s.records if s.column_of[r["key"]] == c))
        match = next((f for f in s.full if model_of(f) == model), None)
        if match is not None:
            full_by_col[c] = match
    if full_by_col:
        names = ", ".join(dict.fromkeys(f["protocol"] for f in full_by_col.values()))
        acc_rows.append(
            [Cell(f"full data ({names})")]
            + [
                Cell(fmt_acc(full_by_col[c]), sub=f"val {_pct(full_by_col[c].get('val_mean'))}")
                if c in full_by_col
                else Cell("")
                for c in columns
            ]
        )
    s.accuracy = Table(["method"] + columns, acc_rows)

    score_rows = []
    for m in s.methods:
        for c in columns:
            r = cell.get((m, c))
            if r is None:
                continue
            sc = scores[r["key"]]
            row = [Cell(m), Cell(c), Cell(fmt_acc(r))]
            for name, signed in (("ior", True), ("hlr", False), ("lrs", False), ("ars", False)):
                stat = getattr(sc, name)
                row.append(
                    Cell(_stat_text(stat, signed))
                    if stat is not None
                    else Cell("–", note=note(f"{name.upper()}: {sc.missing[name]}"))
                )
            score_rows.append(row)
    s.scores = Table(
        ["method", "evaluation", "test acc (%)", "IOR (pp)", "HLR (pp)", "LRS (%)", "ARS (%)"],
        score_rows,
        text_columns=2,
    )

    over_rows = []
    for m in s.methods:
        # Each method's first evaluation in column order (the linear probe for probe-family methods, the ConvNet
        # for pixel / generative ones), so methods evaluated differently all show their accuracy here.
        first = next((c for c in columns if (m, c) in cell), None)
        r = cell.get((m, first))
        sc = scores[r["key"]] if r else None
        phases = (r or s.first(m)).get("distill_phases") or {}
        total = sum(p.get("seconds") or 0.0 for p in phases.values())
        lrs = sc.lrs if sc else None
        over_rows.append(
            [
                Cell(m),
                Cell(first or ""),
                Cell(fmt_acc(r) if r else "", r is not None and r["mean"] == best[first]),
                Cell(_stat_text(sc.ior, True) if sc and sc.ior else "–"),
                Cell(
                    _stat_text(lrs) if lrs else "–", note=None if lrs or not sc else note(f"LRS: {sc.missing['lrs']}")
                ),
                Cell(_stat_text(sc.ars) if sc and sc.ars else "–"),
                Cell(f"{total:.1f}" if phases else ""),
                Cell(_num(_peak(phases, "peak_rss_mb"))),
                Cell(_num(_peak(phases, "peak_cuda_mb"))),
            ]
        )
    s.overview = Table(
        [
            "method",
            "evaluation",
            "test acc (%)",
            "IOR (pp)",
            "LRS (%)",
            "ARS (%)",
            "distill time (s)",
            "peak RSS (MB)",
            "peak CUDA (MB)",
        ],
        over_rows,
        text_columns=2,
    )

    # Phase names in run order, taken first from the runs with the most phases (e.g. with a statistics pass).
    by_size = sorted(s.records, key=lambda r: -len(r.get("distill_phases") or {}))
    phase_names = list(dict.fromkeys(p for r in by_size for p in (r.get("distill_phases") or {})))
    cost_rows = []
    for m in s.methods:
        mine = [r for r in s.records if s.row_of[r["key"]] == m]
        phases = mine[0].get("distill_phases") or {}
        per_step = next((p["seconds_per_step"] for p in phases.values() if p.get("seconds_per_step")), None)
        eval_s = sum(r.get("eval_seconds") or 0.0 for r in mine)
        cost_rows.append(
            [Cell(m)]
            + [Cell(_num(phases.get(p, {}).get("seconds"), 2)) for p in phase_names]
            + [
                Cell(f"{sum(p.get('seconds') or 0.0 for p in phases.values()):.1f}"),
                Cell(_num(per_step, 4)),
                Cell(_num(_peak(phases, "peak_rss_mb"))),
                Cell(_num(_peak(phases, "peak_cuda_mb"))),
                Cell(f"{eval_s:.1f}"),
            ]
        )
    s.cost = Table(
        ["method"]
        + [f"{p} (s)" for p in phase_names]
        + ["total (s)", "s / step", "peak RSS (MB)", "peak CUDA (MB)", "evaluations (s)"],
        cost_rows,
    )
    for table in (s.overview, s.cost):
        _drop_empty(table, "peak CUDA (MB)")  # runs on CPU
    s.notes = [text for text, _ in sorted(notes.items(), key=lambda kv: kv[1])]
    for m in s.methods:
        info = collection.run(s.first(m))
        if info is not None:
            s.runs[m] = info


def _drop_empty(table: Table, header: str) -> None:
    """Remove column ``header`` when no row has a value in it."""
    if header in table.header:
        i = table.header.index(header)
        if not any(row[i].text for row in table.rows):
            table.header.pop(i)
            for row in table.rows:
                row.pop(i)


def _num(x: float | None, digits: int = 0) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text).strip("-").lower()


def grid_image(info, max_classes: int = MAX_GRID_CLASSES, max_width: int = 1600) -> tuple[bytes, list[str], str]:
    """A run's grid.png (one row per class) as PNG bytes, cut to ``max_classes`` rows and ``max_width`` pixels."""
    import io

    from PIL import Image

    img = Image.open(info.grid).convert("RGB")
    classes, rows, note = info.classes, info.grid_classes, ""
    if min(rows, len(classes)) > max_classes:
        row = (img.height - 2) / rows
        img = img.crop((0, 0, img.width, round(2 + row * max_classes)))
    if len(classes) > max_classes:
        note = f"; first {max_classes} of {len(classes)} classes"
        classes = classes[:max_classes]
    if img.width > max_width:
        img = img.resize((max_width, max(1, round(img.height * max_width / img.width))), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), classes, note


def add_figures(s: Section) -> None:
    """Accuracy bars, loss curves, time and memory bars and the image grids of a section."""
    import numpy as np

    from . import plots

    slug = _slug(f"{s.data}-ipc{s.ipc}-{s.group}")
    columns = s.columns
    cell = {(s.row_of[r["key"]], s.column_of[r["key"]]): r for r in s.records}
    means = np.array([[cell[(m, c)]["mean"] if (m, c) in cell else np.nan for c in columns] for m in s.methods])
    stds = np.array([[cell[(m, c)]["std"] if (m, c) in cell else np.nan for c in columns] for m in s.methods])
    reference = {c: r["mean"] for c, r in s.full_by_column.items()}
    candidates = [
        (
            "accuracy",
            "Test accuracy (%), mean ± std over seeds; dashed: the full real training set",
            plots.accuracy_bars(s.methods, columns, means, stds, reference),
        ),
        (
            "losses",
            "Distillation loss per step (one panel per method that optimises)",
            plots.loss_curves([(m, s.runs[m].losses) for m in s.methods if m in s.runs]),
        ),
        (
            "cost",
            "Seconds per phase of the distillation, and peak memory",
            plots.cost_bars([(m, s.first(m).get("distill_phases") or {}) for m in s.methods]),
        ),
    ]
    s.figures = [Figure(f"{slug}-{name}.png", caption, png) for name, caption, png in candidates if png]
    for m in s.methods:
        info = s.runs.get(m)
        if info is None or info.grid is None:
            continue
        png, classes, note = grid_image(info)
        runs = s.first(m).get("runs") or []
        seeds = " (the first seed's draw)" if len(runs) > 1 else ""
        s.grids.append(Figure(f"{slug}-grid-{_slug(m)}.png", f"{m}{seeds}{note}", png, classes))


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


IMPORTED_HELP = "Sets made elsewhere, read from files and evaluated as they are (the same set for every seed):"


def _imported_markdown(s: Section) -> list[str]:
    if not s.imported:
        return []
    return [IMPORTED_HELP, "", *(f"- {row}: `{source}`" for row, source in s.imported.items()), ""]


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
    from . import __version__

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


def default_out(paths: list[str | Path]) -> Path:
    """Where a report goes without --out: the bench directory when exactly one is given."""
    if len(paths) == 1 and (Path(paths[0]) / "bench.json").exists():
        return Path(paths[0])
    raise ConfigError("pass --out DIR: the report of run directories, or of several inputs, needs a folder")


def write_comparison(paths: list[str | Path], out: str | Path | None = None) -> dict[str, Path]:
    """``datadistill report``: report.html (self-contained), report.md and report_files/ (PNGs) in ``out``."""
    from .collect import collect
    from .io import atomic_dir, check_writable, write_bytes
    from .report_html import render_html

    if not paths:
        raise ConfigError("give at least one bench or run directory")
    collection = collect(paths)
    out = check_writable(out if out is not None else default_out(paths))
    if (out / "config.json").exists():
        raise ConfigError(f"{out} is a run directory (its report.md is the run's own); pass another --out")
    sections = build_sections(collection)
    for s in sections:
        add_figures(s)
    with atomic_dir(out / "report_files") as tmp:
        for s in sections:
            for f in s.figures + s.grids:
                write_bytes(tmp / f.name, f.png)
    write_text(out / "report.md", comparison_markdown(collection, sections))
    write_text(out / "report.html", render_html(collection, sections))
    return {"html": out / "report.html", "markdown": out / "report.md", "files": out / "report_files"}
