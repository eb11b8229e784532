"""Training flow-matching models on the latents of a dataset: the offline velocity network
(``datadistill pretrain flow --data D``) and the optional fine-tuning of a loaded SiT on the target classes.

Both train on the cached latents of the train split (``latent_bank``: one posterior sample per image, encoded
once), with the flow-matching loss, AdamW, label dropout for CFG and an EMA of the weights (decay
min(ema, (1 + i) / (10 + i)) at step i; the EMA is saved and sampled). Resumable through ``train_resumable``
(``training/loop.py``: progress bar, checkpoint every N steps), cached by a fingerprint of the data, the latent
space and the options; the loss on the validation latents is recorded.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..core import dist
from ..core.errors import ConfigError, WeightsError
from ..core.options import at_least, option, positive
from ..core.progress import log
from ..data import RealData
from ..models.generative.flow import FlowModel, VelocityMLP, load_flow_folder, save_flow
from ..models.generative.latent import LatentOptions, LatentSpace, latent_bank, latent_model_identity
from .loop import train_resumable
from .pretrainers import CachedModel, Pretrainer, register_pretrainer, weight_ema
from .vae import latent_space_from


@dataclass
class FlowTrainOptions(LatentOptions):
    width: int = option(512, "hidden width of the velocity MLP")
    depth: int = option(4, "residual blocks")
    steps: int = option(8000, "training steps (scaled down for a 2-core CPU; SiT trains for 400k+)")
    batch_size: int = option(128, "latents per step")
    lr: float = option(1e-3, "AdamW learning rate (cosine decay to 10 %)")
    ema: float = option(0.999, "EMA decay of the saved weights")
    class_dropout: float = option(0.1, "probability of the null label (trains the unconditional velocity for CFG)")
    time_sampling: str = option(
        "uniform", "distribution of t in training: uniform (SiT) or logit-normal (SD3)", ("uniform", "logit-normal")
    )
    seed: int = option(0, "seed of initialisation, batches, noise and times")
    checkpoint_every: int = option(500, "resumable checkpoint every N steps")

    def validate(self) -> None:
        LatentOptions.validate(self)
        if min(self.width, self.depth, self.steps, self.batch_size, self.checkpoint_every) < 1:
            raise ConfigError("flow: --width, --depth, --steps, --batch-size and --checkpoint-every must be >= 1")
        if self.lr <= 0 or not 0 <= self.ema < 1 or not 0 <= self.class_dropout < 1:
            raise ConfigError("flow: --lr must be positive, --ema and --class-dropout in [0, 1)")


@dataclass
class _Latents:
    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor


def _latents(data: RealData, space: LatentSpace) -> _Latents:
    train, val = latent_bank(data, space, "train"), latent_bank(data, space, "val")
    shape = (-1, *space.latent_shape)
    return _Latents(train.tensor().view(shape), train.labels.long(), val.tensor().view(shape), val.labels.long())


def fit_flow(
    net: nn.Module,
    params: Iterable[nn.Parameter],
    lat: _Latents,
    class_ids: torch.Tensor,
    null_class: int | None,
    name: str,
    steps: int,
    batch_size: int,
    lr: float,
    ema_decay: float,
    dropout: float,
    time_sampling: str,
    seed: int,
    checkpoint: Path | None,
    every: int,
    device: torch.device,
) -> tuple[nn.Module, list[float], float]:
    """Train ``net`` (only ``params``) with the flow-matching loss; returns the EMA copy, the losses and the
    loss of the EMA on the validation latents (fixed noise and times)."""
    params = list(params)
    net.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=0.1 * lr)
    ema = weight_ema(net, ema_decay, warmup=True)  # warm-up: a short (fine-tuning) run does not keep the init
    generator = torch.Generator().manual_seed(seed)
    ids = class_ids.to(device)
    n = len(lat.train)

    def step(_: int) -> float:
        idx = torch.randint(n, (min(batch_size, n),), generator=generator)
        x1, y = lat.train[idx].to(device), ids[lat.train_labels[idx].to(device)]
        loss = flow_matching_loss(net, x1, y, generator, null_class, dropout, time_sampling)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        ema.update_parameters(net)
        return float(loss.detach())

    net.train()
    losses = train_resumable(
        name,
        steps,
        step,
        {"net": net, "ema": ema, "optimizer": optimizer, "schedule": schedule},
        checkpoint,
        every=every,
        generator=generator,
    )
    averaged = ema.module.eval()
    return averaged, losses, validation_loss(averaged, lat, ids, null_class, device)


@torch.no_grad()
def validation_loss(
    net: nn.Module, lat: _Latents, ids: torch.Tensor, null_class: int | None, device: torch.device, limit: int = 4000
) -> float:
    """Flow-matching loss on (at most ``limit``) validation latents with fixed noise and times (comparable
    across runs; selection of training length uses this, never the test split)."""
    g = torch.Generator().manual_seed(1234)
    x1, y = lat.val[:limit].to(device), ids.to(device)[lat.val_labels[:limit].to(device)]
    losses = [
        float(flow_matching_loss(net, a, b, g, null_class, 0.0)) * len(a)
        for a, b in zip(x1.split(500), y.split(500), strict=True)
    ]
    return sum(losses) / max(1, len(x1))


@dist.on_main_alone_first  # under torchrun rank 0 trains into the cache, then the others load it
def train_flow(data: RealData, opts: FlowTrainOptions, device: torch.device) -> Path:
    """Train (resumably) or reuse the offline velocity network for ``data``; returns its folder."""
    space = latent_space_from(opts, data, device)
    ident = latent_model_identity("flow-mlp/1", data, space, opts)
    cached = CachedModel("flow", ident)
    if cached.done():
        return cached.folder
    lat = _latents(data, space)
    torch.manual_seed(opts.seed)
    net = VelocityMLP(space.latent_shape, data.num_classes, opts.width, opts.depth, opts.class_dropout).to(device)
    null = data.num_classes if opts.class_dropout > 0 else None
    ema, losses, val = fit_flow(
        net,
        net.parameters(),
        lat,
        torch.arange(data.num_classes),
        null,
        f"flow {data.name}",
        opts.steps,
        opts.batch_size,
        opts.lr,
        opts.ema,
        opts.class_dropout,
        opts.time_sampling,
        opts.seed,
        cached.checkpoint,
        opts.checkpoint_every,
        device,
    )
    config = {
        "latent_shape": list(space.latent_shape),
        "class_ids": list(range(data.num_classes)),
        "classes": list(data.classes),
        "dataset": data.name,
        "latent_space": space.identity(),
        "weights": f"velocity MLP trained by datadistill on {data.name} latents ({opts.steps} steps, "
        f"key {cached.folder.name})",
        "train_options": ident,
        "final_train_loss": losses[-1] if losses else None,
        "val_loss": val,
    }
    folder = cached.save(lambda tmp: save_flow(tmp, ema, "mlp", config))
    log.info("flow model for %s in %s (val loss %.4f)", data.name, folder, val)
    return folder


# ---- fine-tuning a loaded model on the target classes (DiffFit-style parameter subsets, as Minimax) -----------


def difffit_parameters(net: nn.Module) -> list[nn.Parameter]:
    """Biases, class embedding and adaLN modulation: the parameter subset DiffFit/Minimax fine-tune."""
    keep = []
    for name, p in net.named_parameters():
        if name.endswith(".bias") or "y_embed" in name or "adaLN_modulation" in name or ".mod." in name:
            keep.append(p)
    return keep


def finetune_flow(
    flow: FlowModel,
    data: RealData,
    space: LatentSpace,
    steps: int,
    lr: float,
    params: str,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> FlowModel:
    """Fine-tune ``flow`` on the train latents of ``data`` (cached by data, space, source weights and options)."""
    if tuple(flow.latent_shape) != tuple(space.latent_shape):
        raise ConfigError(
            f"the flow model's latents {tuple(flow.latent_shape)} differ from the latent space's "
            f"{tuple(space.latent_shape)}"
        )
    ident = {
        "format": "flow-finetune/1",
        "source": flow.weights,
        "data": data.fingerprint(),
        "latent_space": space.identity(),
        "steps": steps,
        "lr": lr,
        "params": params,
        "batch_size": batch_size,
        "seed": seed,
    }
    cached = CachedModel("flow-finetune", ident)
    if not cached.done():
        net = copy.deepcopy(flow.net).to(device).requires_grad_(True)
        chosen = difffit_parameters(net) if params == "difffit" else list(net.parameters())
        ema, _, val = fit_flow(
            net,
            chosen,
            _latents(data, space),
            flow.class_ids,
            flow.null_class,
            f"finetune flow {data.name}",
            steps,
            batch_size,
            lr,
            0.999,
            0.1,
            "uniform",
            seed,
            cached.checkpoint,
            max(1, steps // 10),
            device,
        )
        config = {
            "latent_shape": list(flow.latent_shape),
            "class_ids": flow.class_ids.tolist(),
            "weights": f"{flow.weights}, fine-tuned on {data.name} ({params}, {steps} steps, key {cached.folder.name})",
            "train_options": ident,
            "val_loss": val,
        }
        cached.save(lambda tmp: save_flow(tmp, ema, flow.arch, config))
    return load_flow_folder(cached.folder, data)


register_pretrainer(
    Pretrainer(
        "flow", "class-conditional latent flow-matching velocity network (offline, PGFM)", FlowTrainOptions, train_flow
    )
)


# ---- what a generative method asks for ---------------------------------------------------------------------------


@dataclass
class FlowOptions:
    flow: str = option(
        "tiny",
        "flow model: 'tiny' (offline velocity MLP, trained and cached by `datadistill pretrain "
        "flow`), a flow folder written by datadistill, or a SiT checkpoint file (.pt / "
        ".safetensors in SiT's layout, e.g. SiT-XL-2-256x256.pt)",
    )
    flow_heads: int | None = option(None, "attention heads of a SiT checkpoint (default: the SiT zoo's for its width)")
    flow_steps: int = option(8000, "training steps of the offline 'tiny' flow model when it is not cached yet")
    finetune_steps: int = option(0, "fine-tune the flow model on the target classes for N steps first (0: off)")
    finetune_params: str = option(
        "difffit",
        "parameters to fine-tune: DiffFit subset (bias, norm, class embedding, adaLN) or all",
        ("difffit", "all"),
    )
    finetune_lr: float = option(1e-4, "fine-tuning learning rate")

    def validate(self) -> None:
        at_least(self, 1, "flow_heads", "flow_steps")
        at_least(self, 0, "finetune_steps")
        positive(self, "finetune_lr")


def check_flow_spec(opts: FlowOptions) -> Path | None:
    """The flow model's path (None for the offline one); a missing path fails here, before anything is trained."""
    if opts.flow in ("tiny", "offline"):
        return None
    path = Path(opts.flow).expanduser()
    if not path.exists():
        raise WeightsError(f"flow model {path} not found (a datadistill flow folder or a SiT checkpoint file)")
    return path


