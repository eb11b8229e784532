"""Shared block of the diffusion-sampling methods (DMGD, MGD3): a frozen class-conditional latent DiT, the
DDPM sampler with hooks (``sampling/ddpm.py``), per-class k-means supports in the shared latent
space, and generation driven by the engine's resumable loop.

Nothing is optimised. Each engine step samples one *chunk* of (class, slot) pairs, writes the final latents into
a ``GenerationState`` and reports a progress number, the entropic OT distance between each sampled class's
generated latents and its k-means supports (``progress_name``; it is no loss and nothing descends it). The state
(latents so far, chunks done) and the RNG generator are checkpointed by the engine, so a killed run resumes where
it stopped and equals an uninterrupted one. ``render()`` decodes the latents into the synthetic images
(class-major, IPC per class).

Subclasses give the chunk order (``chunks``) and the hooks of a chunk (``hooks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from ..core import dist
from ..core.errors import ConfigError, WeightsError
from ..core.options import at_least, option
from ..core.progress import log
from ..data.classlists import SUBSETS
from ..models.generative.dit import DiTDenoiser, load_dit
from ..models.generative.latent import LatentOptions, LatentSpace, latent_bank
from ..sampling.ddpm import SamplerHook, ddpm_sample
from ..sampling.diffusion import GaussianDiffusion
from ..sampling.ot import ot_loss
from ..synset.params import ImageParam
from ..training.vae import latent_space_from
from .base import Method, RunContext


@dataclass
class DDPMOptions(LatentOptions):
    dit: str = option(
        "tiny",
        "noise model: 'tiny' (offline DiT trained and cached by `datadistill pretrain "
        "diffusion`), a local DiT folder (diffusers format, or one written by `datadistill "
        "pretrain diffusion`), or a hub id such as DiT-XL-2-256",
    )
    dit_train_steps: int = option(4000, "training steps of the offline 'tiny' DiT when it is not cached yet")
    sampling_steps: int = option(50, "DDPM steps (the 1000 training timesteps respaced, as DiT's create_diffusion)")
    cfg_scale: float = option(4.0, "classifier-free guidance scale (1 = no guidance)")
    cfg_all_channels: bool = option(
        False, "apply CFG to every latent channel (default: the first 3 only, as DiT's released sampler does)"
    )
    class_ids: str | None = option(
        None,
        "comma-separated class index of the model for each dataset class (default: "
        "ImageNet indices for ImageNet subsets, else the dataset's own labels)",
    )
    resolution: int | None = option(None, "size of the saved images (default: the dataset's own)")

    def validate(self) -> None:
        LatentOptions.validate(self)
        if self.sampling_steps < 1 or self.sampling_steps > 1000 or self.dit_train_steps < 1:
            raise ConfigError("--sampling-steps must lie in [1, 1000] and --dit-train-steps be >= 1")
        if self.cfg_scale < 0:
            raise ConfigError(f"--cfg-scale must be >= 0, got {self.cfg_scale}")
        at_least(self, 1, "resolution")


SamplingOptionsT = TypeVar("SamplingOptionsT", bound=DDPMOptions)


@dataclass
class Sampler:
    """Everything a generation step needs, loaded once per run."""

    model: DiTDenoiser
    space: LatentSpace
    diffusion: GaussianDiffusion
    class_ids: torch.Tensor  # model label of each dataset class
    supports: torch.Tensor | None = None  # C x K x F k-means centres of the class latents
    masses: torch.Tensor | None = None  # C x K


class GenerationState(ImageParam):
    """Latents generated so far (C x IPC x c x h x w) and the number of chunks done; ``render`` decodes them."""

    def __init__(
        self, num_classes: int, ipc: int, latent_shape: tuple[int, int, int], sampler: Sampler, resolution: int
    ):
        super().__init__()
        self.register_buffer("latents", torch.zeros(num_classes, ipc, *latent_shape))
        self.register_buffer("done", torch.zeros((), dtype=torch.long))
        self.sampler, self.resolution = sampler, resolution

    def render(self) -> torch.Tensor:
        images = self.sampler.space.decode(self.latents.flatten(0, 1))
        if images.shape[-1] != self.resolution:
            images = F.interpolate(
                images, size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False
            ).clamp(0, 1)
        return images


def parse_class_ids(spec: str | None, num_classes: int) -> list[int] | None:
    """``--class-ids`` as a list (checked against the dataset before any model is loaded)."""
    if not spec:
        return None
    try:
        ids = [int(s) for s in spec.split(",")]
    except ValueError:
        raise ConfigError(f"--class-ids must be comma-separated integers, got {spec!r}") from None
    if len(ids) != num_classes:
        raise ConfigError(f"--class-ids lists {len(ids)} classes for a dataset with {num_classes}")
    return ids


def model_class_ids(ids: list[int] | None, data_name: str, num_classes: int, model_classes: int) -> torch.Tensor:
    """The model's label of each dataset class: the given ids, ImageNet indices for ImageNet subsets under a
    1000-class model, else the dataset's own labels."""
    if ids is None:
        if data_name in SUBSETS and model_classes == 1000:
            ids = SUBSETS[data_name]
        elif num_classes <= model_classes:
            ids = list(range(num_classes))
        else:
            raise ConfigError(
                f"the model knows {model_classes} classes, the dataset has {num_classes}: pass --class-ids"
            )
    if min(ids) < 0 or max(ids) >= model_classes:
        raise ConfigError(f"--class-ids must lie in [0, {model_classes}), got {min(ids)}..{max(ids)}")
    return torch.tensor(ids)


