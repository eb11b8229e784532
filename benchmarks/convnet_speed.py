"""Throughput of ConvNet-3 (width 128) on CPU, to choose the hot-path settings of DM / TGDD / the ConvNet protocols:
training step (forward + backward + SGD), input-gradient step (frozen network, the distillation case) and
inference, for the instance-norm implementations (GroupNorm(C, C), InstanceNorm2d, a manual one), memory
formats, batch sizes, eager vs ``torch.compile`` inference (``no_grad_forward``) and the DSA cost. Pure compute.

    python benchmarks/convnet_speed.py --threads 1 --seconds 4 --out benchmarks/results/convnet_speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from datadistill.data.augment import DSA
from datadistill.models.convnet import ConvNet
from datadistill.training.supervised import no_grad_forward


class ManualInstanceNorm(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + 1e-5) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def build(impl: str, resolution: int, channels: int, channels_last: bool) -> nn.Module:
    model = ConvNet(10, channels, resolution)
    for i, m in enumerate(model.features):
        if isinstance(m, nn.GroupNorm) and impl != "groupnorm":
            model.features[i] = (
                nn.InstanceNorm2d(m.num_channels, affine=True)
                if impl == "instancenorm2d"
                else ManualInstanceNorm(m.num_channels)
            )
    return model.to(memory_format=torch.channels_last) if channels_last else model


def rate(fn, images: int, seconds: float) -> float:
    fn()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        done += images
    return done / (time.perf_counter() - start)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--resolution", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.channels, args.resolution, args.resolution)
    rows = []

    def record(**row):
        rows.append({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()})
        print(rows[-1], flush=True)

    for impl in ("groupnorm", "instancenorm2d", "manual"):
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            model = build(impl, args.resolution, args.channels, cl)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            for batch in (64, 256):
                x, y = torch.randn(batch, *shape).to(memory_format=fmt), torch.randint(10, (batch,))
                record(
                    impl=impl,
                    channels_last=cl,
                    mode="train",
                    batch=batch,
                    images_per_s=rate(lambda m=model, o=opt, x=x, y=y: train_step(m, o, x, y), batch, args.seconds),
                )
            frozen = build(impl, args.resolution, args.channels, cl).requires_grad_(False)
            xs = torch.randn(256, *shape, requires_grad=True)
            record(
                impl=impl,
                channels_last=cl,
                mode="input-grad",
                batch=256,
                images_per_s=rate(lambda m=frozen, x=xs: m(x).sum().backward(), 256, args.seconds),
            )
            x = torch.randn(1000, *shape).to(memory_format=fmt)
            with torch.inference_mode():
                record(
                    impl=impl,
                    channels_last=cl,
                    mode="inference-eager",
                    batch=1000,
                    images_per_s=rate(lambda m=model, x=x: m(x), 1000, args.seconds),
                )
    logging.basicConfig(level=logging.WARNING)
    model = ConvNet(10, args.channels, args.resolution).eval()
    x = torch.randn(1000, *shape)
    start = time.perf_counter()
    compiled = no_grad_forward(model, x)
    compile_s = time.perf_counter() - start
    compiled_ok = os.environ.get("DATADISTILL_COMPILE", "1") != "0"  # no_grad_forward turns it off on failure
    with torch.no_grad():
        diff = float((compiled - model(x)).abs().max())
    record(
        impl="groupnorm",
        channels_last=False,
        mode="inference-compiled (no_grad_forward)",
        batch=1000,
        images_per_s=rate(lambda: no_grad_forward(model, x), 1000, args.seconds),
        compile_seconds=compile_s,
        max_abs_diff_vs_eager=diff,
        compiled=compiled_ok,
    )
    g = torch.Generator().manual_seed(0)
    xa = torch.randn(256, *shape)
    for mode in ("all", "one"):
        dsa = DSA("color_crop_cutout_flip_scale_rotate", mode=mode)
        record(
            impl=f"DSA {mode}", mode="augment", batch=256, images_per_s=rate(lambda d=dsa: d(xa, g), 256, args.seconds)
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