def flow_model_from(
    opts: FlowOptions, latent: LatentOptions, data: RealData, space: LatentSpace, device: torch.device, seed: int = 0
) -> FlowModel:
    """The flow model the options ask for, on ``device``: trained offline or loaded, then optionally fine-tuned."""
    from ..models.generative.flow import load_sit_checkpoint

    if opts.flow in ("tiny", "offline"):
        lat = {k: getattr(latent, k) for k in LatentOptions.__dataclass_fields__}
        folder = train_flow(data, FlowTrainOptions(**lat, steps=opts.flow_steps), device)
        flow = load_flow_folder(folder, data)
    else:
        path = check_flow_spec(opts)
        flow = load_flow_folder(path, data) if path.is_dir() else load_sit_checkpoint(path, data, opts.flow_heads)
    if tuple(flow.latent_shape) != tuple(space.latent_shape):
        raise ConfigError(
            f"the flow model works on latents {tuple(flow.latent_shape)} but the latent space gives "
            f"{tuple(space.latent_shape)}: pick a matching --vae / --vae-image-size"
        )
    flow.net.to(device)
    if opts.finetune_steps > 0:
        flow = finetune_flow(
            flow, data, space, opts.finetune_steps, opts.finetune_lr, opts.finetune_params, 128, seed, device
        )
        flow.net.to(device)
    return flow


def flow_matching_loss(
    net: nn.Module,
    x1: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator,
    null_class: int | None,
    dropout: float = 0.1,
    time_sampling: str = "uniform",
) -> torch.Tensor:
    """L_FM = E ||v(x_t, t, y) - (x_1 - eps)||^2 with x_t = t x_1 + (1 - t) eps; labels dropped to the null
    class with probability ``dropout``. ``time_sampling``: uniform (SiT) or logit-normal (SD3)."""
    b = len(x1)
    eps = torch.randn(x1.shape, generator=generator).to(x1.device)
    if time_sampling == "logit-normal":
        t = torch.sigmoid(torch.randn(b, generator=generator))
    else:
        t = torch.rand(b, generator=generator)
    drop = torch.rand(b, generator=generator) < dropout
    t, drop = t.to(x1.device), drop.to(x1.device)
    if null_class is not None and dropout > 0:
        y = torch.where(drop, torch.full_like(y, null_class), y)
    tt = t.view(-1, *([1] * (x1.ndim - 1)))
    xt = tt * x1 + (1 - tt) * eps
    return F.mse_loss(net(xt, t, y), x1 - eps)
