"""A run directory: its config (written, or checked on resume), metrics, log and lock."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from ..core import dist, layout
from ..core.config import RESUME_FREE_FIELDS, DistillConfig, flat_config
from ..core.errors import ConfigError
from ..core.io import (
    check_writable,
    hold_lock,
    previous_checkpoint,
    write_json,
)
from ..core.progress import log


class RunDir:
    """A run directory: ``config.json``, ``log.txt``, ``metrics.json``, ``synset/``, ``checkpoints/``,
    ``report.md``, and ``.lock`` (held by the process distilling there); see ``layout.py``."""

    def __init__(self, path: str | Path):
        self.path = check_writable(path) if dist.is_main() else Path(path)
        self.checkpoints = self.path / layout.CHECKPOINTS

    @property
    def config_path(self) -> Path:
        return self.path / layout.RUN_CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / layout.RUN_METRICS

    @property
    def synset_path(self) -> Path:
        return self.path / layout.SYNSET

    @property
    def lock_path(self) -> Path:
        return self.path / layout.LOCK

    def read_config(self) -> dict | None:
        return json.loads(self.config_path.read_text()) if self.config_path.exists() else None

    def has_progress(self) -> bool:
        """Whether a process got as far as a checkpoint or a synthetic set here (then its config binds)."""
        last = self.checkpoints / layout.LAST_CHECKPOINT
        return any(p.exists() for p in (last, previous_checkpoint(last), self.synset_path))

    def claim(self, config: DistillConfig, resolved: dict) -> bool:
        """Write the config, or check it matches the one already there. True if the run resumes earlier progress.

        A config whose run stopped before its first checkpoint (bad input found late, a loss that diverged at once)
        holds nothing to resume: the new config replaces it.
        """
        previous = self.read_config()
        if previous is not None:
            old = {k: v for k, v in flat_config(previous.get("distill", {})).items() if k not in RESUME_FREE_FIELDS}
            new = {k: v for k, v in flat_config(config.to_dict()).items() if k not in RESUME_FREE_FIELDS}
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            progress = self.has_progress()
            if diff and progress:
                raise ConfigError(
                    f"{self.path} holds a run with a different config ({', '.join(diff)}); "
                    "use another --out, or delete it to start over"
                )
            if progress:
                return True
            if diff:
                log.warning(
                    "%s: the run there stopped before its first checkpoint; starting over with the new config (%s)",
                    self.path,
                    ", ".join(diff),
                )
        if dist.is_main():
            write_json(self.config_path, {"distill": config.to_dict(), **resolved})
        return False

    def metrics(self) -> dict:
        return json.loads(self.metrics_path.read_text()) if self.metrics_path.exists() else {}

    def update_metrics(self, **sections) -> dict:
        metrics = self.metrics()
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(metrics.get(key), dict):
                metrics[key].update(value)
            else:
                metrics[key] = value
        write_json(self.metrics_path, metrics)
        return metrics

    @contextmanager
    def session(self, earlier: list[logging.LogRecord] = ()) -> Iterator[None]:
        """Hold the run's lock and log into its ``log.txt`` for the life of the block (the process that distills
        here). A second process on the same folder stops at the lock, naming the first; under torchrun the ranks
        of one run are one owner, so only rank 0 takes it. ``earlier`` lines (logged before the folder existed,
        see ``buffered_log``) open the log once the lock is held."""
        lock = hold_lock(self.lock_path, self.path, "wait for it or use another --out")
        with lock if dist.is_main() else nullcontext(), self.logging(earlier):
            yield

    @contextmanager
    def logging(self, earlier: list[logging.LogRecord] = ()):
        if not dist.is_main():
            yield
            return
        handler = logging.FileHandler(self.path / layout.RUN_LOG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        for record in earlier:
            handler.handle(record)
        with _run_logging(handler):
            yield


@contextmanager
def _run_logging(handler: logging.Handler) -> Iterator[None]:
    """INFO goes to ``handler``; the console keeps progress bars, warnings and the CLI's own output."""
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    log.addHandler(handler)
    log.addHandler(console)
    previous = log.level, log.propagate
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.removeHandler(console)
        handler.close()
        log.setLevel(previous[0])
        log.propagate = previous[1]


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def buffered_log() -> Iterator[list[logging.LogRecord]]:
    """Keep what is logged before a run folder may be created (loading and checking the input), so that a refused
    input leaves no folder behind while an accepted run's ``log.txt`` still starts with those lines."""
    recorder = _Recorder()
    with _run_logging(recorder):
        yield recorder.records
