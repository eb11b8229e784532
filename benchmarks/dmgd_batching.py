"""DMGD images per second: batched across classes (``--batch classes``: sample n of every class in one sampler
batch) against one image at a time (``--batch one``, the released code), same model, steps, guidance and IPC,
measured side by side in one process (modes alternate over the repeats).

    python benchmarks/dmgd_batching.py --data fashion-mnist --ipc 2 --repeats 2 \
        --out benchmarks/results/dmgd_batching.json

``--device cuda`` measures on a GPU (where small batches are launch-bound, the case the 5x target is about);
the timings synchronise the device before reading the clock.

Model loading, k-means and the latent statistics are done once before timing (they are cached and shared by
both modes); the timed part is the generation loop (50 DDPM steps per image with CFG, semantic matching, OT
guidance in the step window, greedy memory) plus decoding.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from datadistill.api import build_context, make_config
from datadistill.data import load_dataset
from datadistill.methods.dmgd import DMGD
from datadistill.run.timing import peak_memory_mb, process_peak_rss_mb


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that the clock measures work done rather than work launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate(ctx, method: DMGD, template) -> tuple[float, int]:
    """Run every generation step of ``ctx`` on a fresh state sharing ``template``'s loaded sampler."""
    from datadistill.methods.guided_sampling import GenerationState

    synchronize(ctx.device)
    state = GenerationState(
        ctx.data.num_classes, ctx.config.ipc, template.sampler.space.latent_shape, template.sampler, ctx.resolution
    )
    optimizer = method.make_optimizer(ctx, state)
    start = time.perf_counter()
    for _ in range(method.steps(ctx)):
        method.train_step(ctx, state, optimizer, torch.autocast(ctx.device.type, enabled=False))
    images = state.render()
    synchronize(ctx.device)
    return time.perf_counter() - start, len(images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--ipc", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dit", default="tiny")
    p.add_argument("--guidance-scale", type=float, default=0.5)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE DMGD option (smoke tests: fewer steps)")
    p.add_argument("--out", default="benchmarks/results/dmgd_batching.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    method = DMGD()
    extra = {}
    for item in args.set:
        key, value = item.split("=", 1)
        extra[key] = json.loads(value) if value.lstrip("-").replace(".", "").isdigit() else value
    contexts = {
        mode: build_context(
            make_config(
                "dmgd",
                args.data,
                args.ipc,
                device=args.device,
                dit=args.dit,
                guidance_scale=args.guidance_scale,
                batch=mode,
                **extra,
            ),
            data=data,
        )
        for mode in ("classes", "one")
    }
    template = method.init_param(contexts["classes"])  # loads the model, latent space and k-means once
    generate(contexts["classes"], method, template)  # warm-up (first calls allocate)
    times: dict[str, list[float]] = {"classes": [], "one": []}
    images = 0
    for r in range(args.repeats):
        for mode in ("classes", "one") if r % 2 == 0 else ("one", "classes"):
            ctx = contexts[mode]
            ctx.generator.manual_seed(ctx.config.seed)
            seconds, images = generate(ctx, method, template)
            times[mode].append(seconds)
            print(f"{mode:8s} repeat {r}: {seconds:.1f} s, {images / seconds:.2f} images/s", flush=True)
    best = {m: min(t) for m, t in times.items()}
    # Where the time goes: one CFG model call for one class (2 rows) vs all classes (2C rows).
    net, c, device = template.sampler.model, data.num_classes, contexts["classes"].device
    forward_ms = {}
    with torch.no_grad():
        for rows in (2, 2 * c):
            x = torch.randn(rows, *template.sampler.space.latent_shape, device=device)
            t, y = torch.full((rows,), 500, device=device), torch.arange(rows, device=device) % c
            for _ in range(3):
                net(x, t, y)
            synchronize(device)
            start = time.perf_counter()
            for _ in range(20):
                net(x, t, y)
            synchronize(device)
            forward_ms[rows] = round((time.perf_counter() - start) / 20 * 1000, 2)
    result = {
        "args": vars(args),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "images": images,
        "sampling_steps": contexts["classes"].opts.sampling_steps,
        "model": template.sampler.model.weights,
        "seconds": times,
        "images_per_s": {m: round(images / t, 3) for m, t in best.items()},
        "speedup": round(best["one"] / best["classes"], 2),
        "model_call_ms_by_rows": forward_ms,
        "model_call_speedup_per_image": round(forward_ms[2] * c / forward_ms[2 * c], 2),
        "peak_rss_mb": process_peak_rss_mb(),
    }
    if device.type == "cuda":
        result["peak_cuda_mb"] = peak_memory_mb(device)["peak_cuda_mb"]
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "images_per_s",
                    "speedup",
                    "model_call_ms_by_rows",
                    "model_call_speedup_per_image",
                    "peak_rss_mb",
                )
            }
        )
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
