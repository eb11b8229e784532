"""Class-conditional latent flow-matching models (PGFM): the model interface, the loaders and the
flow-matching loss.

Convention (SiT's linear interpolant): x_t = t * x_1 + (1 - t) * eps with t = 0 noise and
t = 1 data; the network predicts the velocity u = x_1 - eps from (x_t, t, class). Class ``num_classes`` is the
null label (trained by label dropout) used by classifier-free guidance on the velocity.

Models:
- users: a SiT checkpoint (``SiT-XL-2-256x256.pt`` or any state dict in SiT's layout; the architecture is read
  from the weights, heads from the SiT zoo by width or ``--flow-heads``), optionally fine-tuned on the target
  classes (``finetune.py``);
- offline: ``VelocityMLP``, a residual MLP with adaLN-Zero conditioning on the flattened latent, trained by
  ``datadistill pretrain flow --data D`` (``training/flow.py``). On the 2-core CPU it trains several times
  faster than a transformer of the same loss (measured in BENCHMARKS.md), and 4 x 7 x 7 latents are small.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...core.errors import ConfigError, WeightsError, first_line
from ...core.io import load_torch
from ...data import RealData
from ...data.classlists import SUBSETS
from .sit import SIT_CONFIGS, SiT, modulate, timestep_embedding, zero_init

FLOW_FORMAT = "datadistill.flow/1"


class VelocityMLP(nn.Module):
    """``forward(x (B,C,H,W), t (B,), y (B,)) -> velocity``: residual MLP blocks with adaLN-Zero (shift, scale,
    gate from the time + class embedding), zero-initialised output."""

    def __init__(
        self,
        latent_shape: tuple[int, int, int],
        num_classes: int,
        width: int = 512,
        depth: int = 4,
        class_dropout_prob: float = 0.1,
    ):
        super().__init__()
        self.config = {
            "latent_shape": list(latent_shape),
            "num_classes": num_classes,
            "width": width,
            "depth": depth,
            "class_dropout_prob": class_dropout_prob,
        }
        dim = int(torch.tensor(latent_shape).prod())
        self.num_classes = num_classes
        self.inp = nn.Linear(dim, width)
        self.t_embed = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.y_embed = nn.Embedding(num_classes + int(class_dropout_prob > 0), width)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm": nn.LayerNorm(width, elementwise_affine=False),
                    "mod": nn.Linear(width, 3 * width),
                    "fc1": nn.Linear(width, 2 * width),
                    "fc2": nn.Linear(2 * width, width),
                }
            )
            for _ in range(depth)
        )
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out_mod = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, dim)
        zero_init([*(block["mod"] for block in self.blocks), self.out_mod, self.out])

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = F.silu(self.t_embed(timestep_embedding(t, 256)) + self.y_embed(y))
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            shift, scale, gate = block["mod"](c).chunk(3, dim=1)
            inner = block["fc1"](modulate(block["norm"](h), shift, scale))
            h = h + gate * block["fc2"](F.gelu(inner, approximate="tanh"))
        shift, scale = self.out_mod(c).chunk(2, dim=1)
        return self.out(modulate(self.out_norm(h), shift, scale)).view_as(x)


@dataclass
class FlowModel:
    """A frozen velocity network with its class map (dataset class -> model class) and provenance."""

    net: nn.Module
    arch: str
    weights: str
    latent_shape: tuple[int, int, int]
    class_ids: torch.Tensor  # (num dataset classes,) model class index of each dataset class
    config: dict

    @property
    def null_class(self) -> int | None:
        rows = (
            self.net.y_embedder.embedding_table.num_embeddings
            if self.arch == "sit"
            else self.net.y_embed.num_embeddings
        )
        return self.net.num_classes if rows > self.net.num_classes else None

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def identity(self) -> dict:
        return {
            "arch": self.arch,
            "weights": self.weights,
            "latent_shape": list(self.latent_shape),
            "class_ids": self.class_ids.tolist(),
        }

    def velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        labels: torch.Tensor,
        cfg_scale: float = 1.0,
        cfg_channels: int | None = None,
    ) -> torch.Tensor:
        """Velocity at (x, t) for dataset classes ``labels``, with classifier-free guidance
        v_u + w (v_c - v_u) when w != 1 (one batched call; on the first ``cfg_channels`` channels only if set,
        the SiT/DiT code's quirk)."""
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(len(x))
        y = self.class_ids.to(x.device)[labels.to(x.device)]
        if cfg_scale == 1.0:
            return self.net(x, t, y)
        if self.null_class is None:
            raise ConfigError(
                "this flow model was trained without label dropout: classifier-free guidance needs --cfg-scale 1"
            )
        v = self.net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.null_class)]))
        cond, uncond = v.chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        if cfg_channels is not None:
            guided = torch.cat([guided[:, :cfg_channels], cond[:, cfg_channels:]], dim=1)
        return guided


