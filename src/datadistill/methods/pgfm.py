"""PGFM: path-guided flow matching for dataset distillation (Li et al., arXiv 2602.05616; docs/methods/pgfm.md).

Only the abstract is public; this follows the proposed design of docs/methods/pgfm.md, every choice an option:
a class-conditional flow-matching model in the latent space of a frozen autoencoder is sampled with a few
Euler/Heun steps and classifier-free guidance on the velocity; each of the IPC trajectories of a class is
assigned one prototype (per-class k-means of the real latents, k = IPC, from the cached statistics pass) and
its predicted endpoint is pulled towards it with a decaying schedule, a trust-region clip and an optional warm
start (``samplers.PathToPrototype``). All classes and samples go through the sampler in batches.

``--mode`` runs the baselines through the same pipeline (same latent space, decoder, prototypes and metrics):
``plain`` (the same sampler without prototype guidance), ``prototypes`` (the decoded prototypes themselves)
and ``real-recon`` (the random real images of ``datadistill distill random`` with the same seed, encoded and
decoded by the same autoencoder). Every set records its number of function evaluations, seconds per image and
mode coverage (``evaluate.metrics.mode_coverage``; clusters from the validation split's latents).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core import dist
from ..core.errors import ConfigError
from ..core.options import at_least, option
from ..features.coverage import mode_coverage
from ..models.generative.latent import LatentOptions, LatentSpace, latent_bank
from ..sampling.ode import PathToPrototype, ode_sample, warm_start
from ..synset.set import SyntheticSet
from ..training.flow import FlowOptions, check_flow_spec, flow_model_from
from ..training.vae import latent_space_from
from .base import Method, RunContext, get_method, register


@dataclass
class PGFMOptions(LatentOptions, FlowOptions):
    mode: str = option(
        "pgfm",
        "pgfm (guided sampling), or a baseline through the same pipeline: plain sampling, "
        "decoded prototypes, random reals encoded+decoded",
        ("pgfm", "plain", "prototypes", "real-recon"),
    )
    sampling_steps: int = option(8, "ODE steps")
    solver: str = option("euler", "ODE solver (Heun: 2 evaluations per step)", ("euler", "heun"))
    cfg_scale: float = option(2.0, "classifier-free guidance scale w on the velocity (1: off)")
    cfg_channels: int | None = option(None, "apply CFG to the first N latent channels only (SiT/DiT code quirk: 3)")
    strength: float = option(0.5, "path-to-prototype guidance strength lambda_0 (1: land on the prototype)")
    guidance_stop: float = option(0.6, "t at which the guidance has decayed to 0 (t = 1 is data)")
    schedule: str = option("cosine", "decay of lambda(t) up to --guidance-stop", ("cosine", "linear", "constant"))
    trust_region: float = option(
        0.5, "clip the guidance step to this fraction of the model's step per sample (<= 0: no clip)"
    )
    warm_start: float = option(0.0, "start at t_s on the straight path from noise to the prototype (0: from noise)")
    prototype: str = option(
        "centroid", "prototype: the k-means centre, or the real latent nearest to it", ("centroid", "nearest-real")
    )
    kmeans_seed: int = option(0, "seed of the per-class k-means (fixed across generation seeds)")
    coverage_k: int | None = option(None, "K_eval of the mode-coverage metric (default: IPC)")
    batch_size: int = option(500, "trajectories per sampler batch")
    resolution: int | None = option(None, "size of the saved images (default: the dataset's own)")

    def validate(self) -> None:
        LatentOptions.validate(self)
        FlowOptions.validate(self)
        at_least(self, 1, "cfg_channels", "coverage_k", "resolution")
        if self.sampling_steps < 1 or self.batch_size < 1:
            raise ConfigError("--sampling-steps and --batch-size must be >= 1")
        if self.strength < 0 or not 0 < self.guidance_stop <= 1 or not 0 <= self.warm_start < 1:
            raise ConfigError("--strength must be >= 0, --guidance-stop in (0, 1] and --warm-start in [0, 1)")
        if self.cfg_scale < 0:
            raise ConfigError("--cfg-scale must be >= 0")


@register
class PGFM(Method[PGFMOptions]):
    name = "pgfm"
    summary = "path-guided latent flow matching: few-step ODE sampling pulled to per-class k-means prototypes"
    Options = PGFMOptions

    def select(self, ctx: RunContext[PGFMOptions]) -> SyntheticSet:
        opts, data = ctx.opts, ctx.data
        if opts.mode in ("pgfm", "plain"):
            check_flow_spec(opts)  # a missing model fails before the latent space is trained
        space = latent_space_from(opts, data, ctx.device)
        bank = latent_bank(data, space, "train")
        labels = ctx.class_labels()
        meta: dict = {
            "mode": opts.mode,
            "latent_space": space.weights,
            "latent_shape": list(space.latent_shape),
            "sampling_seconds": 0.0,
        }
        if opts.mode == "real-recon":
            picked = get_method("random").select(ctx)
            indices = torch.tensor(picked.meta["train_indices"])
            latents, labels = bank.tensor(indices).view(-1, *space.latent_shape), picked.labels
            meta["train_indices"] = indices.tolist()
        else:
            protos = self.prototypes(ctx, bank, space)
            latents = protos if opts.mode == "prototypes" else self.sample(ctx, space, protos, labels, meta)
        start = time.perf_counter()
        with torch.no_grad():
            images = space.decode(latents).cpu()
        meta["decode_seconds"] = round(time.perf_counter() - start, 4)
        # Generation cost per image: ODE sampling (model loading and training excluded) plus decoding.
        meta["seconds_per_image"] = round((meta["sampling_seconds"] + meta["decode_seconds"]) / len(images), 6)
        meta["mode_coverage"] = self.coverage(ctx, space, images, labels)
        size = opts.resolution or data.native_size
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return ctx.synset(images.clamp(0, 1), labels, **meta)

    def prototypes(self, ctx: RunContext[PGFMOptions], bank, space: LatentSpace) -> torch.Tensor:
        """(C * IPC, C, h, w) prototypes, class-major: per-class k-means centres (k = IPC) of the train latents,
        or the real latents nearest to them."""
        centres, _ = bank.kmeans(ctx.config.ipc, seed=ctx.opts.kmeans_seed)
        flat = centres.flatten(0, 1)
        if ctx.opts.prototype == "nearest-real":
            flat = bank.tensor(bank.nearest(flat, ctx.class_labels(), metric="l2"))
        return flat.view(-1, *space.latent_shape)

    def sample(
        self, ctx: RunContext[PGFMOptions], space: LatentSpace, protos: torch.Tensor, labels: torch.Tensor, meta: dict
    ) -> torch.Tensor:
        opts = ctx.opts
        flow = flow_model_from(opts, opts, ctx.data, space, ctx.device, seed=ctx.config.seed)
        noise = torch.randn(len(labels), *space.latent_shape, generator=ctx.generator)
        guided = opts.mode == "pgfm"
        t_start = opts.warm_start if guided else 0.0
        out, nfe, passes = [torch.zeros(0, *space.latent_shape)], 0, 0
        mine = dist.class_share(labels)  # under torchrun each process samples its share of the classes
        start = time.perf_counter()
        for rows in mine.split(opts.batch_size):
            hooks = []
            x0 = noise[rows]
            if guided:
                hooks.append(
                    PathToPrototype(
                        protos[rows],
                        opts.strength,
                        opts.guidance_stop,
                        opts.schedule,
                        opts.trust_region if opts.trust_region > 0 else None,
                    )
                )
                if t_start > 0:
                    x0 = warm_start(protos[rows], x0, t_start)
            result = ode_sample(
                flow,
                labels[rows],
                x0,
                opts.sampling_steps,
                opts.solver,
                opts.cfg_scale,
                opts.cfg_channels,
                hooks,
                t_start,
                desc=f"pgfm sampling ({opts.mode})",
            )
            out.append(result.latents.cpu())
            nfe, passes = result.nfe, result.forward_passes
        meta["sampling_seconds"] = round(time.perf_counter() - start, 4)
        meta.update(
            {
                "flow_model": flow.weights,
                "nfe": nfe,
                "forward_passes_per_image": passes,
                "solver": opts.solver,
                "sampling_steps": opts.sampling_steps,
                "cfg_scale": opts.cfg_scale,
            }
        )
        if guided:
            meta["guidance"] = {
                "strength": opts.strength,
                "stop": opts.guidance_stop,
                "schedule": opts.schedule,
                "trust_region": opts.trust_region,
                "warm_start": opts.warm_start,
                "prototype": opts.prototype,
            }
        return dist.gather_rows(torch.cat(out), mine, len(labels))

    def coverage(
        self, ctx: RunContext[PGFMOptions], space: LatentSpace, images: torch.Tensor, labels: torch.Tensor
    ) -> dict:
        """Mode coverage of the final images (encoded with the posterior mean) against K_eval k-means clusters
        of the validation split's latents."""
        k = ctx.opts.coverage_k or ctx.config.ipc
        counts = torch.bincount(ctx.data.val.targets, minlength=ctx.data.num_classes)
        if int(counts.min()) < k:
            return {"mean": None, "k": k, "note": f"the validation split has fewer than {k} images in a class"}
        centres, _ = latent_bank(ctx.data, space, "val").kmeans(k, seed=ctx.opts.kmeans_seed)
        with torch.no_grad():
            latents = space.encode(images, mode="mean").cpu()
        result = mode_coverage(latents, labels, centres)
        return {
            "mean": round(result["mean"], 4),
            "k": k,
            "clusters_from": "val",
            "per_class": [round(v, 3) for v in result["per_class"]],
        }
