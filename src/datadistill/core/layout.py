"""Where things lie on disk: the files of a run directory and of a bench directory, and where a bench keeps its
runs. Runs, benches and reports all take these names from here.

A run directory (``datadistill distill --out RUN``)::

    config.json     the distillation config and what it resolved to (backbone weights, sizes, ...)
    metrics.json    phases (seconds, peak memory), losses, and every evaluation of the set
    log.txt         the run's log
    synset/         the saved set (manifest.json, synset.safetensors, grid.png)
    checkpoints/    last.pt (and its previous copy) while the run can resume
    report.md       the run's report
    .lock           held by the process distilling there

A bench directory (``datadistill bench --out OUT``)::

    bench.json      the plan, and the keys of its cells
    results.json    one record per cell evaluated there
    results.csv     the current plan's records
    summary.md      accuracy tables per IPC and distillation backbone
    .lock           held by the process running the bench
    ipcK/random-D/seedS/       Random real images, redrawn per evaluation seed
    ipcK/BACKBONE/METHOD-D/    run directories of backbone methods (neighbors:SRC -> neighbors-SRC-D)
    ipcK/METHOD-D/             run directories of methods without a backbone

where D is a digest of the run's settings.
"""

from __future__ import annotations

from pathlib import Path

RUN_CONFIG = "config.json"
RUN_METRICS = "metrics.json"
RUN_LOG = "log.txt"
RUN_REPORT = "report.md"
SYNSET = "synset"
SYNSET_MANIFEST = "manifest.json"  # inside SYNSET
SYNSET_GRID = "grid.png"  # inside SYNSET
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.pt"  # inside CHECKPOINTS
LOCK = ".lock"  # of a run directory and of a bench directory

BENCH_PLAN = "bench.json"
BENCH_RESULTS = "results.json"
BENCH_CSV = "results.csv"
BENCH_SUMMARY = "summary.md"


def is_run_dir(path: Path) -> bool:
    return (path / RUN_CONFIG).exists()


def is_bench_dir(path: Path) -> bool:
    return (path / BENCH_PLAN).exists()


def bench_run_dirs(
    out: Path, spec: str, ipc: int, group: str, run_digest: str, seeds: int, uses_backbone: bool
) -> list[Path]:
    """Where a bench keeps method ``spec``'s run directories (one per seed for Random): named by the method and
    ``run_digest``, the digest of the run's identity, so runs of other settings never share one."""
    folder = f"{spec.replace(':', '-')}-{run_digest}"
    if spec.partition(":")[0] == "random":
        return [out / f"ipc{ipc}" / folder / f"seed{k}" for k in range(seeds)]
    if uses_backbone:
        return [out / f"ipc{ipc}" / group / folder]
    return [out / f"ipc{ipc}" / folder]


def early_bench_run_dirs(method: str, ipc: int, group: str, seeds: int, uses_backbone: bool) -> list[str]:
    """Where the first benches, whose records did not name their run directories, kept a method's runs (relative
    to the bench directory)."""
    if method.partition(":")[0] == "random":
        return [f"ipc{ipc}/random/seed{k}" for k in range(seeds)]
    if uses_backbone:
        return [f"ipc{ipc}/{group}/{method.replace(':', '-')}"]
    return [f"ipc{ipc}/{method}"]
