"""One distillation from a built run context to its synthetic set: the statistics pass when the method needs it,
the step loop or the selection, and the record of it (set, phases, step values) in the run directory."""

from __future__ import annotations

from ..core import dist
from ..methods.base import Method, RunContext
from ..synset.set import SyntheticSet
from .directory import RunDir
from .loop import LoopState, run_steps
from .timing import PhaseTimer


def execute(method: Method, ctx: RunContext, run: RunDir | None, timer: PhaseTimer) -> SyntheticSet:
    """Distill with ``method`` in ``ctx``; with ``run``, checkpoint into it (resuming what is there) and save the
    set and the ``distill`` section of its metrics. ``timer`` already holds the phases before this one (load)."""
    if method.needs_stats:
        with timer.phase("stats"):
            _ = ctx.stats
    loop: LoopState | None = None
    with timer.phase("distill"):
        if method.stepwise:
            images, loop = run_steps(method, ctx, run)
            synset = ctx.synset(images.cpu(), ctx.class_labels(), steps=method.steps(ctx), **method.synset_meta(ctx))
        else:
            synset = method.select(ctx)
    values = loop.losses if loop is not None else []
    if loop is not None and values:
        # A resumed run timed only the steps after its checkpoint.
        phase = timer.phases["distill"]
        phase["resumed_at_step"] = loop.resumed_at
        if loop.step > loop.resumed_at:
            phase["seconds_per_step"] = round(phase["seconds"] / (loop.step - loop.resumed_at), 4)
    if run is not None and dist.is_main():
        with timer.phase("save"):
            synset.save(run.synset_path)
        run.update_metrics(
            distill={
                "complete": True,
                "method": method.name,
                "phases": timer.phases,
                "loss_first": values[0] if values else None,
                "loss_last": values[-1] if values else None,
                "losses": values,  # the step values, whatever they are: progress_name says
                "progress_name": method.progress_name,
                "step_unit": method.step_unit,
                "processes": dist.world(),
            }
        )
    return synset
