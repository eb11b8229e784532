"""Wall time and peak memory (process RSS, CUDA) per phase of a run."""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

PROC_STATUS, PROC_CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


_peak_before_resets_mb = 0.0  # the kernel forgets the process peak on a reset (ru_maxrss too): keep it here


def reset_peak_rss() -> bool:
    """Restart the process's resident-memory high-water mark (Linux: ``5`` into /proc/self/clear_refs), so the
    next reading is the peak of one phase, not of everything the process did before. False where unsupported."""
    global _peak_before_resets_mb
    _peak_before_resets_mb = max(_peak_before_resets_mb, peak_rss_mb())
    try:
        PROC_CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The high-water mark since the last reset (VmHWM), else the whole process's (ru_maxrss)."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def process_peak_rss_mb() -> float:
    """The whole process's resident peak, across the per-phase resets (what ``ru_maxrss`` gives without them)."""
    return max(_peak_before_resets_mb, peak_rss_mb())


def peak_memory_mb(device: torch.device | None = None) -> dict:
    out = {"peak_rss_mb": peak_rss_mb()}
    if device is not None and device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


@dataclass
class PhaseTimer:
    device: torch.device | None = None
    phases: dict = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str):
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        reset_peak_rss()
        start = time.perf_counter()
        try:
            yield self.phases.setdefault(name, {})
        finally:
            entry = self.phases[name]
            entry["seconds"] = round(entry.get("seconds", 0.0) + time.perf_counter() - start, 3)
            entry.update(peak_memory_mb(self.device))
