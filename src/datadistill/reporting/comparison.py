"""Readable reports: a markdown page per run (config, phases, losses, evaluations, image grid), and the comparison
report of ``datadistill report``: tables (accuracy, scores relative to random, cost) per dataset, IPC and
distillation backbone, figures; ``markdown.py`` and ``html.py`` render the sections."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ..core import layout
from ..core.errors import ConfigError
from ..core.io import atomic_dir, check_writable, write_bytes, write_text
from ..evaluate.identity import differences, evaluation_of
from ..evaluate.ranking import model_of, score_records, trains_on_real
from . import plots
from .collect import collect
from .html import render_html
from .markdown import comparison_markdown
from .table import Cell, Figure, Section, Table, fmt_acc, fmt_num, fmt_pct, fmt_stat

# ---- comparison report: several methods (a bench, or run directories) on one page -----------------------------

MAX_GRID_CLASSES = 20  # rows of a synthetic-image grid shown in a report (the run keeps the full grid)


def evaluation_label(record: dict) -> str:
    """An evaluation as shown: ``linear-probe @ efficientnet_lite0 (64 px)``."""
    _, model, size = model_of(record)
    name = record["protocol"]
    label = name if model in (None, name.split(":")[0]) else f"{name} @ {model}"
    return f"{label} ({size} px)" if size else label


def column_labels(records: list[dict]) -> dict[str, str]:
    """Each record's column (by key): its evaluation label, followed by the settings that tell different
    evaluations sharing that label apart (``epochs=5`` / ``epochs=7``), so no evaluation hides another."""
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
            row.append(Cell(fmt_acc(r), r["mean"] == best[c], f"val {fmt_pct(r.get('val_mean'))}") if r else Cell(""))
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
                Cell(fmt_acc(full_by_col[c]), sub=f"val {fmt_pct(full_by_col[c].get('val_mean'))}")
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
                    Cell(fmt_stat(stat, signed))
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
                Cell(fmt_stat(sc.ior, True) if sc and sc.ior else "–"),
                Cell(fmt_stat(lrs) if lrs else "–", note=None if lrs or not sc else note(f"LRS: {sc.missing['lrs']}")),
                Cell(fmt_stat(sc.ars) if sc and sc.ars else "–"),
                Cell(f"{total:.1f}" if phases else ""),
                Cell(fmt_num(_peak(phases, "peak_rss_mb"))),
                Cell(fmt_num(_peak(phases, "peak_cuda_mb"))),
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
            + [Cell(fmt_num(phases.get(p, {}).get("seconds"), 2)) for p in phase_names]
            + [
                Cell(f"{sum(p.get('seconds') or 0.0 for p in phases.values()):.1f}"),
                Cell(fmt_num(per_step, 4)),
                Cell(fmt_num(_peak(phases, "peak_rss_mb"))),
                Cell(fmt_num(_peak(phases, "peak_cuda_mb"))),
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


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text).strip("-").lower()


def grid_image(info, max_classes: int = MAX_GRID_CLASSES, max_width: int = 1600) -> tuple[bytes, list[str], str]:
    """A run's grid.png (one row per class) as PNG bytes, cut to ``max_classes`` rows and ``max_width`` pixels."""
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
            "Distillation loss per step (one panel per step-wise method; DMGD and MGD3: OT distance per chunk)",
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


def default_out(paths: list[str | Path]) -> Path:
    """Where a report goes without --out: the bench directory when exactly one is given."""
    if len(paths) == 1 and layout.is_bench_dir(Path(paths[0])):
        return Path(paths[0])
    raise ConfigError("pass --out DIR: the report of run directories, or of several inputs, needs a folder")


def write_comparison(paths: list[str | Path], out: str | Path | None = None) -> dict[str, Path]:
    """``datadistill report``: report.html (self-contained), report.md and report_files/ (PNGs) in ``out``."""
    if not paths:
        raise ConfigError("give at least one bench or run directory")
    collection = collect(paths)
    out = check_writable(out if out is not None else default_out(paths))
    if layout.is_run_dir(out):
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
