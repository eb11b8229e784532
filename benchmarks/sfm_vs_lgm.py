"""SFM (A=1) against LGM (A=10), and closed-form against autograd LGM: wall time and peak memory, side by side;
then the head gradient alone, closed form against autograd, at 10, 100 and 1000 classes.

Each configuration runs in a fresh subprocess (same backbone, data, IPC, steps, parameterisation, seed), so
peak memory is its own. Memory is reported two ways: the peak of the whole process (RSS, or CUDA max
allocated on GPU), and the working memory of the distillation loop (peak RSS sampled every 2 ms during the
loop minus RSS just before it; on GPU, CUDA peak minus CUDA memory before the loop). SFM's one-time statistics
pass is cached before the loop and reported separately.

CPU, offline (real weights and data):
    python benchmarks/sfm_vs_lgm.py --data fashion-mnist --backbone efficientnet_lite0 --crop 64 --steps 30
GPU, paper scale for time and memory (ViT-B/16 at 224 px, 100 classes; random-init weights and random images,
which is fine for time and memory, never for accuracy):
    python benchmarks/sfm_vs_lgm.py --synthetic-data --classes 100 --backbone timm:vit_base_patch16_224 \
        --random-init --crop 224 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

CONFIGS = [("sfm", 1, "closed-form"), ("lgm", 10, "closed-form"), ("lgm", 10, "autograd")]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def release_freed_memory() -> None:
    import contextlib
    import ctypes
    import gc

    gc.collect()
    # Without glibc, RSS keeps freed pages and the working-memory figure is a lower bound.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakSampler(threading.Thread):
    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval, self.peak, self.running = interval, 0.0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)


def load(args):
    import torch

    from datadistill.data import RealData, TensorImages, load_dataset
    from datadistill.features.backbones import BACKBONES, Backbone, _timm_features, _timm_generic_spec, load_backbone
    from datadistill.run.device import resolve_device

    device = resolve_device(args.device)
    if args.synthetic_data:
        g = torch.Generator().manual_seed(0)
        n = args.classes * args.per_class
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        targets = torch.arange(args.classes).repeat_interleave(args.per_class)
        split = TensorImages(images, targets)
        data = RealData(
            "random-images",
            [str(c) for c in range(args.classes)],
            split,
            split,
            split,
            32,
            "uniform random uint8 images (timing only)",
        )
    else:
        data = load_dataset(args.data)
    if args.random_init:
        import timm

        arch = args.backbone.removeprefix("timm:")
        known = args.backbone in BACKBONES
        spec = BACKBONES.get(args.backbone) if known else _timm_generic_spec(arch, None, False)
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        backbone = Backbone(spec, model, _timm_features, "RANDOM INIT (timing and memory only)").to(device)
    else:
        backbone = load_backbone(args.backbone, device=device)
    return data, backbone, device


def worker(args) -> dict:
    import torch

    import datadistill as dd
    from datadistill.features.bank import feature_bank

    method, augs, grad = args.worker.split(":")
    data, backbone, device = load(args)
    stats_seconds = None
    if method == "sfm":
        t = time.perf_counter()
        feature_bank(data, backbone, "train", crop=args.crop, device=device)
        stats_seconds = round(time.perf_counter() - t, 2)
    opts = dict(
        ipc=args.ipc,
        dataset=data,
        model=backbone,
        backbone=backbone.name,
        crop=args.crop,
        steps=args.steps,
        augs=int(augs),
        device=str(device),
        checkpoint_every=10**9,
    )
    if method == "lgm":
        opts["grad"] = grad
    dd.distill(method, args.data, **{**opts, "steps": 2})  # warm-up (allocator, kernels) outside the measurement
    release_freed_memory()  # so RSS before the loop does not already hold the warm-up's freed working set
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated() / 2**20
    before = rss_mb()
    sampler = PeakSampler()
    sampler.start()
    t = time.perf_counter()
    dd.distill(method, args.data, **opts)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    sampler.running = False
    sampler.join()
    out = {
        "method": method,
        "augs": int(augs),
        "grad": grad if method == "lgm" else None,
        "seconds": round(seconds, 3),
        "seconds_per_step": round(seconds / args.steps, 4),
        "loop_working_rss_mb": round(max(sampler.peak, rss_mb()) - before, 1),
        "process_peak_rss_mb": round(max(sampler.peak, rss_mb()), 1),
        "stats_pass_seconds": stats_seconds,
        "weights": backbone.weights,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["loop_working_cuda_mb"] = round(out["cuda_peak_mb"] - cuda_before, 1)
    return out


HEAD_SIZES = [(100, 1280, 10), (1000, 768, 100), (3000, 768, 1000)]  # (features, feature dim, classes)


def head_gradient_timings(repeats: int = 4) -> list[dict]:
    """The head gradient alone (forward and the meta-gradient back to the features), closed form vs autograd,
    at the sizes of an IPC-1 step on 10, 100 and 1000 classes: the part of LGM the two forms differ in."""
    import torch
    import torch.nn.functional as F

    from datadistill.methods.lgm import HEAD_GRADIENTS

    rows = []
    for n, dim, classes in HEAD_SIZES:
        g = torch.Generator().manual_seed(0)
        z0, labels = torch.randn(n, dim, generator=g), torch.randint(classes, (n,), generator=g)
        weight, bias = torch.randn(classes, dim, generator=g) * 0.01, torch.zeros(classes)
        target = torch.randn(classes * dim + classes, generator=g)
        row = {"features": n, "dim": dim, "classes": classes}
        for name, head_gradient in HEAD_GRADIENTS.items():
            times = []
            for _ in range(repeats):
                z = z0.clone().requires_grad_(True)
                t = time.perf_counter()
                (1 - F.cosine_similarity(head_gradient(z, labels, weight, bias), target, dim=0)).backward()
                times.append(time.perf_counter() - t)
            row[f"{name}_ms"] = round(1000 * min(times[1:]), 2)  # first call warms up
        row["autograd_over_closed_form"] = round(row["autograd_ms"] / row["closed-form_ms"], 2)
        rows.append(row)
        print(json.dumps(row))
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="auto")
    p.add_argument("--synthetic-data", action="store_true", help="random images instead of a dataset (timing)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--random-init", action="store_true", help="random-init backbone weights (timing and memory)")
    p.add_argument("--out", default="benchmarks/results/sfm_vs_lgm.json")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("DATADISTILL_PROGRESS", "0")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    rows = []
    for method, augs, grad in CONFIGS:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", f"{method}:{augs}:{grad}"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    sfm, lgm, lgm_auto = rows
    ratios = {
        "lgm10_over_sfm1_time": round(lgm["seconds"] / sfm["seconds"], 2),
        "lgm10_over_sfm1_loop_memory": round(lgm["loop_working_rss_mb"] / max(sfm["loop_working_rss_mb"], 1e-9), 2),
        "lgm10_over_sfm1_process_peak": round(lgm["process_peak_rss_mb"] / sfm["process_peak_rss_mb"], 2),
        "autograd_over_closed_form_time": round(lgm_auto["seconds"] / lgm["seconds"], 2),
        "autograd_over_closed_form_loop_memory": round(
            lgm_auto["loop_working_rss_mb"] / max(lgm["loop_working_rss_mb"], 1e-9), 2
        ),
    }
    if "cuda_peak_mb" in sfm:
        ratios["lgm10_over_sfm1_cuda_peak"] = round(lgm["cuda_peak_mb"] / sfm["cuda_peak_mb"], 2)
        ratios["lgm10_over_sfm1_cuda_loop"] = round(lgm["loop_working_cuda_mb"] / sfm["loop_working_cuda_mb"], 2)
    result = {
        "args": {k: v for k, v in vars(args).items() if k != "worker"},
        "runs": rows,
        "ratios": ratios,
        "head_gradient_only": head_gradient_timings(),
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
