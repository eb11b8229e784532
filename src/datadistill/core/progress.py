"""Progress bars and logging that every long loop shares (quiet mode for tests and non-interactive runs)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
log = logging.getLogger("datadistill")


def progress_enabled() -> bool:
    return os.environ.get("DATADISTILL_PROGRESS", "1") != "0"


def _bar_options(desc: str, total: int | None, initial: int) -> dict:
    """One look for every bar: on stderr, hidden when progress is off, gone when done."""
    return {
        "desc": desc,
        "total": total,
        "initial": initial,
        "disable": not progress_enabled(),
        "file": sys.stderr,
        "dynamic_ncols": True,
        "leave": False,
    }


def progress(iterable: Iterable[T], desc: str, total: int | None = None, initial: int = 0) -> Iterator[T]:
    return iter(tqdm(iterable, **_bar_options(desc, total, initial)))


def progress_bar(desc: str, total: int, initial: int = 0, unit: str = "it") -> tqdm:
    return tqdm(**_bar_options(desc, total, initial), unit=unit)
