"""Small helpers shared by the scale benchmarks (imagenet_e2e.py, class_scaling.py, gpu_scale.py): phases timed with
the toolkit's ``PhaseTimer`` (CUDA work finished before the clock is read), markdown tables and the JSON output."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch


def synchronize(device: torch.device | None) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a clock read before this measures nothing)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def phase(timer, name: str) -> Iterator[dict]:
    """``timer.phase(name)`` (wall seconds, peak RSS, and on CUDA the peak allocated memory, each restarted at the
    phase's start) with the device's queued work finished before the phase starts and before it ends."""
    synchronize(timer.device)
    with timer.phase(name) as entry:
        yield entry
        synchronize(timer.device)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def write_out(path: Path | None, results: dict) -> None:
    """The results as JSON at ``path`` (folders made as needed); nothing without a path."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")
