"""Seconds per distillation iteration of DM and TGDD on CPU, and TGDD with its trajectories held in memory
(``TrajectoryStore``, ours) vs re-read from disk every iteration (the official code: per-epoch checkpoint files,
two networks built and ``torch.load`` + ``load_state_dict`` per iteration), measured side by side on the same
experts, data and seeds.

    python benchmarks/trajectory_memory_vs_disk.py --data fashion-mnist --ipc 10 --iters 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch

from datadistill.api import build_context, make_config
from datadistill.data import load_dataset
from datadistill.methods.dm import DM
from datadistill.methods.tgdd import TGDD
from datadistill.models.architectures import build_model
from datadistill.run.device import resolve_device
from datadistill.run.timing import process_peak_rss_mb
from datadistill.training.experts import ExpertOptions, TrajectoryStore, train_experts


class DiskTrajectories:
    """The official code's access pattern behind the ``TrajectoryStore`` interface: one file per (expert, epoch),
    and per iteration two freshly built networks loaded from two files."""

    def __init__(self, store: TrajectoryStore, folder: Path, device: torch.device):
        self.spec, self.norm, self.epochs, self.num_experts = store.spec, store.norm, store.epochs, store.num_experts
        self.folder, self.device = folder, device
        for i in range(store.num_experts):
            for j in range(store.epochs + 1):
                torch.save(
                    {k: v.cpu().clone() for k, v in store.params(i, j).items()}, folder / f"expert{i}_epoch{j}.pt"
                )
        self.model = store.model
        self.sample_indices = store.sample_indices
        self.run = store.run

    def _load(self, i: int, j: int) -> dict[str, torch.Tensor]:
        net = build_model(self.spec).to(self.device)
        net.load_state_dict(
            torch.load(self.folder / f"expert{i}_epoch{j}.pt", weights_only=True, map_location=self.device)
        )
        return dict(net.named_parameters())

    def sample_pair(self, region: int, generator: torch.Generator):
        i, j, j2 = self.sample_indices(region, generator)
        return self._load(i, j2), self._load(i, j)  # the official code loads the later model first


def time_steps(method, ctx, iters: int) -> tuple[float, list[float]]:
    param = method.init_param(ctx)
    optimizer = method.make_optimizer(ctx, param)
    method.train_step(ctx, param, optimizer, contextlib.nullcontext())  # warm-up (compiles the real-image pass)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        method.train_step(ctx, param, optimizer, contextlib.nullcontext())
        times.append(time.perf_counter() - start)
    return sum(times) / len(times), times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--pairs", type=int, default=200, help="sample_pair calls timed alone")
    p.add_argument("--batch-real", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-experts", type=int, default=3)
    p.add_argument("--expert-epochs", type=int, default=8)
    p.add_argument("--expert-epoch-images", type=int, default=4000, help="0: the whole train split per epoch")
    p.add_argument("--expert-val-every", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    experts = dict(
        num_experts=args.num_experts,
        expert_epochs=args.expert_epochs,
        expert_epoch_images=args.expert_epoch_images or None,
        expert_val_every=args.expert_val_every,
    )
    device = resolve_device("auto")
    folder = train_experts(data, ExpertOptions(**experts), device)
    start = time.perf_counter()
    memory = TrajectoryStore.load(folder, device)
    load_seconds = time.perf_counter() - start
    bytes_held = sum(t.numel() * t.element_size() for traj in memory.trajectories for t in traj.values())
    result = {
        "args": vars(args),
        "threads": torch.get_num_threads(),
        "store_load_seconds": round(load_seconds, 3),
        "store_megabytes": round(bytes_held / 2**20, 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        disk = DiskTrajectories(memory, Path(tmp), device)
        g = torch.Generator().manual_seed(0)
        for name, store in (("memory", memory), ("disk", disk)):
            store.sample_pair(7, g)
            start = time.perf_counter()
            for _ in range(args.pairs):
                store.sample_pair(7, g)
            result[f"sample_pair_ms_{name}"] = round(1000 * (time.perf_counter() - start) / args.pairs, 3)
        common = dict(steps=args.iters, batch_real=args.batch_real, **experts)
        for name, store in (("memory", memory), ("disk", disk)):
            ctx = build_context(make_config("tgdd", args.data, ipc=args.ipc, **common), data)
            mean, times = time_steps(TGDD(store=store), ctx, args.iters)
            result[f"tgdd_seconds_per_iter_{name}"] = round(mean, 3)
            result[f"tgdd_times_{name}"] = [round(t, 3) for t in times]
        ctx = build_context(
            make_config("dm", args.data, ipc=args.ipc, steps=args.iters, batch_real=args.batch_real), data
        )
        mean, times = time_steps(DM(), ctx, args.iters)
        result["dm_seconds_per_iter"] = round(mean, 3)
        result["dm_times"] = [round(t, 3) for t in times]
    result["pair_speedup"] = round(result["sample_pair_ms_disk"] / max(result["sample_pair_ms_memory"], 1e-6), 1)
    result["tgdd_iter_speedup"] = round(
        result["tgdd_seconds_per_iter_disk"] / result["tgdd_seconds_per_iter_memory"], 3
    )
    result["peak_rss_mb"] = process_peak_rss_mb()
    print(json.dumps({k: v for k, v in result.items() if "times" not in k}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
