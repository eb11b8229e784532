"""The report model, a leaf every renderer reads: cells, tables, figures and sections, and number formatting."""

from __future__ import annotations

from dataclasses import dataclass, field


def fmt_acc(entry: dict) -> str:
    return f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"


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


def fmt_pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return ""
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def fmt_stat(stat, signed: bool = False) -> str:
    if stat is None:
        return ""
    return fmt_pct(stat.mean, signed) + ("" if stat.std is None else f" ± {100 * stat.std:.2f}")


def fmt_num(x: float | None, digits: int = 0) -> str:
    return "" if x is None else f"{x:.{digits}f}"
