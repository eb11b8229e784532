"""The shared latent space of the generative methods (PGFM, DMGD, MGD3): a frozen autoencoder.

``LatentSpace`` maps images in [0,1] to scaled latents and back. Two kinds of weights load into it:
- diffusers ``AutoencoderKL`` (e.g. ``stabilityai/sd-vae-ft-mse``: latents = 0.18215 * E(x), inputs in [-1,1]),
  from the hub or a local folder;
- the offline default ``tiny``: a small KL autoencoder the toolkit trains itself (``datadistill pretrain vae``,
  see ``vae.py`` and ``training/vae.py``), with its scale and shift measured on the training latents so they have
  unit variance.

Images are prepared as in ADM's ``center_crop_arr`` at the space's ``image_size``.

A ``LatentSpace`` is also an encoder for the cached statistics pass (``__call__`` -> flattened latents,
``feat_dim``, ``input_size``, ``identity()``). The pass resizes by 256/224 before its center crop (the
backbones' convention), which would zoom the images; ``latent_bank`` hands it a view of the data whose items
are already prepared, which the pass encodes unchanged. Use ``latent_bank(data, space)`` for
latents of a split, then ``bank.kmeans(k)`` for per-class modes with masses.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import ConfigError, DataError
from ...core.optional import require
from ...core.options import at_least, option
from ...data import LabelledImages, RealData
from ...features.bank import FeatureBank, feature_bank
from .hub import find_config, load_component, local_or_hub
from .vae import TINY_FORMAT, load_tiny_vae

HUB_ALIASES = {"sd-vae-ft-mse": "stabilityai/sd-vae-ft-mse", "sd-vae-ft-ema": "stabilityai/sd-vae-ft-ema"}


def center_crop_arr(images: torch.Tensor, size: int) -> torch.Tensor:
    """ADM's ``center_crop_arr`` on a batch in [0,1]: halve with a box filter while the short side is at least
    twice ``size``, resize the short side to ``size`` (bicubic), center crop. Identity at the native size."""
    h, w = images.shape[-2:]
    while min(h, w) >= 2 * size:
        h, w = h // 2, w // 2
        images = (
            F.adaptive_avg_pool2d(images, (h, w))
            if (images.shape[-2] % 2 or images.shape[-1] % 2)
            else F.avg_pool2d(images, 2)
        )
    if min(h, w) != size:
        scale = size / min(h, w)
        h, w = max(size, round(h * scale)), max(size, round(w * scale))
        images = F.interpolate(images, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


class LatentSpace(nn.Module):
    """A frozen autoencoder: ``encode`` (images in [0,1] -> scaled latents), ``decode`` (back to [0,1])."""

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        name: str,
        weights: str,
        image_size: int,
        latent_shape: tuple[int, int, int],
        scale: float,
        shift: float = 0.0,
        encode_mode: str = "sample",
        seed: int = 0,
    ):
        super().__init__()
        if encode_mode not in ("sample", "mean"):
            raise ConfigError(f"encode mode must be 'sample' or 'mean', got {encode_mode!r}")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.kind, self._name, self.weights = kind, name, weights
        self.image_size, self.latent_shape = int(image_size), tuple(int(s) for s in latent_shape)
        self.scale, self.shift = float(scale), float(shift)
        self.encode_mode, self.seed = encode_mode, seed
        # forward() draws posterior samples from this generator, so the first pass of a fresh space is reproducible.
        self._generator = torch.Generator().manual_seed(seed)

    # ---- the encoder protocol of the statistics pass ---------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def feat_dim(self) -> int:
        c, h, w = self.latent_shape
        return c * h * w

    @property
    def input_size(self) -> int:
        return self.image_size

    def identity(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "weights": self.weights,
            "image_size": self.image_size,
            "latent_shape": list(self.latent_shape),
            "scale": self.scale,
            "shift": self.shift,
            "encode": self.encode_mode,
            "seed": self.seed,
        }

    def train(self, mode: bool = True) -> LatentSpace:
        return super().train(False)  # frozen

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def begin_batch(self, index: int) -> None:
        """Reseed the posterior samples for batch ``index`` of a statistics pass, so that a batch encodes the same
        whichever process (under torchrun) or earlier pass drew the batches before it."""
        self._generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Flattened latents (B, F) of images in [0,1] (the statistics pass's encoder call)."""
        return self.encode(images, generator=self._generator).flatten(1).float()

    # ---- encode / decode -------------------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0,1] at ``image_size`` (ADM center crop); 1-channel images become RGB."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"expected images B x (1|3) x H x W, got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return center_crop_arr(images.float(), self.image_size)

    def encode(
        self,
        images: torch.Tensor,
        mode: str | None = None,
        generator: torch.Generator | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Scaled latents (B, C, h, w): ``(z - shift) * scale`` with z the posterior sample (or mean)."""
        mode = mode or self.encode_mode
        out = []
        for chunk in images.split(batch_size):
            x = self.prepare(chunk).to(self.device) * 2 - 1
            mean, logvar = self._moments(x)
            if mode == "sample":
                noise = torch.randn(mean.shape, generator=generator).to(mean.device)
                mean = mean + torch.exp(0.5 * logvar) * noise
            out.append((mean - self.shift) * self.scale)
        return torch.cat(out)

    def decode(self, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images in [0,1] (B, 3, image_size, image_size) from scaled latents."""
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise DataError(f"latents of shape {tuple(latents.shape[1:])} do not fit this space {self.latent_shape}")
        out = []
        for chunk in latents.split(batch_size):
            z = chunk.to(self.device).float() / self.scale + self.shift
            out.append(((self._decode(z) + 1) / 2).clamp(0, 1).float())
        return torch.cat(out)

    def _moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "diffusers":
            dist = self.model.encode(x).latent_dist
            return dist.mean, dist.logvar
        return self.model.encode(x)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "diffusers":
            return self.model.decode(z).sample
        return self.model.decode(z)


# ---- the statistics pass over latents ------------------------------------------------------------------------


class _Prepared(LabelledImages):
    """A split whose items are already prepared for ``space`` (ADM center crop at its image size).

    The statistics pass feeds items of a generic dataset to the encoder as they are (it resizes and crops only
    in-memory tensors and image files), so the latents are those of exactly the prepared images
    (``tests/test_latent.py`` checks this)."""

    def __init__(self, base: LabelledImages, space: LatentSpace):
        self.base, self.space = base, space
        self.targets = base.targets
        self.workers = base.workers

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[i]
        return self.space.prepare(image[None])[0], label

    def subset(self, indices: torch.Tensor) -> _Prepared:
        return _Prepared(self.base.subset(indices), self.space)

    def fingerprint(self) -> str:
        tag = f"{self.base.fingerprint()}|prepared-for-latents v2 {self.space.input_size}"
        return hashlib.sha1(tag.encode()).hexdigest()


def latent_bank(data: RealData, space: LatentSpace, split: str = "train", batch_size: int = 100) -> FeatureBank:
    """Flattened latents of ``split`` (cached by the statistics pass), with class means and counts;
    ``.kmeans(k)`` gives per-class k-means centres (C x k x F) and masses."""
    if getattr(data, split) is None:
        raise DataError(f"dataset '{data.name}' has no {split} split")
    view = dataclasses.replace(
        data,
        **{
            s: _Prepared(getattr(data, s), space) if getattr(data, s) is not None else None
            for s in ("train", "val", "test")
        },
    )
    return feature_bank(view, space, split, crop=space.input_size, batch_size=batch_size, device=space.device)


# ---- loading -------------------------------------------------------------------------------------------------


@dataclass
class LatentOptions:
    """The latent-space options every generative method shares."""

    vae: str = option(
        "tiny",
        "latent autoencoder: 'tiny' (offline, trained and cached by `datadistill pretrain "
        "vae`), a local folder (diffusers AutoencoderKL or a tiny-vae folder), or a hub id "
        "such as sd-vae-ft-mse",
    )
    vae_image_size: int | None = option(
        None,
        "image size of the latent space (default: the dataset's own for 'tiny', the VAE's sample_size for diffusers)",
    )
    vae_encode: str = option(
        "sample", "encode real images with a posterior sample (DMGD/Minimax code) or its mean", ("sample", "mean")
    )
    vae_steps: int = option(2000, "training steps of the offline 'tiny' autoencoder when it is not cached yet")
    vae_levels: int | None = option(
        None,
        "downsampling levels of the offline 'tiny' autoencoder (default 2: 28 px "
        "-> 7 x 7 latents; 1: 14 x 14, a near-lossless reconstruction)",
    )
    vae_latent_channels: int | None = option(None, "latent channels of the offline 'tiny' autoencoder (default 4)")

    def validate(self) -> None:
        at_least(self, 1, "vae_image_size", "vae_steps", "vae_levels", "vae_latent_channels")


def latent_model_identity(fmt: str, data: RealData, space: LatentSpace, opts: LatentOptions) -> dict:
    """What identifies a model trained on the latents of ``data`` (its cache key and recorded provenance): the
    format, the data, the latent space and the training options (not the latent options the space already
    names, nor how often it checkpoints)."""
    skip = {"checkpoint_every", *LatentOptions.__dataclass_fields__}
    return {
        "format": fmt,
        "data": data.fingerprint(),
        "dataset": data.name,
        "latent_space": space.identity(),
        **{k: v for k, v in dataclasses.asdict(opts).items() if k not in skip},
    }


def load_latent_weights(
    spec: str,
    device: str | torch.device = "cpu",
    encode_mode: str = "sample",
    image_size: int | None = None,
    scale: float | None = None,
    seed: int = 0,
) -> LatentSpace:
    """A latent space from saved weights: a local folder (a diffusers ``AutoencoderKL``, ``config.json`` + weights
    or a pipeline folder with ``vae/``, or a tiny-vae folder) or a hub id (``sd-vae-ft-mse`` is short for
    ``stabilityai/sd-vae-ft-mse``). ``scale`` overrides the latent scaling factor."""
    device = torch.device(device)
    source, local = local_or_hub(spec, HUB_ALIASES, "latent autoencoder")
    if local:
        _, config = find_config(
            Path(source),
            (None, "vae"),
            f"{source} holds no autoencoder (expected config.json, or vae/config.json in a pipeline folder)",
        )
        if config.get("format") == TINY_FORMAT:
            return _load_tiny(Path(source), device, encode_mode, scale, seed)
    return _load_diffusers(source, device, encode_mode, image_size, scale, seed, local)


def _load_tiny(folder: Path, device: torch.device, encode_mode: str, scale: float | None, seed: int) -> LatentSpace:
    model, config = load_tiny_vae(folder)
    # The cache key, not the path: cached latents and models keyed by this identity stay valid in another cache.
    weights = f"tiny-vae trained by datadistill on {config['dataset']} ({config['steps']} steps, key {folder.name})"
    return LatentSpace(
        model.to(device),
        "tiny",
        "tiny-vae",
        weights,
        config["image_size"],
        tuple(config["latent_shape"]),
        scale or config["scaling_factor"],
        config["shift_factor"],
        encode_mode,
        seed,
    )


def _load_diffusers(
    source: str,
    device: torch.device,
    encode_mode: str,
    image_size: int | None,
    scale: float | None,
    seed: int,
    local: bool,
) -> LatentSpace:
    AutoencoderKL = require("diffusers", "diffusers AutoencoderKL weights").AutoencoderKL
    subfolder = "vae" if local and (Path(source) / "vae" / "config.json").is_file() else None
    vae = load_component(AutoencoderKL, "AutoencoderKL", source, local, subfolder, "stabilityai/sd-vae-ft-mse")
    cfg = vae.config
    sample_size = cfg.sample_size[0] if isinstance(cfg.sample_size, list | tuple) else cfg.sample_size
    size = int(image_size or sample_size)
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    if size % factor:
        raise ConfigError(f"image size {size} is not a multiple of the autoencoder's downsampling factor {factor}")
    shape = (int(cfg.latent_channels), size // factor, size // factor)
    return LatentSpace(
        vae.to(device),
        "diffusers",
        f"AutoencoderKL:{Path(source).name}",
        f"diffusers AutoencoderKL {source}",
        size,
        shape,
        scale or float(cfg.scaling_factor),
        float(getattr(cfg, "shift_factor", None) or 0.0),
        encode_mode,
        seed,
    )
