"""torch.distributed when the toolkit runs under ``torchrun`` (or inside an initialised process group); the same
code runs as one process without a launcher, where every helper here is a no-op.

Conventions: every rank holds the same parameters and draws the same random numbers (one seeded generator), so
work is split by *slicing* (views, real batches, batches of a statistics pass, evaluation seeds) and results are
gathered; only rank 0 writes files. Gathering features keeps autograd (``torch.distributed.nn``), and
``average_gradients`` after backward makes every rank's update the single-process one.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as tdist


def init_from_env() -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    if tdist.is_available() and not tdist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        tdist.init_process_group("nccl" if cuda else "gloo")


_alone = False  # inside ``main_alone``: this process acts as if it were the only one


def active() -> bool:
    return not _alone and tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def world() -> int:
    return tdist.get_world_size() if active() else 1


def rank() -> int:
    return tdist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        tdist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills a cache); the others run it after, finding the cache full."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


@contextmanager
def main_alone() -> Iterator[None]:
    """Rank 0 runs the block as a single process (no collectives: e.g. training a model into the cache, whose
    statistics passes would otherwise wait for the other ranks), then the others run it, finding the cache full
    (or, without a shared cache folder, training their own copy). Nested blocks run plainly."""
    global _alone
    if not active():
        yield
        return
    main = is_main()
    if not main:
        tdist.barrier()
    _alone = True
    try:
        yield
    finally:
        _alone = False
        if main:
            tdist.barrier()


Fn = TypeVar("Fn", bound=Callable)


def on_main_alone_first(fn: Fn) -> Fn:
    """Decorator: ``fn`` runs under ``main_alone`` (model trainers that fill a cache)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with main_alone():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def part(n: int, of_rank: int | None = None) -> slice:
    """A rank's contiguous share of n items (the first ranks take one more when n is not divisible)."""
    r = rank() if of_rank is None else of_rank
    size, extra = divmod(n, world())
    start = r * size + min(r, extra)
    return slice(start, start + size + (r < extra))


def gather_parts(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's ``part(n)`` rows in rank order (n rows on every rank), keeping autograd."""
    if not active():
        return local
    size = -(-n // world())
    padded = torch.cat([local, local.new_zeros(size - len(local), *local.shape[1:])]) if len(local) < size else local
    if local.requires_grad:
        from torch.distributed.nn.functional import all_gather

        pieces = all_gather(padded)
    else:
        pieces = [torch.empty_like(padded) for _ in range(world())]
        tdist.all_gather(pieces, padded.contiguous())
    counts = [len(range(n)[part(n, r)]) for r in range(world())]
    return torch.cat([p[:c] for p, c in zip(pieces, counts, strict=True)])


def class_share(labels: torch.Tensor) -> torch.Tensor:
    """Row indices of ``labels`` whose class is in this rank's share of the classes present (generation shards
    classes, so per-class guidance never spans processes); every row as one process."""
    if not active():
        return torch.arange(len(labels))
    classes = labels.unique()
    return torch.nonzero(torch.isin(labels.cpu(), classes[part(len(classes))].cpu())).flatten()


def gather_rows(local: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """The n-row tensor whose ``rows`` (per rank, as from ``class_share``) each rank computed as ``local``."""
    if not active():
        return local
    out = None
    for their_rows, theirs in all_gather_objects((rows, local.detach().cpu())):
        if out is None:
            out = theirs.new_zeros(n, *theirs.shape[1:])
        out[their_rows] = theirs
    return out.to(local.device)


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Mean of every parameter's gradient over ranks. With features gathered by ``gather_parts`` (whose backward
    sums the identical upstream gradients of all ranks) this restores the single-process gradient."""
    if not active():
        return
    for p in params:
        if p.grad is not None:
            tdist.all_reduce(p.grad, op=tdist.ReduceOp.AVG if _has_avg() else tdist.ReduceOp.SUM)
            if not _has_avg():
                p.grad /= world()


def _has_avg() -> bool:
    return tdist.get_backend() == "nccl"


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        tdist.all_reduce(tensor)
    return tensor


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        total = local.detach().clone()
        tdist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, upstream: torch.Tensor) -> torch.Tensor:
        # Every rank holds the same upstream gradient: the sum's gradient over ranks is world times it.
        return upstream * world()


def sum_over_ranks(local: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's ``local`` on every rank, keeping autograd: a loss that is a sum over classes, each
    rank computing its share of the classes. As with ``gather_parts``, ``average_gradients`` after backward then
    gives every rank the single-process gradient."""
    return _SumOverRanks.apply(local) if active() else local


def share_rows_(tensor: torch.Tensor, mine: slice) -> torch.Tensor:
    """In place, on every rank: rows ``mine`` (along dim 0) from this rank, every other row from the rank whose
    ``mine`` holds it (the ranks' slices must cover the tensor without overlap). Exact: a sum with zeros."""
    if active():
        with torch.no_grad():
            theirs = torch.ones(len(tensor), dtype=torch.bool, device=tensor.device)
            theirs[mine] = False
            tensor[theirs] = 0
            tdist.all_reduce(tensor)
    return tensor


def all_gather_objects(obj: object) -> list[object]:
    if not active():
        return [obj]
    out: list[object] = [None] * world()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
