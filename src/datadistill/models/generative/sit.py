"""A class-conditional latent flow-matching transformer in the SiT layout (Ma et al. 2024; the DiT backbone
with adaLN-Zero blocks), written so that the official SiT checkpoints (``SiT-XL-2-256x256.pt``: a state dict
with ``x_embedder``, ``t_embedder``, ``y_embedder``, ``blocks.N.{attn,mlp,adaLN_modulation}``, ``final_layer``,
``pos_embed``) load into it unchanged.

Conventions (SiT's linear interpolant): x_t = t * x_1 + (1 - t) * noise, t in [0, 1] from noise
(t = 0) to data (t = 1); the model predicts the velocity x_1 - noise and takes t unscaled. With ``learn_sigma``
the network outputs 2C channels and the velocity is the first C (as SiT's forward does). The null class
(index ``num_classes``) is the unconditional input for classifier-free guidance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# name -> (depth, hidden, patch, heads), the SiT/DiT model zoo
SIT_CONFIGS = {
    f"SiT-{size}/{p}": (depth, hidden, p, heads)
    for size, (depth, hidden, heads) in {
        "XL": (28, 1152, 16),
        "L": (24, 1024, 16),
        "B": (12, 768, 12),
        "S": (12, 384, 6),
    }.items()
    for p in (2, 4, 8)
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift; conditioning of shape (B, D) is broadcast over the tokens of
    x (B, T, D)."""
    if x.ndim == 3:
        shift, scale = shift[:, None], scale[:, None]
    return x * (1 + scale) + shift


def zero_init(layers: Iterable[nn.Module]) -> None:
    """Zero the weight and bias of each layer (adaLN-Zero: modulations and outputs start at zero)."""
    for layer in layers:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


@torch.no_grad()
def dit_init(
    model: nn.Module, patch_proj: nn.Conv2d, embeddings: Iterable[nn.Module], zeroed: Iterable[nn.Module]
) -> None:
    """DiT's initialisation: xavier-uniform linears with zero biases, the patch projection xavier-uniform as a
    linear map, N(0, 0.02) label tables and timestep MLP weights (``embeddings``, drawn in that order), and
    adaLN-Zero: ``zeroed`` (every modulation and the output projection) start at zero."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    w = patch_proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.zeros_(patch_proj.bias)
    for e in embeddings:
        nn.init.normal_(e.weight, std=0.02)
    zero_init(zeroed)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of (fractional) times, as in GLIDE/DiT."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """2-D sine-cosine positional embedding (grid*grid, dim): half the channels for each axis (MAE/DiT)."""

    def axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    w, h = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return torch.from_numpy(np.concatenate([axis(dim // 2, w), axis(dim // 2, h)], axis=1)).float()


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_channels: int, hidden: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, hidden: int, with_null: bool):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(with_null), hidden)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiTBlock(nn.Module):
    """adaLN-Zero transformer block."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sa, ca, ga, sm, cm, gm = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + ga[:, None] * self.attn(modulate(self.norm1(x), sa, ca))
        return x + gm[:, None] * self.mlp(modulate(self.norm2(x), sm, cm))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SiT(nn.Module):
    """``forward(x (B,C,H,W), t (B,) in [0,1], y (B,) class or num_classes for null) -> velocity (B,C,H,W)``."""

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        class_dropout_prob: float = 0.1,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"latent size {input_size} is not a multiple of the patch size {patch_size}")
        self.config = {
            "input_size": input_size,
            "patch_size": patch_size,
            "in_channels": in_channels,
            "hidden_size": hidden_size,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "num_classes": num_classes,
            "learn_sigma": learn_sigma,
            "class_dropout_prob": class_dropout_prob,
        }
        self.in_channels, self.patch, self.num_classes = in_channels, patch_size, num_classes
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob > 0)
        grid = input_size // patch_size
        self.pos_embed = nn.Parameter(sincos_pos_embed(hidden_size, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList([SiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self._init_weights()

    @property
    def null_class(self) -> int:
        return self.num_classes

    def _init_weights(self) -> None:
        dit_init(
            self,
            self.x_embedder.proj,
            (self.y_embedder.embedding_table, self.t_embedder.mlp[0], self.t_embedder.mlp[2]),
            [*(block.adaLN_modulation[-1] for block in [*self.blocks, self.final_layer]), self.final_layer.linear],
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        tokens = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for block in self.blocks:
            tokens = block(tokens, c)
        out = self.final_layer(tokens, c)  # (B, T, p*p*C_out)
        p, gh, gw = self.patch, h // self.patch, w // self.patch
        out = out.view(b, gh, gw, p, p, self.out_channels).permute(0, 5, 1, 3, 2, 4).reshape(b, -1, h, w)
        return out[:, : self.in_channels]
