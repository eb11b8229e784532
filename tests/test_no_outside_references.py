"""What a user reads refers only to the project itself: no internal notes, no issue numbers, no development machine.

Scanned: README.md, BENCHMARKS.md, CHANGELOG.md, docs/, benchmarks/README.md, benchmarks/*.py and every text file
under src/ (docstrings, comments, help texts, report templates). Links to issues of upstream projects stay allowed
(``github.com/OWNER/REPO/issues/123``): they are public and say where a workaround comes from.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".html", ".css", ".json"}

# One regex per kind of outside reference, each precise enough to leave ordinary prose alone: the registry
# ``METHODS`` dict is code, ``METHODS.md`` is a note; ``issues/123`` in a URL is upstream, ``issue 3`` is ours.
OUTSIDE_REFERENCES = {
    "internal notes": re.compile(r"\b(?:METHODS|DESIGN)\.md\b|\bMETHODS\s*§|\.\./shared\b|/work/shared\b"),
    "internal issue number": re.compile(r"(?<![/\w])issues?[ _-]?#?\d+|\(#\d+\)", re.IGNORECASE),
    "development machine": re.compile(
        r"\bCPU box\b|\bthis (?:machine|box)\b|\bdev(?:elopment)? (?:machine|box)\b|/tmp lock|flock /tmp/",
        re.IGNORECASE,
    ),
}


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in ("README.md", "BENCHMARKS.md", "CHANGELOG.md", "benchmarks/README.md")]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += sorted((ROOT / "benchmarks").glob("*.py"))
    files += sorted((ROOT / "recipes").glob("*.toml"))
    files += sorted(p for p in (ROOT / "src").rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
    return [p for p in files if p.exists()]


def outside_references(text: str) -> list[tuple[int, str, str]]:
    """(line number, kind, matched text) of every outside reference in ``text``."""
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        for kind, pattern in OUTSIDE_REFERENCES.items():
            hits += [(number, kind, match.group(0)) for match in pattern.finditer(line)]
    return hits


@pytest.mark.parametrize(
    "text",
    [
        "Linear probe (METHODS.md 1.7, 1000 epochs)",
        "numbers: METHODS.md §10 (DANCE)",
        "`../shared/METHODS.md` / `DESIGN.md` in the project workspace",
        "The DM / TGDD table (issue 4): Random real",
        "default /tmp/dd-issue4-runs",
        "rows in `issue3_val_sweeps.jsonl`",
        "more issue-4/5 measurements",
        "Issue 4 under the DM paper's evaluation protocol.",
        "fixed the probe (#12)",
        "batches run faster per image on this machine.",
        "measured on the shared CPU box",
        "it takes the /tmp lock",
        "On the shared 2-core CPU box wrap anything longer than a minute in",
        "`flock /tmp/datadistill-cpu.lock ...` so heavy runs take turns",
        "Machine: the project's CPU box (2 cores, 24 GB, no GPU)",
    ],
)
def test_outside_references_are_found(text: str) -> None:
    assert outside_references(text), text


@pytest.mark.parametrize(
    "text",
    [
        "from .methods import METHODS",
        "for name in sorted(METHODS):",
        "see https://github.com/pytorch/pytorch/issues/12345 for the workaround",
        "the paper's normalisation (docs/methods/sfm.md)",
        "Measured on a 2-core CPU at 28 px, 3 seeds",
        "the CPU boxes of a cluster are fine",
        "tissue 4 is not an issue number",
        "mean ± std over the evaluation seeds 3407-3409 (#seeds 3)",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert not outside_references(text), outside_references(text)


@pytest.mark.parametrize("path", scanned_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_outside_references(path: Path) -> None:
    hits = outside_references(path.read_text(encoding="utf-8"))
    where = path.relative_to(ROOT)
    assert not hits, "outside references:\n" + "\n".join(
        f"{where}:{line}: {kind}: {text!r}" for line, kind, text in hits
    )


def test_the_scan_covers_the_user_facing_files() -> None:
    names = {str(p.relative_to(ROOT)) for p in scanned_files()}
    assert {"README.md", "BENCHMARKS.md", "CHANGELOG.md", "benchmarks/README.md", "docs/index.md"} <= names
    assert "src/datadistill/cli.py" in names and "benchmarks/sfm_fashion.py" in names


def test_benchmarks_document_stays_a_short_results_document():
    """Results first and at most 40 kB: superseded numbers live in the file's history, raw records in results/."""
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= 40_000
    first_section = re.search(r"^## (.+)$", text, re.MULTILINE).group(1)
    assert first_section == "Summary"  # the results tables come before any experiment's section
