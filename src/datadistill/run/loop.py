"""The shared optimisation loop of the pixel-space methods: one ``train_step`` per step, with growth, checkpoints
and resume."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core import dist
from ..core.errors import DatadistillError, TrainingDiverged
from ..core.io import (
    load_checkpoint,
    save_checkpoint,
)
from ..core.progress import log, progress_bar
from . import layout
from .directory import RunDir


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
    ckpt = run.checkpoints / layout.LAST_CHECKPOINT if run else None
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
