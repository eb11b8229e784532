"""Peak memory and seconds of one SFM (or LGM) step with the synthetic views embedded all at once against
``--view-chunk K`` (activation checkpointing over chunks of K views).

    python benchmarks/view_chunk_memory.py --ipc 10 --crop 224 --chunks 0 10 --out view_chunk_memory.json

Each setting runs in its own process (peak RSS is the process's high-water mark, restarted after one warm-up step)
on scikit-learn's digits: 10 classes x IPC images, ``--augs`` views each, started from random real images.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def one(method: str, ipc: int, crop: int, augs: int, chunk: int, steps: int) -> dict:
    os.environ.setdefault("DATADISTILL_PROGRESS", "0")
    from datadistill import api
    from datadistill.run.timing import peak_rss_mb, reset_peak_rss

    config = api.make_config(method, "digits", ipc, crop=crop, augs=augs, init="real", view_chunk=chunk)
    ctx = api.build_context(config)
    param = ctx.method.init_param(ctx)
    optimizer = ctx.method.make_optimizer(ctx, param)
    ctx.method.train_step(ctx, param, optimizer, contextlib.nullcontext())  # warm-up, not measured
    reset_peak_rss()
    start = time.perf_counter()
    for _ in range(steps):
        ctx.method.train_step(ctx, param, optimizer, contextlib.nullcontext())
    views = 10 * ipc * augs
    return {
        "view_chunk": chunk,
        "views": views,
        "s_per_step": round((time.perf_counter() - start) / steps, 3),
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="sfm", choices=("sfm", "lgm"))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--augs", type=int, default=1)
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 10], help="view chunk sizes (0: all at once)")
    p.add_argument("--steps", type=int, default=2, help="measured steps after one warm-up step")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the chunk a child process measures
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.method, args.ipc, args.crop, args.augs, args.one, args.steps)))
        return
    rows = []
    for chunk in args.chunks:
        cmd = [sys.executable, __file__, "--one", str(chunk)]
        cmd += ["--method", args.method, "--ipc", str(args.ipc), "--crop", str(args.crop), "--augs", str(args.augs)]
        cmd += ["--steps", str(args.steps)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    table = ["| view chunk | views | s/step | peak RSS MB |", "|---|---|---|---|"]
    table += [f"| {r['view_chunk'] or 'all'} | {r['views']} | {r['s_per_step']} | {r['peak_rss_mb']} |" for r in rows]
    print("\n".join(table))
    if args.out is not None:
        settings = {k: v for k, v in vars(args).items() if k not in ("one", "out")}
        args.out.write_text(json.dumps({"settings": settings, "rows": rows, "markdown": "\n".join(table)}, indent=2))


if __name__ == "__main__":
    main()
