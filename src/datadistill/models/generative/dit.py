"""Class-conditional latent noise-prediction networks for the DDPM sampler (``sampling/ddpm.py``).

One architecture and one code path for real and offline weights: diffusers' ``DiTTransformer2DModel``.
- For users: DiT-XL/2-256 (``facebook/DiT-XL-2-256``, ImageNet-1k, learned sigma) from the hub or a local
  folder (a DiT pipeline folder with ``transformer/``, or a folder with the transformer's ``config.json`` and
  weights).
- Offline: a small DiT of the same class that ``datadistill pretrain diffusion --data D`` trains on the latents
  of the shared latent space (``latent.py``) and caches (``training/diffusion.py``).

``DiTDenoiser`` adapts it to the sampler's ``Denoiser`` protocol and exposes the class embedding to an
``EmbeddingTransform`` (DMGD's semantic matching) through forward hooks on every ``LabelEmbedding``: diffusers
keeps one label table per block (identical copies in converted DiT checkpoints), and the transform is applied
to each with the same per-step randomness.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ...core.errors import ConfigError, WeightsError
from ...core.optional import require
from .hub import find_config, load_component, local_or_hub
from .sit import dit_init

HUB_ALIASES = {"DiT-XL-2-256": "facebook/DiT-XL-2-256", "DiT-XL-2-512": "facebook/DiT-XL-2-512"}

# (emb, table) -> new emb. emb: 2B rows with CFG (the B conditional rows, then their B null rows) or B rows;
# table: the model's label embedding (an nn.Embedding: table(labels), table.weight; the null label is its last row).
EmbeddingTransform = Callable[[torch.Tensor, torch.nn.Embedding], torch.Tensor]


class DiTDenoiser(nn.Module):
    """A frozen diffusers DiT as the sampler's ``Denoiser``: ``forward(x, t, y, embedding_transform)``."""

    def __init__(self, transformer: nn.Module, weights: str):
        super().__init__()
        cfg = transformer.config
        self.model = transformer
        self.weights = weights
        self.num_classes = int(cfg.num_embeds_ada_norm)
        self.in_channels = int(cfg.in_channels)
        out = int(cfg.out_channels or cfg.in_channels)
        if out not in (self.in_channels, 2 * self.in_channels):
            raise WeightsError(
                f"DiT with {out} output channels for {self.in_channels} input channels: expected eps "
                "(same) or eps + learned variance (twice)"
            )
        self.learn_sigma = out == 2 * self.in_channels
        self.sample_size = int(cfg.sample_size)
        self._labels = [m for m in transformer.modules() if type(m).__name__ == "LabelEmbedding"]
        rows = self._labels[0].embedding_table.num_embeddings if self._labels else 0
        self.null_class = self.num_classes if rows > self.num_classes else -1  # -1: no null label, no CFG

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, embedding_transform: EmbeddingTransform | None = None
    ) -> torch.Tensor:
        handles = []
        if embedding_transform is not None:
            for module in self._labels:
                handles.append(
                    module.register_forward_hook(lambda mod, _args, out: embedding_transform(out, mod.embedding_table))
                )
        try:
            return self.model(x, timestep=t, class_labels=y).sample
        finally:
            for h in handles:
                h.remove()


def tiny_dit(
    in_channels: int,
    sample_size: int,
    num_classes: int,
    width: int = 128,
    depth: int = 4,
    heads: int = 4,
    patch_size: int | None = None,
    learn_sigma: bool = True,
) -> nn.Module:
    """A small diffusers DiT for the offline latent space (patch 2 when the latent side is even, else 1).

    Its label table has the null row for CFG; the model's own random label dropout is switched off, so the
    training loop drops labels with its checkpointed generator instead."""
    DiTTransformer2DModel = require("diffusers", "diffusion models (DiT)").DiTTransformer2DModel

    if width % heads:
        raise ConfigError(f"DiT width {width} is not divisible by {heads} heads")
    patch = patch_size or (2 if sample_size % 2 == 0 else 1)
    if sample_size % patch:
        raise ConfigError(f"latent size {sample_size} is not a multiple of the patch size {patch}")
    model = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=width // heads,
        in_channels=in_channels,
        out_channels=in_channels * (2 if learn_sigma else 1),
        num_layers=depth,
        sample_size=sample_size,
        patch_size=patch,
        num_embeds_ada_norm=num_classes,
    )
    _dit_init(model)
    # One conditioning embedding for all blocks, as in DiT (diffusers keeps a copy per block: ``untie`` before
    # saving; converted DiT checkpoints hold identical copies too).
    for block in model.transformer_blocks[1:]:
        block.norm1.emb = model.transformer_blocks[0].norm1.emb
    model.transformer_blocks[0].norm1.emb.class_embedder.dropout_prob = 0.0
    return model


def untie(model: nn.Module) -> nn.Module:
    """A copy of a ``tiny_dit`` whose per-block embeddings are separate (equal) modules, as diffusers saves them."""
    import copy

    model = copy.deepcopy(model)
    for block in model.transformer_blocks[1:]:
        block.norm1.emb = copy.deepcopy(block.norm1.emb)
    return model


def _dit_init(model: nn.Module) -> None:
    """DiT's initialisation (diffusers leaves PyTorch defaults), on diffusers' module names."""
    blocks = model.transformer_blocks
    dit_init(
        model,
        model.pos_embed.proj,
        [
            layer
            for block in blocks
            for layer in (
                block.norm1.emb.class_embedder.embedding_table,
                block.norm1.emb.timestep_embedder.linear_1,
                block.norm1.emb.timestep_embedder.linear_2,
            )
        ],
        [*(block.norm1.linear for block in blocks), model.proj_out_1, model.proj_out_2],
    )


def load_dit(spec: str, device: str | torch.device = "cpu") -> DiTDenoiser:
    """A diffusers DiT from a local folder or the hub (``DiT-XL-2-256`` is short for ``facebook/DiT-XL-2-256``).

    Missing weights raise ``WeightsError``; nothing falls back to a random model."""
    try:
        DiTTransformer2DModel = require("diffusers", "diffusion models (DiT)").DiTTransformer2DModel
    except ImportError:
        raise WeightsError("DiT weights need the diffusers package: pip install diffusers") from None
    source, local = local_or_hub(spec, HUB_ALIASES, "DiT")
    if local:
        subfolder, config = find_config(
            Path(source),
            ("transformer", None),
            f"{source} holds no DiT (expected transformer/config.json of a DiT pipeline folder, or the "
            "transformer's config.json and weights)",
        )
        if config.get("norm_type", "ada_norm_zero") != "ada_norm_zero":
            raise WeightsError(f"{source} is not a class-conditional DiT (norm_type {config.get('norm_type')})")
    else:
        subfolder = "transformer"
    model = load_component(
        DiTTransformer2DModel,
        "DiT",
        source,
        local,
        subfolder,
        "facebook/DiT-XL-2-256",
        low_cpu_mem_usage=False,
    )
    model.eval().requires_grad_(False)
    return DiTDenoiser(model.to(device), f"diffusers DiT {source}")
