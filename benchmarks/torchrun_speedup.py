"""Seconds per step with one process against N processes under torchrun (gloo, CPU): the statistics pass, and
SFM, LGM, DM and TGDD steps, each configuration with cores / processes threads per process.

    python benchmarks/torchrun_speedup.py --data mnist-5k --crop 64 --resolution 32 --steps 5
    python benchmarks/torchrun_speedup.py --data /path/to/imagefolder --procs 4 --cores 16

Every launch gets a fresh cache, so the statistics pass is cold; TGDD's experts are trained once beforehand (in
this process) and read by every launch. Steps are timed on rank 0 after one warm-up step, with the parameters
grown to full size (no pyramid growth while timing). The data: a registry name, ``imagefolder:PATH`` or a
folder; the default is MNIST-5k, upscaled by the crop (SFM, LGM) and ``--resolution`` (DM, TGDD).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("stats", "sfm", "lgm", "dm", "tgdd")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mnist-5k", help="registry name, imagefolder:PATH or an ImageFolder folder")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--procs", type=int, default=2, help="processes of the torchrun launch compared with one")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="threads in all: cores / processes each")
    p.add_argument("--steps", type=int, default=5, help="timed steps per method (after one warm-up step)")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--crop", type=int, default=64, help="SFM / LGM backbone input size")
    p.add_argument("--resolution", type=int, default=32, help="DM / TGDD image size")
    p.add_argument("--batch-real", type=int, default=None, help="DM / TGDD real images per class (their defaults)")
    p.add_argument("--num-experts", type=int, default=2)
    p.add_argument("--expert-epochs", type=int, default=2)
    p.add_argument("--expert-epoch-images", type=int, default=2000)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # result file of a launched process
    p.add_argument("--experts", default=None, help=argparse.SUPPRESS)  # the trained experts' folder
    args = p.parse_args()
    if os.path.isdir(args.data):
        args.data = f"imagefolder:{os.path.abspath(args.data)}"
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    return args


def expert_options(args: argparse.Namespace) -> dict:
    return dict(
        num_experts=args.num_experts,
        expert_epochs=args.expert_epochs,
        expert_epoch_images=args.expert_epoch_images,
        expert_val_every=0,
    )


def method_options(name: str, args: argparse.Namespace) -> dict:
    if name in ("sfm", "lgm"):
        return dict(backbone=args.backbone, crop=args.crop, grow_every=1, steps=args.steps)
    real = {} if args.batch_real is None else {"batch_real": args.batch_real}
    options = dict(resolution=args.resolution, steps=args.steps, **real)
    return {**options, **expert_options(args)} if name == "tgdd" else options


def time_steps(method, ctx, steps: int) -> float:
    """Mean seconds of ``steps`` train steps after one warm-up step, the parameters grown to full size."""
    from datadistill.core import dist

    param = method.init_param(ctx).to(ctx.device)
    for step in range(2, 64):
        param.maybe_grow(step)
    optimizer = method.make_optimizer(ctx, param)
    method.train_step(ctx, param, optimizer, contextlib.nullcontext())
    dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        method.train_step(ctx, param, optimizer, contextlib.nullcontext())
    return (time.perf_counter() - start) / steps


def worker(args: argparse.Namespace) -> None:
    import torch

    import datadistill as dd
    from datadistill.api import build_context, make_config
    from datadistill.core import dist
    from datadistill.data import load_dataset
    from datadistill.features.backbones import load_backbone
    from datadistill.methods import get_method
    from datadistill.methods.tgdd import TGDD
    from datadistill.training.experts import TrajectoryStore

    dist.init_from_env()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    data, backbone = load_dataset(args.data), load_backbone(args.backbone)
    seconds = {}
    if "stats" in args.methods:
        dist.barrier()
        start = time.perf_counter()
        dd.compute_stats(data, backbone, crop=args.crop)
        seconds["stats"] = time.perf_counter() - start
    for name in args.methods:
        if name == "stats":
            continue
        ctx = build_context(make_config(name, args.data, args.ipc, **method_options(name, args)), data, backbone)
        method = TGDD(store=TrajectoryStore.load(args.experts)) if name == "tgdd" else get_method(name)
        seconds[name] = time_steps(method, ctx, args.steps)
    if dist.is_main():
        Path(args.worker).write_text(json.dumps({"world": dist.world(), "seconds": seconds}))


def launch(args: argparse.Namespace, procs: int, tmp: Path, experts: str | None) -> dict:
    result = tmp / f"result-{procs}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
    cmd += [__file__, "--worker", str(result), "--data", args.data, "--methods", ",".join(args.methods)]
    for flag in ("steps", "ipc", "backbone", "crop", "resolution", "num_experts", "expert_epochs"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cmd += ["--expert-epoch-images", str(args.expert_epoch_images)]
    cmd += [] if args.batch_real is None else ["--batch-real", str(args.batch_real)]
    cmd += [] if experts is None else ["--experts", experts]
    threads = str(max(1, args.cores // procs))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "DATADISTILL_PROGRESS": "0"}
    env["DATADISTILL_CACHE"] = str(tmp / f"cache-{procs}")  # cold statistics pass in every launch
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the {procs}-process launch failed:\n{done.stderr[-4000:]}")
    return json.loads(result.read_text())


def train_experts_once(args: argparse.Namespace, cache: Path) -> str:
    import torch

    from datadistill.data import load_dataset
    from datadistill.training.experts import ExpertOptions, train_experts

    os.environ["DATADISTILL_CACHE"] = str(cache)
    options = ExpertOptions(**expert_options(args), expert_resolution=args.resolution)
    return str(train_experts(load_dataset(args.data), options, torch.device("cpu")))


def main() -> None:
    args = parse()
    os.environ.setdefault("DATADISTILL_PROGRESS", "0")
    if args.worker:
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        experts = train_experts_once(args, tmp / "experts") if "tgdd" in args.methods else None
        one, many = launch(args, 1, tmp, experts), launch(args, args.procs, tmp, experts)
    rows = [
        {
            "method": name,
            "seconds_1": round(one["seconds"][name], 4),
            f"seconds_{args.procs}": round(many["seconds"][name], 4),
            "speedup": round(one["seconds"][name] / many["seconds"][name], 3),
        }
        for name in args.methods
    ]
    threads = max(1, args.cores // args.procs)
    print(f"{args.data}, IPC {args.ipc}: 1 process x {args.cores} threads vs {args.procs} x {threads} (gloo, CPU)")
    print(f"{'':8s} {'1 proc s':>10s} {f'{args.procs} procs s':>10s} {'speedup':>8s}")
    for r in rows:
        unit = "pass" if r["method"] == "stats" else "step"
        print(
            f"{r['method']:8s} {r['seconds_1']:10.4f} {r[f'seconds_{args.procs}']:10.4f} {r['speedup']:8.2f}  "
            f"(s per {unit})"
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"args": {k: v for k, v in vars(args).items() if k not in ("worker", "experts")}, "rows": rows},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
