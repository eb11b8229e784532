"""Training the offline latent autoencoder (the TinyVAE network of ``models/generative/vae.py``) on the real
train split, cached (``datadistill pretrain vae --data D``). No VAE weights can be downloaded here, so the
generative methods' offline default trains this one; with real weights, pass a diffusers AutoencoderKL folder
instead.

Loss: MSE in [-1,1] + ``kl_weight`` x KL to N(0, I), both per element. After training, the latents' mean and std
over (at most 5000) training images give ``shift_factor`` and ``scaling_factor`` (unit-variance latents, as
Stable Diffusion's 0.18215 was chosen).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core import dist
from ..core.errors import ConfigError
from ..core.io import write_json
from ..core.options import at_least, build, option
from ..core.progress import log
from ..data import LabelledImages, RealData
from ..models.generative.latent import LatentOptions, LatentSpace, center_crop_arr, load_latent_weights
from ..models.generative.vae import TINY_FORMAT, TinyVAE
from .loop import train_resumable
from .pretrainers import CachedModel, Pretrainer, register_pretrainer

# ---- training (pretrain kind "vae") --------------------------------------------------------------------------


@dataclass
class VAEOptions:
    image_size: int | None = option(None, "image size (default: the dataset's own)")
    latent_channels: int = option(4, "latent channels")
    width: int = option(16, "channels at full resolution (x2 below)")
    levels: int = option(2, "downsampling levels: factor 2**levels (28 px -> 7 x 7 latents)")
    steps: int = option(2000, "training steps")
    batch_size: int = option(64, "images per step")
    lr: float = option(2e-3, "Adam learning rate (cosine decay to 0)")
    kl_weight: float = option(1e-3, "weight of the per-element KL term against the per-pixel MSE")
    seed: int = option(0, "seed of initialisation and batches")
    checkpoint_every: int = option(250, "resumable checkpoint every N steps")

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.levels < 1 or self.width < 1 or self.latent_channels < 1:
            raise ConfigError("vae: --steps, --batch-size, --levels, --width and --latent-channels must be >= 1")
        at_least(self, 1, "checkpoint_every")
        if self.lr <= 0 or self.kl_weight < 0:
            raise ConfigError("vae: --lr must be positive and --kl-weight non-negative")
        if self.image_size is not None and self.image_size < 2**self.levels:
            raise ConfigError(f"vae: --image-size {self.image_size} is smaller than the factor {2**self.levels}")


def prepared_batch(split: LabelledImages, indices: torch.Tensor, size: int) -> torch.Tensor:
    """Images of ``split`` at ``indices`` in [0,1], ADM-center-cropped to ``size`` (in-memory sets are sliced)."""
    if hasattr(split, "batch"):
        return center_crop_arr(split.batch(indices), size)
    return torch.cat([center_crop_arr(split[int(i)][0][None], size) for i in indices])


def _identity(data: RealData, opts: VAEOptions) -> dict:
    train = {k: v for k, v in asdict(opts).items() if k != "checkpoint_every"}
    train["image_size"] = opts.image_size or data.native_size
    return {"data": data.fingerprint(), "dataset": data.name, "format": TINY_FORMAT, **train}


@dist.on_main_alone_first  # under torchrun rank 0 trains into the cache, then the others load it
def train_tiny_vae(data: RealData, opts: VAEOptions, device: torch.device) -> Path:
    """Train (resumably) or reuse the cached tiny VAE for ``data``; returns its folder."""
    ident = _identity(data, opts)
    cached = CachedModel("vae", ident)
    if cached.done():
        return cached.folder
    size = ident["image_size"]
    torch.manual_seed(opts.seed)
    model = TinyVAE(size, opts.latent_channels, opts.width, opts.levels).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=opts.steps)
    generator = torch.Generator().manual_seed(opts.seed)
    n = len(data.train)

    def step(i: int) -> float:
        idx = torch.randint(n, (min(opts.batch_size, n),), generator=generator)
        x = prepared_batch(data.train, idx, size).to(device) * 2 - 1
        mean, logvar = model.encode(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator).to(device)
        rec = F.mse_loss(model.decode(z), x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = rec + opts.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        return float(rec.detach())

    model.train()
    losses = train_resumable(
        f"vae {data.name}",
        opts.steps,
        step,
        {"model": model, "optimizer": optimizer, "schedule": schedule},
        cached.checkpoint,
        every=opts.checkpoint_every,
        generator=generator,
    )
    model.eval()
    shift, scale, val_mse = _calibrate(model, data, size, device)
    config = {
        "format": TINY_FORMAT,
        "dataset": data.name,
        "data_fingerprint": ident["data"],
        **model.config,
        "latent_shape": list(model.latent_shape),
        "scaling_factor": scale,
        "shift_factor": shift,
        "steps": opts.steps,
        "train_options": ident,
        "final_train_mse": losses[-1] if losses else None,
        "val_mse": val_mse,
    }
    folder = cached.save(lambda tmp: _write(tmp, model, config))
    log.info("tiny VAE for %s in %s (val MSE %.5f, scale %.4f)", data.name, folder, val_mse, scale)
    return folder


@torch.no_grad()
def _calibrate(model: TinyVAE, data: RealData, size: int, device: torch.device) -> tuple[float, float, float]:
    """Latent shift and scale (mean and 1/std of posterior means on <= 5000 train images); val MSE in [-1,1]."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train), generator=g)[:5000]
    means = torch.cat(
        [model.encode(prepared_batch(data.train, chunk, size).to(device) * 2 - 1)[0].cpu() for chunk in idx.split(500)]
    )
    shift, std = float(means.mean()), float(means.std())
    vidx = torch.arange(min(len(data.val), 2000))
    errors = []
    for chunk in vidx.split(500):
        x = prepared_batch(data.val, chunk, size).to(device) * 2 - 1
        errors.append(F.mse_loss(model.decode(model.encode(x)[0]), x, reduction="sum").item())
    val_mse = sum(errors) / max(1, len(vidx) * 3 * size * size)
    return shift, 1.0 / max(std, 1e-8), val_mse