# ---- loading ---------------------------------------------------------------------------------------------------


def class_ids_for(data: RealData | None, model_classes: int) -> torch.Tensor:
    """Dataset class -> model class: ImageNet subsets use their ImageNet indices with a 1000-class model;
    otherwise class c is model class c."""
    n = data.num_classes if data is not None else model_classes
    if data is not None and data.name in SUBSETS and model_classes == 1000:
        return torch.tensor(SUBSETS[data.name])
    if n > model_classes:
        raise ConfigError(f"the flow model knows {model_classes} classes but the dataset has {n}")
    return torch.arange(n)


def save_flow(folder: Path, net: nn.Module, arch: str, config: dict) -> None:
    """Write a flow model folder (``model.safetensors`` + ``config.json``); the caller makes it atomic."""
    from safetensors.torch import save_file

    from ...core.io import write_json

    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"))
    write_json(folder / "config.json", {"format": FLOW_FORMAT, "arch": arch, "net": net.config, **config})


def load_flow_folder(folder: str | Path, data: RealData | None = None) -> FlowModel:
    """A flow model folder written by ``save_flow`` (the offline model, or a fine-tuned SiT)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
        if config.get("format") != FLOW_FORMAT:
            raise KeyError("format")
        net = VelocityMLP(**config["net"]) if config["arch"] == "mlp" else SiT(**config["net"])
        net.load_state_dict(load_file(str(folder / "model.safetensors")))
    except (OSError, KeyError, RuntimeError, TypeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot load the flow model in {folder}: {first_line(exc, 200)}") from None
    shape = tuple(config["latent_shape"])
    ids = torch.tensor(config["class_ids"]) if "class_ids" in config else class_ids_for(data, net.num_classes)
    weights = config.get("weights") or f"{config['arch']} flow model in {folder}"
    return FlowModel(net.eval().requires_grad_(False), config["arch"], weights, shape, ids, config)


def sit_from_state_dict(state: dict, heads: int | None = None) -> SiT:
    """A SiT whose architecture is read from a state dict in SiT's layout (heads: SiT zoo by width, or given)."""
    try:
        proj = state["x_embedder.proj.weight"]
        hidden, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        rows = state["y_embedder.embedding_table.weight"].shape[0]
        tokens = state["pos_embed"].shape[1]
        out = state["final_layer.linear.weight"].shape[0] // (patch * patch)
        mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / hidden
    except (KeyError, ValueError, AttributeError) as exc:
        raise WeightsError(f"not a SiT state dict (missing {exc})") from None
    zoo = {h: n for _, h, _, n in SIT_CONFIGS.values()}
    heads = heads or zoo.get(hidden)
    if heads is None:
        raise WeightsError(f"cannot tell the attention heads of a SiT of width {hidden}: pass --flow-heads")
    grid = round(tokens**0.5)
    # SiT is trained with label dropout: the last embedding row is the null class (1001 rows for ImageNet).
    return SiT(
        grid * patch,
        patch,
        in_channels,
        hidden,
        depth,
        heads,
        mlp_ratio,
        rows - 1,
        learn_sigma=out == 2 * in_channels,
        class_dropout_prob=0.1,
    )


def load_sit_checkpoint(path: str | Path, data: RealData | None = None, heads: int | None = None) -> FlowModel:
    """A SiT checkpoint file (``.pt`` state dict, or a training checkpoint with ``ema``/``model``; or
    ``.safetensors``) loaded into ``SiT``."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_torch(path)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unreadable files
        raise WeightsError(f"cannot read the SiT checkpoint {path}: {first_line(exc, 200)}") from None
    if isinstance(state, dict) and "ema" in state:
        state = state["ema"]
    elif isinstance(state, dict) and "model" in state:
        state = state["model"]
    net = sit_from_state_dict(state, heads)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(
            f"the SiT checkpoint {path} does not fit its inferred architecture: {first_line(exc, 200)}"
        ) from None
    c = net.config
    shape = (c["in_channels"], c["input_size"], c["input_size"])
    weights = f"SiT checkpoint {path} (depth {c['depth']}, width {c['hidden_size']}, patch {c['patch_size']})"
    return FlowModel(
        net.eval().requires_grad_(False),
        "sit",
        weights,
        shape,
        class_ids_for(data, net.num_classes),
        {"net": c, "source": str(path)},
    )
