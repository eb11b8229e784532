"""Sampling cost of PGFM against 50-step diffusion samplers with guidance, side by side, same batch size, same
process, same latent space and decoder (offline models on Fashion-MNIST).

Rows (seconds per image of the sampler loop; decoding is timed separately and is the same for all):
- PGFM: the velocity MLP, ``--steps`` Euler steps, CFG, path-to-prototype guidance (the method's sampler), at
  ``--batch`` and at one sample per class (DMGD's batch);
- flow, 50 Euler steps: the same velocity MLP and guidance with 50 steps (isolates the step count);
- MGD3 (50 DDPM steps, CFG 4, mode guidance) and plain DDPM (50 steps, CFG 4) on the DMGD issue's offline DiT;
- DMGD (50 DDPM steps, CFG 4, semantic matching + Sinkhorn OT guidance): its own generation, one sample per class
  per sampler call (batch = number of classes, as it runs), timed from the run's ``distill`` phase.

    python benchmarks/pgfm_sampling_cost.py --batch 100 --repeats 3 --out benchmarks/results/pgfm_sampling_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from datadistill.data import load_dataset
from datadistill.models.generative.latent import LatentOptions, latent_bank
from datadistill.sampling.ode import PathToPrototype, ode_sample
from datadistill.training.flow import FlowOptions, flow_model_from
from datadistill.training.vae import latent_space_from


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=8, help="PGFM's Euler steps")
    p.add_argument("--cfg", type=float, default=2.0, help="PGFM's CFG scale (the tuned one)")
    p.add_argument("--strength", type=float, default=0.5, help="PGFM's guidance strength (the tuned one)")
    p.add_argument("--stop", type=float, default=0.8, help="PGFM's guidance stop time (the tuned one)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dmgd-ipc", type=int, default=2, help="IPC of the timed DMGD run (batch = classes)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.manual_seed(0)
    device = torch.device("cpu")
    data = load_dataset("fashion-mnist")
    latent = LatentOptions()
    space = latent_space_from(latent, data, device)
    flow = flow_model_from(FlowOptions(), latent, data, space, device)
    b, shape = args.batch, space.latent_shape
    labels = torch.arange(b) % data.num_classes
    centres, _ = latent_bank(data, space, "train").kmeans(10)
    protos = centres[labels, torch.arange(b) // data.num_classes % 10].view(b, *shape)
    noise = torch.randn(b, *shape)
    rows: dict = {"batch": b, "threads": torch.get_num_threads(), "latent_shape": list(shape)}

    def flow_row(steps: int, n: int = b) -> dict:
        hook = PathToPrototype(protos[:n], args.strength, args.stop)
        sec = _time(
            lambda: ode_sample(flow, labels[:n], noise[:n], steps, "euler", args.cfg, hooks=[hook]), args.repeats
        )
        return {
            "nfe": steps,
            "forward_passes": 2 * steps,
            "batch": n,
            "seconds_per_image": sec / n,
            "model": flow.weights,
        }

    rows["pgfm"] = flow_row(args.steps)
    rows["flow_50_euler"] = flow_row(50)
    rows["pgfm_batch_classes"] = flow_row(args.steps, data.num_classes)  # DMGD's batch: one sample per class
    latents = ode_sample(flow, labels, noise, args.steps, "euler", args.cfg).latents
    rows["decode_seconds_per_image"] = _time(lambda: space.decode(latents), args.repeats) / b
    folder = _cached_dit(space)
    if folder is None:
        rows["diffusion"] = (
            "not available: no offline DiT for this latent space in the cache (datadistill pretrain "
            "diffusion --data fashion-mnist)"
        )
    else:
        from datadistill.methods.mgd3 import ModeGuidance
        from datadistill.sampling.ddpm import ddpm_sample
        from datadistill.sampling.diffusion import GaussianDiffusion
        from datadistill.training.diffusion import load_offline_dit

        model, _ = load_offline_dit(folder, device)
        diffusion = GaussianDiffusion.linear(1000, "50")
        g = torch.Generator().manual_seed(0)
        mode = ModeGuidance(protos, 0.1, 25, 50)
        for name, hooks in (("mgd3_50_ddpm", [mode]), ("ddpm_50", [])):
            sec = _time(
                lambda hooks=hooks: ddpm_sample(model, diffusion, labels, noise, g, 4.0, 3, hooks), args.repeats
            )
            rows[name] = {"nfe": 50, "forward_passes": 100, "seconds_per_image": sec / b, "model": model.weights}
        rows["dmgd"] = _dmgd(data, args.dmgd_ipc)
    for name in ("flow_50_euler", "mgd3_50_ddpm", "ddpm_50", "dmgd"):
        if isinstance(rows.get(name), dict):
            same_batch = rows["pgfm_batch_classes"] if name == "dmgd" else rows["pgfm"]
            rows[name]["pgfm_speedup"] = rows[name]["seconds_per_image"] / same_batch["seconds_per_image"]
    print(json.dumps(rows, indent=1))
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


def _cached_dit(space):
    """The cached offline DiT trained on this latent space with the default options (never trains one here)."""
    from datadistill.core.io import cache_root

    for info in sorted((cache_root() / "models" / "diffusion").glob("*/datadistill.json")):
        meta = json.loads(info.read_text())
        if meta.get("latent_space") == space.identity() and meta.get("train_options", {}).get("steps") == 4000:
            return info.parent
    return None


def _dmgd(data, ipc: int) -> dict:
    """DMGD as it runs (greedy per slot, batched across classes), seconds per image of its generation loop."""
    import tempfile

    from datadistill.api import distill
    from datadistill.run.directory import RunDir

    with tempfile.TemporaryDirectory() as out:
        distill("dmgd", "fashion-mnist", ipc=ipc, out=out, dataset=data, device="cpu")
        phases = RunDir(out).metrics()["distill"]["phases"]
    # the "distill" phase includes loading the sampler once; the decode happens in render at the end
    seconds = phases["distill"]["seconds"]
    n = ipc * data.num_classes
    return {
        "nfe": 50,
        "forward_passes": 100,
        "batch": data.num_classes,
        "seconds_per_image": seconds / n,
        "note": "whole generation phase (sampler loading and decoding included) / images",
    }


if __name__ == "__main__":
    main()
