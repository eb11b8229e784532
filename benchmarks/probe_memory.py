"""Peak memory of linear-probe evaluations at ImageNet-100 scale: a random 100-class, IPC-10 synthetic set at
256 px (1000 images), 100 AugBasic views per image, through EfficientNet-Lite0, evaluated by the linear probe
and by CI (classifier inheritance: golden classifier + projector).

    PYTHONPATH=src python benchmarks/probe_memory.py                # crop 32: the quick check
    PYTHONPATH=src python benchmarks/probe_memory.py --crop 224     # the papers' input size

The set is saved, and each protocol evaluates the saved folder in a fresh process, as ``datadistill eval`` does:
its peak is that whole process's resident high-water mark (imports, model, loading the set, the evaluation). The
real data is fake and small (random uint8 images of the same 100 classes): it supplies the test and validation
features and the golden classifier's training, all tiny here, so the peak is that of evaluating the synthetic set.
The script prints each protocol's peak, the peak after the set was loaded (the evaluation's own phase), the memory
resident before the evaluation (imports, model, fake data), its wall time, and an account of the large
allocations. A probe draws at most one view per epoch, so ``--epochs`` below ``--views`` lowers the views too: keep
epochs >= views to measure the 100-view memory (the probe's epochs themselves are cheap; the view pass through the
backbone is the cost). Timings on a CPU shared with other jobs are not comparable between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def fake_data(classes: int, per_class: int, size: int, seed: int = 0):
    """Random uint8 images of ``classes`` classes: ``per_class`` a class in train, a fifth of that in val and test."""
    from datadistill.data import RealData, TensorImages

    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> TensorImages:
        images = torch.randint(0, 256, (classes * n, 3, size, size), dtype=torch.uint8, generator=g)
        return TensorImages(images, torch.arange(classes).repeat_interleave(n))

    small = max(1, per_class // 5)
    names = class_names(classes)
    return RealData("probe-memory-fake", names, split(per_class), split(small), split(small), size, "random uint8")


def class_names(classes: int) -> list[str]:
    return [f"class{c:03d}" for c in range(classes)]


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def evaluate_one(args: argparse.Namespace) -> dict:
    """One protocol on the saved set, in this (fresh) process: its whole-process resident peak and wall time."""
    import datadistill as dd
    from datadistill.features.backbones import load_backbone
    from datadistill.run.device import resolve_device
    from datadistill.run.timing import process_peak_rss_mb

    device = resolve_device(args.device)
    backbone = load_backbone("efficientnet_lite0", device=device)
    data = fake_data(args.classes, args.real_per_class, 32)
    before = rss_mb()
    extra = {} if args.child == "linear-probe" else {"full_epochs": args.full_epochs}
    start = time.perf_counter()
    result = dd.evaluate(
        args.set,
        protocol=args.child,
        data=data,
        backbone=backbone,
        crop=args.crop,
        seeds=args.seeds,
        epochs=args.epochs,
        views=args.views,
        device=str(device),
        **extra,
    )
    return {
        "protocol": args.child,
        "peak_rss_mb": process_peak_rss_mb(),
        # from the end of loading the set (the evaluation's own phase) to the end
        "evaluation_peak_rss_mb": result.details["phases"]["eval"]["peak_rss_mb"],
        "resident_before_mb": round(before, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "views": result.details["views"],
        "test_acc": result.test_acc,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crop", type=int, default=32, help="backbone input size (224: the papers')")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--resolution", type=int, default=256, help="synthetic image size")
    p.add_argument("--views", type=int, default=100)
    p.add_argument("--epochs", type=int, default=100, help="probe epochs (views are capped at epochs)")
    p.add_argument("--full-epochs", type=int, default=10, help="golden classifier epochs (CI)")
    p.add_argument("--real-per-class", type=int, default=10, help="fake real training images per class")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--protocols", default="linear-probe,ci")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: evaluate this protocol in this process
    p.add_argument("--set", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("DATADISTILL_CACHE", tempfile.mkdtemp(prefix="probe-memory-cache-"))
    os.environ.setdefault("DATADISTILL_PROGRESS", "0")
    if args.child:
        print(json.dumps(evaluate_one(args)))
        return

    from datadistill.evaluate.linear_probe import FEATURE_DTYPE
    from datadistill.synset.set import SyntheticSet

    n = args.classes * args.ipc
    folder = Path(tempfile.mkdtemp(prefix="probe-memory-set-"))
    images = torch.rand(n, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(args.classes).repeat_interleave(args.ipc)
    meta = {"backbone": "efficientnet_lite0", "crop": args.crop}
    SyntheticSet(images, labels, class_names(args.classes), meta).save(folder)
    del images
    runs = []
    for protocol in args.protocols.split(","):  # each in a fresh process: its peak is the evaluation's alone
        command = [sys.executable, __file__, *sys.argv[1:], "--child", protocol, "--set", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
        if done.returncode != 0:
            raise SystemExit(f"{protocol} failed:\n{done.stderr[-3000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)

    views, feat_dim = runs[0]["views"], 1280
    itemsize = torch.empty(0, dtype=FEATURE_DTYPE).element_size()
    account = {
        "synthetic_images_mb": round(n * 3 * args.resolution**2 * 4 / 2**20, 1),
        "view_features_mb": round(views * n * feat_dim * itemsize / 2**20, 1),
        "view_features": f"{views} views x {n} images x {feat_dim} features x {itemsize} bytes",
        "view_batch_pixels_mb": round(100 * 3 * args.resolution**2 * 4 / 2**20, 1),
    }
    summary = {"settings": {k: v for k, v in vars(args).items() if k not in ("child", "set", "out")}, "runs": runs}
    summary["account"] = account
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