def load_sampler(ctx: RunContext[DDPMOptions], kmeans: int = 0) -> Sampler:
    """Latent space, DiT (training the offline one if needed), respaced diffusion and k-means supports."""
    opts = ctx.opts
    given_ids = parse_class_ids(opts.class_ids, ctx.data.num_classes)
    space = latent_space_from(opts, ctx.data, ctx.device)
    from ..training.diffusion import DiffusionTrainOptions, load_offline_dit, train_diffusion

    folder = Path(opts.dit).expanduser()
    if opts.dit in ("tiny", "offline"):
        latent = {k: getattr(opts, k) for k in LatentOptions.__dataclass_fields__}
        folder = train_diffusion(ctx.data, DiffusionTrainOptions(**latent, steps=opts.dit_train_steps), ctx.device)
    if (folder / "datadistill.json").is_file():  # a DiT trained by `datadistill pretrain diffusion`
        model, info = load_offline_dit(folder, ctx.device)
        if info["latent_space"] != space.identity():
            raise WeightsError(
                f"the diffusion model in {folder} was trained for another latent space "
                f"({info['latent_space'].get('weights')}); pass the matching --vae"
            )
    else:
        model = load_dit(opts.dit, ctx.device)
    c, h, _ = space.latent_shape
    if model.in_channels != c or model.sample_size != h:
        raise WeightsError(
            f"the DiT works on {model.in_channels} x {model.sample_size} x {model.sample_size} latents, "
            f"the latent space ({space.name}) makes {space.latent_shape}"
        )
    if opts.cfg_scale != 1.0 and model.null_class < 0:
        raise WeightsError("this DiT has no null label: classifier-free guidance needs --cfg-scale 1")
    log.info("sampling %s with %s, latent space %s", ctx.data.name, model.weights, space.weights)
    ids = model_class_ids(given_ids, ctx.data.name, ctx.data.num_classes, model.num_classes)
    sampler = Sampler(model, space, GaussianDiffusion.linear(1000, str(opts.sampling_steps)), ids.to(ctx.device))
    if kmeans:
        centres, masses = latent_bank(ctx.data, space, "train").kmeans(kmeans, seed=ctx.config.seed)
        sampler.supports, sampler.masses = centres.to(ctx.device), masses.to(ctx.device)
    return sampler


def class_ot_distance(
    latents: torch.Tensor, supports: torch.Tensor, masses: torch.Tensor, eps: float, iters: int
) -> torch.Tensor:
    """Entropic OT distance (unit sphere, DMGD's plain Sinkhorn) of each class's latents (B x n x ...) to its
    supports (B x K x F) with masses (B x K): the progress number of a generation step."""
    return ot_loss(latents.flatten(2).float(), supports.float(), masses.float(), eps=eps, iters=iters)


