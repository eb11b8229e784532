"""A generic resumable training loop for the models the toolkit trains itself (generative models, expert networks)."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from ..core import dist
from ..core.errors import DatadistillError, TrainingDiverged
from ..core.io import (
    checkpoint_lock,
    hold_lock,
    load_checkpoint,
    save_checkpoint,
)
from ..core.progress import log, progress_bar


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
