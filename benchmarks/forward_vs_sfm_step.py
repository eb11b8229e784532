"""Backbone pure-forward images/s and SFM seconds per step at a given crop (no data needed, no accuracy).

python benchmarks/forward_vs_sfm_step.py --crop 224 --steps 5
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--augs", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=100)
    args = p.parse_args()

    from datadistill.data.augment import StandardAugment
    from datadistill.features.backbones import load_backbone
    from datadistill.run.device import resolve_device
    from datadistill.run.timing import process_peak_rss_mb
    from datadistill.synset.params import PyramidParam

    device = resolve_device("auto")
    bb = load_backbone(args.backbone, device=device)
    x = torch.rand(args.batch, 3, args.crop, args.crop, device=device)
    with torch.inference_mode():
        bb(x)
        t = time.perf_counter()
        for _ in range(3):
            bb(x)
        fwd = 3 * args.batch / (time.perf_counter() - t)

    resolution = round(args.crop * 256 / 224)
    param = PyramidParam(args.classes, resolution, grow_every=1, generator=torch.Generator().manual_seed(0)).to(device)
    for s in range(1, 20):
        param.maybe_grow(s)
    opt = torch.optim.Adam(param.parameters(), lr=2e-3)
    aug, g = StandardAugment(args.crop), torch.Generator().manual_seed(0)
    target = torch.randn(args.classes, bb.feat_dim, device=device)
    times = []
    for _ in range(args.steps + 1):
        t = time.perf_counter()
        images = param.render()
        z = bb(aug(images.repeat(args.augs, 1, 1, 1), g)).view(args.augs, args.classes, -1).mean(0)
        loss = 1 - torch.nn.functional.cosine_similarity(z.flatten(), target.flatten(), dim=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    step = sum(times[1:]) / args.steps  # the first step warms up
    print(
        f"{args.backbone} crop {args.crop}: forward {fwd:.1f} images/s (batch {args.batch}); "
        f"SFM-shaped step ({args.classes} images x {args.augs} views) {step:.3f} s; "
        f"peak RSS {process_peak_rss_mb():.0f} MB"
    )


if __name__ == "__main__":
    main()
