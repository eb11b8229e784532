"""The offline class-conditional latent diffusion model: ``datadistill pretrain diffusion --data D``.

A small diffusers DiT (``dit.tiny_dit``) trained on the shared latent space's latents of the train split
(one cached posterior sample per image, from the statistics pass: ``latent_bank``), with ADM's hybrid loss
(eps MSE + the variational bound for the learned-range variance), 1000 linear-beta timesteps, label dropout
for classifier-free guidance, AdamW and an EMA of the weights (the EMA is what is saved and sampled, as in
DiT). Resumable (``training/loop.py``) with a progress bar; cached by a fingerprint of the data, the
latent space and the options. The saved folder is a regular diffusers model folder (``config.json`` +
``diffusion_pytorch_model.safetensors``) plus ``datadistill.json`` with its provenance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core import dist
from ..core.errors import ConfigError, WeightsError
from ..core.io import write_json
from ..core.options import at_least, option
from ..core.progress import log
from ..data import RealData
from ..models.generative.dit import DiTDenoiser, load_dit, tiny_dit, untie
from ..models.generative.latent import LatentOptions, latent_bank, latent_model_identity
from ..sampling.diffusion import GaussianDiffusion, training_loss
from .loop import train_resumable
from .pretrainers import CachedModel, Pretrainer, register_pretrainer, weight_ema
from .vae import latent_space_from

FORMAT = "datadistill.tiny-dit/1"


@dataclass
class DiffusionTrainOptions(LatentOptions):
    width: int = option(128, "transformer width")
    depth: int = option(4, "transformer blocks")
    heads: int = option(4, "attention heads")
    patch_size: int | None = option(None, "patch size (default: 2 for an even latent side, else 1)")
    learn_sigma: bool = option(True, "learned-range variance (as DiT), trained with the variational bound term")
    steps: int = option(4000, "training steps (DiT trained for 400k; scaled down for 2-core CPUs)")
    batch_size: int = option(64, "latents per step")
    lr: float = option(5e-4, "AdamW learning rate (constant, as DiT; DiT's 1e-4 is for its 400k steps)")
    ema: float = option(0.999, "EMA decay of the saved weights")
    class_dropout: float = option(0.1, "probability of replacing a label by the null label (for CFG)")
    seed: int = option(0, "seed of initialisation, batches and noise")
    checkpoint_every: int = option(500, "resumable checkpoint every N steps")

    def validate(self) -> None:
        LatentOptions.validate(self)
        at_least(self, 1, "patch_size", "checkpoint_every")
        if min(self.width, self.depth, self.heads, self.steps, self.batch_size) < 1:
            raise ConfigError("diffusion: --width, --depth, --heads, --steps and --batch-size must be >= 1")
        if self.lr <= 0 or not 0 <= self.ema < 1 or not 0 <= self.class_dropout < 1:
            raise ConfigError("diffusion: --lr must be positive, --ema and --class-dropout in [0, 1)")


@dist.on_main_alone_first  # under torchrun rank 0 trains into the cache, then the others load it
def train_diffusion(data: RealData, opts: DiffusionTrainOptions, device: torch.device) -> Path:
    """Train (resumably) or reuse the cached offline diffusion model for ``data``; returns its folder."""
    space = latent_space_from(opts, data, device)
    ident = latent_model_identity(FORMAT, data, space, opts)
    cached = CachedModel("diffusion", ident, marker="datadistill.json")
    if cached.done():
        return cached.folder
    bank = latent_bank(data, space, "train")
    latents = bank.tensor().view(-1, *space.latent_shape)
    labels = bank.labels.long()
    c, h, w = space.latent_shape
    if h != w:
        raise ConfigError(f"the DiT needs square latents, got {h} x {w}")
    torch.manual_seed(opts.seed)
    model = tiny_dit(c, h, data.num_classes, opts.width, opts.depth, opts.heads, opts.patch_size, opts.learn_sigma).to(
        device
    )
    ema = weight_ema(model, opts.ema)
    net = DiTDenoiser(model, "training")
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0.0)
    diffusion = GaussianDiffusion.linear(1000)
    generator = torch.Generator().manual_seed(opts.seed)
    n = len(latents)

    def step(_: int) -> float:
        idx = torch.randint(n, (min(opts.batch_size, n),), generator=generator)
        y = labels[idx].clone()
        drop = torch.rand(len(idx), generator=generator) < opts.class_dropout
        y[drop] = net.null_class
        loss = training_loss(net, diffusion, latents[idx].to(device), y.to(device), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update_parameters(model)
        return float(loss.detach())

    model.train()
    losses = train_resumable(
        f"diffusion {data.name}",
        opts.steps,
        step,
        {"model": model, "ema": ema, "optimizer": optimizer},
        cached.checkpoint,
        every=opts.checkpoint_every,
        generator=generator,
    )
    tail = losses[-min(len(losses), 200) :]
    info = {
        "format": FORMAT,
        "dataset": data.name,
        "num_classes": data.num_classes,
        "classes": list(data.classes),
        "latent_space": space.identity(),
        "train_options": ident,
        "steps": opts.steps,
        "final_loss": sum(tail) / max(1, len(tail)),
        "weights": "EMA",
    }

    def write(tmp: Path) -> None:
        untie(ema.module).save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / "datadistill.json", info)

    folder = cached.save(write)
    log.info("tiny DiT for %s in %s (final loss %.4f)", data.name, folder, info["final_loss"])
    return folder


def load_offline_dit(folder: str | Path, device: str | torch.device = "cpu") -> tuple[DiTDenoiser, dict]:
    """A trained offline DiT and its provenance (``datadistill.json``)."""
    folder = Path(folder)
    try:
        info = json.loads((folder / "datadistill.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{folder} is not an offline diffusion model folder: {exc}") from None
    model = load_dit(str(folder), device)
    model.weights = f"tiny DiT trained by datadistill on {info['dataset']} ({info['steps']} steps; {folder})"
    return model, info


register_pretrainer(
    Pretrainer(
        "diffusion",
        "small class-conditional latent DiT (DDPM, learned sigma) for DMGD and MGD3 (offline)",
        DiffusionTrainOptions,
        train_diffusion,
    )
)
