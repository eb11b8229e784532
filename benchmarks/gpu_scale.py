"""On a CUDA GPU, with a ViT-B/14 at 224 px as the toolkit's backbone (timm ``vit_base_patch14_dinov2`` built with
random weights: speed and memory only, never accuracy): the statistics pass over a JPEG folder against the pure
forward, and SFM's and LGM's seconds per step and peak CUDA memory at several class counts (default 100 and 1000),
under bf16 autocast as the toolkit's optimisation loop runs on CUDA.

    python benchmarks/gpu_scale.py --out benchmarks/results/gpu_scale.json                 # CUDA, full size
    python benchmarks/gpu_scale.py --device cpu --tiny --out /tmp/gpu_scale.json           # smoke: tiny ViT, CPU

Per class count C (``--classes``):
  folder     C classes x ``--per-class`` 500x375 JPEGs (imagenet_folder.py; the toolkit holds 10 % out as the
             validation and 10 % as the test split), built once in ``--folder`` and reused, not timed
  stats      the statistics pass over the train split (``feature_bank``, an empty cache, ``--workers`` loader
             processes, ``--batch-size``); on CUDA an all-JPEG folder is decoded on the GPU (nvJPEG)
  sfm        ``--steps`` SFM steps at IPC ``--ipc`` with ``--sfm-augs`` views (C x IPC x A images through the
             backbone, forward and backward), after one warm-up step, the pyramid grown to full size
  lgm        the same for LGM with ``--lgm-augs`` views; its real batch is IPC x A x C train images a step (at most
             the train split), decoded from the JPEGs as the toolkit reads them (CPU workers)
Once: the pure forward of ``--forward-images`` uint8 images at the crop, converted on the device as the pass
converts them, in float32 (as the pass runs) and under bf16 autocast (as the loop runs).
Each phase is timed with the device's queued work finished before the clock is read; peak CUDA memory is
``torch.cuda.max_memory_allocated`` restarted at each phase (``reset_peak_memory_stats``), and peak RSS the process's
resident high-water mark restarted likewise (the toolkit's ``PhaseTimer``). A step that runs out of CUDA memory is
reported as such (with the peak reached) and the next configuration runs.

``--tiny`` swaps in a 2-block ViT at 28 px, 3 and 5 classes of 4 images, 2 steps and LGM with 2 views: a smoke
test of the script on any device, which measures nothing.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

import torch
from imagenet_folder import build_folder, cores
from scale_tools import markdown_table, phase, synchronize, write_out

ARCH = "vit_base_patch14_dinov2"
TINY_VIT = {"depth": 2, "embed_dim": 48, "num_heads": 2}
TINY = {"crop": 28, "classes": [3, 5], "per_class": 4, "steps": 2, "lgm_augs": 2, "forward_images": 32}
WEIGHTS = "random init (speed and memory only)"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (with --tiny: a smoke test)")
    p.add_argument("--tiny", action="store_true", help="tiny ViT and sizes: checks the script, measures nothing")
    p.add_argument("--arch", default=ARCH, help="timm ViT built with random weights")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--per-class", type=int, default=20, help="JPEGs per class (80 %% of them train)")
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--sfm-augs", type=int, default=1, help="SFM's views per step (its default)")
    p.add_argument("--lgm-augs", type=int, default=10, help="LGM's views per step (its default; the paper: 3 on 1k)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per method, after one warm-up step")
    p.add_argument("--forward-images", type=int, default=2000, help="images of the pure forward")
    p.add_argument("--batch-size", type=int, default=100, help="the pass's and the forward's batch (toolkit: 100)")
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: one per core)")
    p.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "datadistill-gpu-scale")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    if args.per_class < 3 or args.steps < 1 or min(args.classes) < 2:
        p.error("--per-class must be at least 3, --steps at least 1 and every --classes at least 2")
    return args


def random_vit(arch: str, crop: int, device: torch.device, tiny: bool):
    """A timm ViT with random weights as a toolkit ``Backbone`` (the registry loads pretrained weights only)."""
    import timm

    from datadistill.features.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneSpec, _timm_features

    model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=crop, **(TINY_VIT if tiny else {}))
    name = f"timm:{arch}" + ("-tiny" if tiny else "")
    spec = BackboneSpec(
        name,
        "timm-vit",
        crop,
        model.num_features,
        IMAGENET_MEAN,
        IMAGENET_STD,
        WEIGHTS,
        lambda weights, allow_hub: (model, _timm_features, WEIGHTS),
        offline=True,
        description=f"timm {arch}, {WEIGHTS}",
    )
    return Backbone(spec, model, _timm_features, WEIGHTS).to(device)


def forward_rates(backbone, args: argparse.Namespace, device: torch.device, timer) -> dict:
    """Pure forward images/s on uint8 batches already on the device, float32 and under bf16 autocast."""
    from datadistill.data import as_float

    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (args.batch_size, 3, args.crop, args.crop), dtype=torch.uint8, generator=g)
    batch = batch.to(device)
    out = {}
    for name, autocast in (("float32", False), ("bf16 autocast", True)):
        context = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast and device.type == "cuda")
        with torch.inference_mode(), context:
            backbone(as_float(batch))  # warm-up
            with phase(timer, f"forward {name}") as entry:
                for first in range(0, args.forward_images, args.batch_size):
                    backbone(as_float(batch[: min(args.batch_size, args.forward_images - first)]))
        entry["images_per_s"] = round(args.forward_images / entry["seconds"], 1)
        out[name] = entry
    return out


def loop_autocast(ctx):
    """The autocast the toolkit's optimisation loop (``optimise`` in ``run/loop.py``) runs its steps under."""
    device = ctx.device
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.config.amp and device.type == "cuda")


