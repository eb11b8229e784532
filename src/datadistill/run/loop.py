"""The engine's resumable step loop of the step-wise methods (pixel optimisation, chunked sampling): one
``train_step`` per step, with growth, checkpoints and resume."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core import dist, layout
from ..core.errors import DatadistillError, TrainingDiverged
from ..core.io import (
    load_checkpoint,
    save_checkpoint,
)
from ..core.progress import log, progress_bar
from .directory import RunDir


@dataclass
class LoopState:
    step: int
    losses: list[float]
    resumed_at: int = 0  # the step this process started from (0 unless resumed), so timings count only its steps


def run_steps(method, ctx, run: RunDir | None) -> tuple[torch.Tensor, LoopState]:
    """``method.train_step`` per step, with growth, checkpoints and resume; returns the rendered images.

    A checkpoint holds the parameterisation (or generation state), the optimizer if the method has one, the RNG
    generator state, the step and the history of the step values (``method.progress_name``: a loss, or the
    sampling methods' OT distance), written atomically every ``checkpoint_every`` steps; a killed run loses at
    most that many steps.
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
            if optimizer is not None:
                optimizer.load_state_dict(saved["optimizer"])
            ctx.generator.set_state(saved["generator"])
            state = LoopState(step=int(saved["step"]), losses=list(saved["losses"]), resumed_at=int(saved["step"]))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise DatadistillError(f"checkpoint {source} cannot be resumed ({exc}); delete it to start over") from None
        log.info("resumed from %s at %s %d", source, method.step_unit, state.step)
    autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=cfg.amp and ctx.device.type == "cuda")
    bar = progress_bar(f"{cfg.method} {cfg.data} ipc={cfg.ipc}", total=total, initial=state.step, unit=method.step_unit)
    value_name = method.progress_name
    for step in range(state.step + 1, total + 1):
        if param.maybe_grow(step):
            optimizer = method.make_optimizer(ctx, param)
        loss = method.train_step(ctx, param, optimizer, autocast)
        if not math.isfinite(loss):
            last = state.step - state.step % cfg.checkpoint_every
            unit = method.step_unit
            where = (f"; the last checkpoint is at {unit} {last}" if last else "; no checkpoint yet") if run else ""
            raise TrainingDiverged(
                f"{cfg.method} {value_name} became {loss} at {unit} {step}{where}."
                + (" Try a lower --lr or check the data for constant images" if optimizer is not None else "")
            )
        state.step = step
        state.losses.append(round(loss, 6))
        bar.update(1)
        bar.set_postfix({value_name: f"{state.losses[-1]:.4f}"})
        if ckpt is not None and dist.is_main() and (step % cfg.checkpoint_every == 0 or step == total):
            save_checkpoint(
                ckpt,
                {
                    "param": param.checkpoint_state(),
                    "optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "generator": ctx.generator.get_state(),
                    "step": step,
                    "losses": state.losses,
                },
            )
        if step % max(1, total // 10) == 0:
            log.info("%s %d/%d %s %.5f", method.step_unit, step, total, value_name, state.losses[-1])
    bar.close()
    with torch.no_grad():
        images = param.render().float()
    return images, state