def _write(folder: Path, model: TinyVAE, config: dict) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"))
    write_json(folder / "config.json", config)


register_pretrainer(
    Pretrainer(
        "vae", "small KL autoencoder for the generative methods' latent space (offline)", VAEOptions, train_tiny_vae
    )
)


def latent_space_from(opts: LatentOptions, data: RealData | None, device: str | torch.device = "cpu") -> LatentSpace:
    """The ``LatentSpace`` a method's ``LatentOptions`` ask for (training the offline one if needed)."""
    train = {"steps": opts.vae_steps}
    if opts.vae_image_size:
        train["image_size"] = opts.vae_image_size
    shape = {"levels": opts.vae_levels, "latent_channels": opts.vae_latent_channels}
    if any(v is not None for v in shape.values()) and opts.vae not in ("tiny", "offline"):
        raise ConfigError(
            "--vae-levels / --vae-latent-channels shape the offline 'tiny' autoencoder; "
            f"--vae {opts.vae} brings its own architecture"
        )
    train.update({k: v for k, v in shape.items() if v is not None})
    return load_latent_space(
        opts.vae, data, device, encode_mode=opts.vae_encode, image_size=opts.vae_image_size, train_options=train
    )


def load_latent_space(
    spec: str = "tiny",
    data: RealData | None = None,
    device: str | torch.device = "cpu",
    encode_mode: str = "sample",
    image_size: int | None = None,
    scale: float | None = None,
    seed: int = 0,
    train_options: dict | None = None,
) -> LatentSpace:
    """Load a latent space.

    ``spec``: ``tiny`` (the offline autoencoder for ``data``: reused from the cache, else trained now with
    ``train_options``, see ``datadistill pretrain vae --help``); a local folder holding a diffusers
    ``AutoencoderKL`` (``config.json`` + weights, or a pipeline folder with ``vae/``) or a tiny-vae folder; or
    a hub id (``sd-vae-ft-mse`` is short for ``stabilityai/sd-vae-ft-mse``). ``scale`` overrides the
    latent scaling factor. Nothing falls back to random weights: missing weights raise ``WeightsError``.
    """
    if spec not in ("tiny", "offline"):
        return load_latent_weights(spec, device, encode_mode, image_size, scale, seed)
    if data is None:
        raise ConfigError("the offline 'tiny' latent space is trained on a dataset: pass data")
    folder = train_tiny_vae(data, build(VAEOptions, dict(train_options or {}), "pretrain 'vae'"), torch.device(device))
    return load_latent_weights(str(folder), device, encode_mode, image_size, scale, seed)
