"""The run: directory layout, logging, timing and peak memory per phase, checkpoint + resume."""

from __future__ import annotations

import json
import logging
import math
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import dist
from .config import RESUME_FREE_FIELDS, DistillConfig, flat_config
from .errors import ConfigError, DatadistillError, TrainingDiverged
from .io import (
    check_writable,
    checkpoint_lock,
    hold_lock,
    load_checkpoint,
    previous_checkpoint,
    save_checkpoint,
    write_json,
)
from .progress import log, progress_bar


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    return device


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


class RunDir:
    """``config.json``, ``log.txt``, ``metrics.json``, ``synset/``, ``checkpoints/``, ``report.md``, and ``.lock``
    (held by the process distilling there)."""

    def __init__(self, path: str | Path):
        self.path = check_writable(path) if dist.is_main() else Path(path)
        self.checkpoints = self.path / "checkpoints"

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def synset_path(self) -> Path:
        return self.path / "synset"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    def read_config(self) -> dict | None:
        return json.loads(self.config_path.read_text()) if self.config_path.exists() else None

    def has_progress(self) -> bool:
        """Whether a process got as far as a checkpoint or a synthetic set here (then its config binds)."""
        last = self.checkpoints / "last.pt"
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
        handler = logging.FileHandler(self.path / "log.txt")
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


@dataclass
class LoopState:
    step: int
    losses: list[float]
    resumed_at: int = 0  # the step this process started from (0 unless resumed), so timings count only its steps


def optimise(method, ctx, run: RunDir | None) -> tuple[torch.Tensor, LoopState]:
    """The shared optimisation loop: ``method.train_step`` per step, with growth, checkpoints and resume.

    A checkpoint holds the parameterisation, the optimizer, the RNG generator state, the step and the loss
    history, written atomically every ``checkpoint_every`` steps; a killed run loses at most that many steps.
    """
    cfg = ctx.config
    total = method.steps(ctx)
    param = method.init_param(ctx).to(ctx.device)
    optimizer = method.make_optimizer(ctx, param)
    state = LoopState(step=0, losses=[])
    ckpt = run.checkpoints / "last.pt" if run else None
    found = load_checkpoint(ckpt) if ckpt is not None else None
    if found is not None:
        saved, source = found
        try:
            param.load_checkpoint_state(saved["param"])
            optimizer = method.make_optimizer(ctx, param)
            optimizer.load_state_dict(saved["optimizer"])
            ctx.generator.set_state(saved["generator"])
            state = LoopState(step=int(saved["step"]), losses=list(saved["losses"]), resumed_at=int(saved["step"]))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise DatadistillError(f"checkpoint {source} cannot be resumed ({exc}); delete it to start over") from None
        log.info("resumed from %s at step %d", source, state.step)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cfg.amp and ctx.device.type == "cuda")
    bar = progress_bar(f"{cfg.method} {cfg.data} ipc={cfg.ipc}", total=total, initial=state.step)
    for step in range(state.step + 1, total + 1):
        if param.maybe_grow(step):
            optimizer = method.make_optimizer(ctx, param)
        loss = method.train_step(ctx, param, optimizer, autocast)
        if not math.isfinite(loss):
            last = state.step - state.step % cfg.checkpoint_every
            where = (f"; the last checkpoint is at step {last}" if last else "; no checkpoint yet") if run else ""
            raise TrainingDiverged(
                f"{cfg.method} loss became {loss} at step {step}{where}. "
                "Try a lower --lr or check the data for constant images"
            )
        state.step = step
        state.losses.append(round(loss, 6))
        bar.update(1)
        bar.set_postfix(loss=f"{state.losses[-1]:.4f}")
        if ckpt is not None and dist.is_main() and (step % cfg.checkpoint_every == 0 or step == total):
            save_checkpoint(
                ckpt,
                {
                    "param": param.checkpoint_state(),
                    "optimizer": optimizer.state_dict(),
                    "generator": ctx.generator.get_state(),
                    "step": step,
                    "losses": state.losses,
                },
            )
        if step % max(1, total // 10) == 0:
            log.info("step %d/%d loss %.5f", step, total, state.losses[-1])
    bar.close()
    with torch.no_grad():
        images = param.render().float()
    return images, state


def train_resumable(
    name: str,
    total: int,
    step: Callable[[int], float],
    state: dict,
    checkpoint: Path | None,
    every: int = 100,
    generator: torch.Generator | None = None,
) -> list[float]:
    """A generic resumable loop for model training (generative models, expert networks, ...).

    ``step(i)`` runs training step i (1-based) and returns its loss. ``state`` maps names to objects with
    ``state_dict`` / ``load_state_dict`` (models, optimizers, schedulers); they, the loss history, the step,
    ``generator`` and torch's global RNG are checkpointed atomically to ``checkpoint`` every ``every`` steps and
    at the end, so a killed run resumes where its last checkpoint left it. A non-finite loss stops the run.
    """
    guard = nullcontext()
    if checkpoint is not None and dist.is_main():  # two processes training one model would take turns at its checkpoint
        guard = hold_lock(checkpoint_lock(checkpoint), checkpoint, "wait for it to finish")
    with guard:
        losses: list[float] = []
        start = 0
        found = load_checkpoint(checkpoint) if checkpoint is not None else None
        if found is not None:
            saved, source = found
            try:
                for key, obj in state.items():
                    obj.load_state_dict(saved["state"][key])
                if generator is not None:
                    generator.set_state(saved["generator"])
                torch.set_rng_state(saved["torch_rng"])
                start, losses = int(saved["step"]), list(saved["losses"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise DatadistillError(
                    f"checkpoint {source} cannot be resumed ({exc}); delete it to start over"
                ) from None
            log.info("%s: resumed from %s at step %d", name, source, start)
        bar = progress_bar(name, total=total, initial=start)
        for i in range(start + 1, total + 1):
            loss = step(i)
            if not math.isfinite(loss):
                raise TrainingDiverged(f"{name}: loss became {loss} at step {i}. Try a lower learning rate")
            losses.append(round(loss, 6))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if checkpoint is not None and dist.is_main() and (i % every == 0 or i == total):
                save_checkpoint(
                    checkpoint,
                    {
                        "state": {k: v.state_dict() for k, v in state.items()},
                        "step": i,
                        "losses": losses,
                        "torch_rng": torch.get_rng_state(),
                        "generator": generator.get_state() if generator is not None else None,
                    },
                )
            if i % max(1, total // 10) == 0:
                log.info("%s: step %d/%d loss %.5f", name, i, total, loss)
        bar.close()
        return losses