class GuidedSampling(Method[SamplingOptionsT]):
    """Base of the sampling methods (not registered): see the module docstring."""

    stepwise = True
    step_unit = "chunk"
    progress_name = "OT distance"

    def supports_k(self, ctx: RunContext[SamplingOptionsT]) -> int:
        """k-means supports per class the method needs (0: none)."""
        return 0

    def chunks(self, ctx: RunContext[SamplingOptionsT]) -> list[list[tuple[int, int]]]:
        """The (class, slot) pairs each step samples, in order."""
        raise NotImplementedError

    def hooks(
        self,
        ctx: RunContext[SamplingOptionsT],
        state: GenerationState,
        classes: torch.Tensor,
        slots: torch.Tensor,
        generator: torch.Generator,
    ) -> list[SamplerHook]:
        """Guidance for the rows (classes, slots) sampled now; random draws come from ``generator``."""
        return []

    def steps(self, ctx: RunContext[SamplingOptionsT]) -> int:
        return len(self.chunks(ctx))

    def synset_meta(self, ctx: RunContext[SamplingOptionsT]) -> dict:
        return dict(getattr(self, "weights", {}))

    def init_param(self, ctx: RunContext[SamplingOptionsT]) -> GenerationState:
        sampler = load_sampler(ctx, self.supports_k(ctx))
        # the weights actually sampled with ("tiny" names a cached model trained here), saved with the set
        self.weights = {"diffusion_model": sampler.model.weights, "latent_space": sampler.space.weights}
        return GenerationState(
            ctx.data.num_classes, ctx.config.ipc, sampler.space.latent_shape, sampler, ctx.resolution
        )

    def make_optimizer(self, ctx: RunContext[SamplingOptionsT], param: ImageParam) -> None:
        return None  # sampling optimises nothing

    def train_step(
        self, ctx: RunContext[SamplingOptionsT], param: GenerationState, optimizer: None, autocast: Any
    ) -> float:
        """Sample the next chunk; returns its progress number (see ``progress_value``)."""
        chunk = self.chunks(ctx)[int(param.done)]
        classes = torch.tensor([c for c, _ in chunk])
        slots = torch.tensor([s for _, s in chunk])
        s = param.sampler
        noise = torch.randn(len(chunk), *s.space.latent_shape, generator=ctx.generator).to(ctx.device)
        generator, rows = ctx.generator, dist.class_share(classes)
        if dist.active():
            # Each process samples its share of the chunk's classes with its own stream, seeded from the shared
            # generator (which every process advances alike); the latents are then gathered everywhere.
            seed = int(torch.randint(2**62, (1,), generator=ctx.generator))
            generator = torch.Generator().manual_seed(seed + dist.rank())
        x = noise.new_zeros(0, *s.space.latent_shape)
        if len(rows):
            hooks = self.hooks(ctx, param, classes[rows], slots[rows], generator)
            labels = s.class_ids[classes[rows].to(ctx.device)]
            cfg_channels = None if ctx.opts.cfg_all_channels else 3
            with autocast:
                x = ddpm_sample(
                    s.model,
                    s.diffusion,
                    labels,
                    noise[rows.to(noise.device)],
                    generator,
                    ctx.opts.cfg_scale,
                    cfg_channels,
                    hooks,
                )
        param.latents[classes, slots] = dist.gather_rows(x.float(), rows, len(chunk))
        param.done += 1
        return self.progress_value(ctx, param, classes, slots)

    def progress_value(
        self, ctx: RunContext[SamplingOptionsT], param: GenerationState, classes: torch.Tensor, slots: torch.Tensor
    ) -> float:
        """Mean OT distance between each sampled class's latents so far and its supports (0 without supports)."""
        s = param.sampler
        if s.supports is None:
            return 0.0
        values = []
        for k in slots.unique().tolist():
            rows = classes[slots == k].to(s.supports.device)
            values.append(class_ot_distance(param.latents[rows, : k + 1], s.supports[rows], s.masses[rows], 0.1, 5))
        return float(torch.cat(values).mean())