def time_method(name: str, classes: int, data, backbone, args: argparse.Namespace, timer) -> dict:
    """``--steps`` steps of SFM or LGM after one warm-up step, the pyramid grown to full size first."""
    from datadistill.api import build_context, make_config
    from datadistill.methods import get_method

    augs = args.sfm_augs if name == "sfm" else args.lgm_augs
    config = make_config(
        name, data.name, args.ipc, backbone=backbone.name, crop=args.crop, augs=augs, grow_every=1, device=args.device
    )
    ctx = build_context(config, data, backbone)
    method = get_method(name)
    entry = {"views_per_step": classes * args.ipc * augs}
    try:
        if ctx.device.type == "cuda":  # the peak of this configuration alone, also when it runs out of memory
            torch.cuda.reset_peak_memory_stats(ctx.device)
        param = method.init_param(ctx).to(ctx.device)
        while param.maybe_grow(len(param.levels) + 1):  # grow_every 1: every call past step 1 adds a level
            pass
        optimizer = method.make_optimizer(ctx, param)
        if name == "lgm":
            entry["real_images_per_step"] = min(method.real_batch, len(data.train))
        method.train_step(ctx, param, optimizer, loop_autocast(ctx))  # warm-up
        with phase(timer, f"{name} C={classes}") as timed:
            for _ in range(args.steps):
                method.train_step(ctx, param, optimizer, loop_autocast(ctx))
        entry.update(timed, seconds_per_step=round(timed["seconds"] / args.steps, 4))
    except torch.OutOfMemoryError:
        entry["error"] = "out of CUDA memory"
        entry["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(ctx.device) / 2**20, 1)
    return entry


def release(device: torch.device) -> None:
    """Give the last configuration's memory back (its tensors died with its frame) before the next one runs."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_classes(classes: int, backbone, args: argparse.Namespace, device: torch.device, timer) -> dict:
    from datadistill.data import load_dataset
    from datadistill.features.bank import feature_bank

    folder = build_folder(args.folder / f"{classes}x{args.per_class}", classes, {"train": classes * args.per_class})
    data = load_dataset(f"imagefolder:{folder}", workers=args.workers)
    with phase(timer, f"stats C={classes}") as stats:
        bank = feature_bank(
            data, backbone, "train", crop=args.crop, batch_size=args.batch_size, device=device, num_workers=args.workers
        )
    stats.update(images=len(bank.labels), images_per_s=round(len(bank.labels) / stats["seconds"], 1))
    out = {"classes": classes, "train_images": len(data.train), "stats": stats}
    for name in ("sfm", "lgm"):
        out[name] = time_method(name, classes, data, backbone, args, timer)
        release(device)
    return out


def table(results: dict) -> str:
    forward = results["forward"]["float32"]["images_per_s"]
    rows = []
    for r in results["by_classes"]:
        cells = [r["classes"], r["stats"]["images_per_s"], round(r["stats"]["images_per_s"] / forward, 2)]
        for name in ("sfm", "lgm"):
            m = r[name]
            cells += [m.get("seconds_per_step", m.get("error")), m.get("peak_cuda_mb"), m.get("peak_rss_mb")]
        cells.append(r["lgm"].get("real_images_per_step"))
        rows.append(cells)
    header = ["C", "stats img/s", "stats / forward", "SFM s/step", "SFM peak CUDA MB", "SFM peak RSS MB"]
    header += ["LGM s/step", "LGM peak CUDA MB", "LGM peak RSS MB", "LGM real images/step"]
    return markdown_table(header, rows)


def main() -> None:
    args = parse()
    os.environ.setdefault("DATADISTILL_PROGRESS", "0")
    from datadistill.run.device import resolve_device
    from datadistill.run.timing import PhaseTimer

    device = resolve_device(args.device)
    backbone = random_vit(args.arch, args.crop, device, args.tiny)
    timer = PhaseTimer(device)
    with tempfile.TemporaryDirectory(prefix="datadistill-gpu-scale-") as cache:
        os.environ["DATADISTILL_CACHE"] = cache  # an empty feature cache: the passes are cold
        start = time.perf_counter()
        results = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "backbone": {"arch": args.arch, "name": backbone.name, "feat_dim": backbone.feat_dim, "weights": WEIGHTS},
            "forward": forward_rates(backbone, args, device, timer),
            "by_classes": [measure_classes(c, backbone, args, device, timer) for c in args.classes],
        }
        synchronize(device)
        results["wall_seconds"] = round(time.perf_counter() - start, 1)
    markdown = table(results)
    forward = results["forward"]
    model = f"{args.arch}{' (tiny)' if args.tiny else ''} at {args.crop} px, {WEIGHTS}"
    print(
        f"\n{results['device']}, {model}: pure forward {forward['float32']['images_per_s']} img/s float32, "
        f"{forward['bf16 autocast']['images_per_s']} img/s bf16"
    )
    print(markdown)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    write_out(args.out, {"settings": settings, "cores": cores(), **results, "markdown": markdown})


if __name__ == "__main__":
    main()
