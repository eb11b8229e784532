"""The comparison report as one self-contained HTML page: inline CSS, images embedded as base64 PNG data URIs,
no scripts and no network resource of any kind, so it opens offline and can be mailed as one file."""

from __future__ import annotations

import base64
import html
import struct

from ..core.version import __version__
from .markdown import COST_HELP, IMPORTED_HELP, SCORES_HELP, plan_summary
from .table import Cell, Figure, Section, Table

GRID_ROW_PX = 40  # displayed height of one class row of an image grid

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 24px auto;
       max-width: 1280px; padding: 0 16px; color: #1d2125; background: #fff; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 2px solid #d0d7de; padding-bottom: 4px; }
h3 { margin-top: 1.4em; font-size: 1.1em; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: right; vertical-align: top; white-space: nowrap; }
th { background: #f3f5f7; white-space: normal; } .name { text-align: left; }
td.best { background: #e3f4e1; } td.best strong::after { content: " \\2605"; color: #2f7d32; }
td .sub { color: #6a737d; font-size: 0.8em; }
sup a { color: #9a6700; text-decoration: none; }
.fig { margin: 8px 0 16px; } .fig img { max-width: 100%; height: auto; border: 1px solid #eee; }
.caption { color: #57606a; font-size: 0.85em; }
.grids { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.grid { text-align: center; } .grid img { image-rendering: pixelated; border: 1px solid #ccc; }
.labels { display: flex; flex-direction: column; font-size: 0.75em; color: #57606a; text-align: right; }
.labels span { flex: 1; display: flex; align-items: center; justify-content: flex-end; white-space: nowrap; }
details { margin: 4px 0; font-size: 0.9em; } summary { cursor: pointer; color: #57606a; }
.note, .help { color: #57606a; font-size: 0.85em; } code { background: #f3f5f7; padding: 0 3px; }
"""


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", png[16:24])


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(text: object) -> str:
    return html.escape(str(text))


def _cell(c: Cell, tag: str, section_id: str, notes: list[str], name: bool = False) -> str:
    body = f"<strong>{_e(c.text)}</strong>" if c.best and c.text else _e(c.text)
    if c.sub and c.text:
        body += f'<div class="sub">{_e(c.sub)}</div>'
    title = ""
    if c.note:
        body += f'<sup><a href="#{section_id}-note-{c.note}">[{c.note}]</a></sup>'
        title = f' title="{_e(notes[c.note - 1])}"'
    classes = " ".join(k for k, on in (("best", c.best and c.text), ("name", name)) if on)
    cls = f' class="{classes}"' if classes else ""
    return f"<{tag}{cls}{title}>{body}</{tag}>"


def table_html(table: Table, section_id: str = "", notes: list[str] | None = None) -> str:
    notes = notes or []
    k = table.text_columns
    head = "".join(f"<th{' class=name' if i < k else ''}>{_e(h)}</th>" for i, h in enumerate(table.header))
    rows = "".join(
        "<tr>" + "".join(_cell(c, "td", section_id, notes, i < k) for i, c in enumerate(row)) + "</tr>"
        for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def figure_html(f: Figure) -> str:
    w, h = png_size(f.png)
    return (
        f'<div class="fig"><img src="{data_uri(f.png)}" alt="{_e(f.caption)}" width="{w}" height="{h}">'
        f'<div class="caption">{_e(f.caption)}</div></div>'
    )


def grids_html(grids: list[Figure]) -> str:
    if not grids:
        return ""
    parts = ['<div class="grids">']
    rows = max(len(g.labels) for g in grids) or 1
    labels = next((g.labels for g in grids if len(g.labels) == rows), [])
    height = GRID_ROW_PX * rows
    if labels:
        spans = "".join(f"<span>{_e(name)}</span>" for name in labels)
        parts.append(
            f'<div class="grid"><div class="labels" style="height:{height}px;margin-top:1.5em">{spans}</div></div>'
        )
    for g in grids:
        w, h = png_size(g.png)
        shown = height * max(len(g.labels), 1) // rows
        width = max(1, round(w * shown / h))
        parts.append(
            f'<div class="grid"><div class="caption" style="height:1.5em">{_e(g.caption)}</div>'
            f'<img src="{data_uri(g.png)}" alt="{_e(g.caption)}" width="{width}" height="{shown}"></div>'
        )
    parts.append("</div>")
    return "".join(parts)


def phases_of(phases: dict) -> Table:
    rows = [
        [
            Cell(name),
            Cell(f"{p.get('seconds', 0):.2f}"),
            Cell(str(p.get("peak_rss_mb", ""))),
            Cell(str(p.get("peak_cuda_mb", ""))),
        ]
        for name, p in phases.items()
    ]
    return Table(["phase", "seconds", "peak RSS (MB)", "peak CUDA (MB)"], rows)


def section_html(s: Section, index: int) -> str:
    sid = f"s{index}"
    seeds = sorted({len(r.get("test_acc") or []) for r in s.records})
    figures = {f.name.rsplit("-", 1)[-1]: f for f in s.figures}
    out = [
        f'<section id="{sid}"><h2>{_e(s.title)}</h2>',
        f'<p class="help">Test accuracy (%) on the test split, mean ± std over {"/".join(map(str, seeds))} seeds; '
        "val = the validation split held out of train. The best synthetic set per column is marked ★.</p>",
    ]
    if s.imported:
        rows = "".join(f"<li>{_e(row)}: <code>{_e(source)}</code></li>" for row, source in s.imported.items())
        out.append(f'<p class="help">{_e(IMPORTED_HELP)}</p><ul class="help">{rows}</ul>')
    out += [
        "<h3>Overview</h3>",
        table_html(s.overview, sid, s.notes),
        "<h3>Accuracy</h3>",
        table_html(s.accuracy, sid, s.notes),
    ]
    if "accuracy.png" in figures:
        out.append(figure_html(figures["accuracy.png"]))
    out += ["<h3>Scores relative to random (DD-Ranking)</h3>", table_html(s.scores, sid, s.notes)]
    if s.notes:
        out.append(
            '<ol class="note">'
            + "".join(f'<li id="{sid}-note-{i}">{_e(t)}</li>' for i, t in enumerate(s.notes, 1))
            + "</ol>"
        )
    out += ["<h3>Time and memory</h3>", table_html(s.cost, sid, s.notes), f'<p class="help">{_e(COST_HELP)}</p>']
    if "cost.png" in figures:
        out.append(figure_html(figures["cost.png"]))
    for m, info in s.runs.items():
        if info.phases:
            out.append(
                f"<details><summary>{_e(m)}: phases of <code>{_e(info.path)}</code></summary>"
                f"{table_html(phases_of(info.phases))}</details>"
            )
    if "losses.png" in figures:
        out += ["<h3>Loss curves</h3>", figure_html(figures["losses.png"])]
    if s.grids:
        out += ["<h3>Synthetic images (one row per class)</h3>", grids_html(s.grids)]
    out.append("</section>")
    return "\n".join(out)


def _help_html() -> str:
    items = []
    for line in SCORES_HELP[1:]:
        text = _e(line.removeprefix("- "))
        # **X** -> <strong>X</strong>, `x` -> <code>x</code> (the only markup SCORES_HELP uses)
        for mark, tag in (("**", "strong"), ("`", "code")):
            while text.count(mark) >= 2:
                text = text.replace(mark, f"<{tag}>", 1).replace(mark, f"</{tag}>", 1)
        items.append(f"<li>{text}</li>")
    return f"<h2>How the scores are computed</h2><p>{_e(SCORES_HELP[0])}</p><ul>{''.join(items)}</ul>"


def render_html(collection, sections: list[Section]) -> str:
    datasets = ", ".join(dict.fromkeys(str(s.data) for s in sections))
    sources = []
    for src in collection.sources:
        plan = src.get("plan")
        extra = f" — {plan_summary(plan, src.get('records'), src.get('earlier', 0))}" if plan else ""
        sources.append(f"<li>{_e(src['kind'])} <code>{_e(src['path'])}</code>{_e(extra)}</li>")
    toc = "".join(f'<li><a href="#s{i}">{_e(s.title)}</a></li>' for i, s in enumerate(sections))
    body = "\n".join(section_html(s, i) for i, s in enumerate(sections))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>datadistill report: {_e(datasets)}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>Comparison on {_e(datasets)}</h1>"
        f'<p class="help">datadistill {_e(__version__)}. Inputs:</p><ul>{"".join(sources)}</ul>'
        f"<ul>{toc}</ul>\n{body}\n{_help_html()}\n</body></html>\n"
    )
