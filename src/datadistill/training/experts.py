"""Expert trajectories (docs/methods/tgdd.md): N ConvNets trained on the real train split, a snapshot of the
parameters at epoch 0 (init) and after every epoch.

``datadistill pretrain experts --data D`` trains them once (resumably: a checkpoint per epoch and the snapshots
written as they come) and caches every expert in its own folder keyed by (data, options, seed), so a set of 5
reuses a set of 3. ``TrajectoryStore.load`` reads a set ONCE into memory, one stacked tensor per parameter
(epochs x shape), and ``sample_pair`` returns views of two snapshots for ``torch.func.functional_call``: no
checkpoint is re-read and no module is rebuilt per iteration (the official code re-reads two files every
iteration; see benchmarks/trajectory_memory_vs_disk.py).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from ..core import dist
from ..core.errors import ConfigError, DatadistillError
from ..core.io import atomic_dir, previous_checkpoint, remove_checkpoint, write_json
from ..core.options import at_least, option
from ..core.progress import log
from ..data import RealData
from ..data.augment import DSA
from ..data.memory import in_memory
from ..models.architectures import ModelSpec, build_model, check_arch
from .loop import train_resumable
from .pretrainers import Pretrainer, checkpoint_path, model_dir, register_pretrainer
from .supervised import InputNorm, Recipe, accuracy, make_optimizer, train_epoch

# Experts are read with functional_call, so they must not carry buffers (batch-norm running statistics).
EXPERT_ARCHS = ("convnet", "convnet-nn")


@dataclass
class ExpertOptions:
    num_experts: int = option(5, "expert networks trained on the real train split (TGDD: 5)")
    expert_epochs: int = option(
        60, "training epochs per expert; a snapshot after each (TGDD: 60 low-res, 80 for the ImageNet subsets)"
    )
    expert_epoch_images: int | None = option(
        None,
        "images per expert epoch (default: the whole train split; fewer "
        "gives shorter snapshot intervals for CPU-sized runs)",
    )
    expert_arch: str = option("convnet", "expert architecture", EXPERT_ARCHS)
    expert_width: int | None = option(None, "expert width (default 128)")
    expert_depth: int | None = option(None, "expert depth (default: from the resolution, 3 for 28-32 px)")
    expert_resolution: int | None = option(None, "expert input size (default: the dataset's own)")
    expert_lr: float = option(0.01, "SGD lr (momentum 0.9, wd 5e-4, x0.2 at 2/3 and 5/6 of the epochs)")
    expert_batch: int = option(64, "training batch size (TGDD pretrain: 64)")
    expert_dsa: str = option("color_crop", "per-sample DSA strategy while training experts ('none': off)")
    expert_cutmix: float = option(0.5, "CutMix probability per batch (TGDD pretrain: 0.5 for the low-res sets)")
    expert_seed: int = option(3407, "seed of expert 0; expert k uses seed + k")
    expert_val_every: int = option(1, "record the validation accuracy every N epochs (0: never)")

    def validate(self) -> None:
        if self.num_experts < 1 or self.expert_epochs < 1 or self.expert_batch < 1:
            raise ConfigError("--num-experts, --expert-epochs and --expert-batch must be at least 1")
        if self.expert_epoch_images is not None and self.expert_epoch_images < 1:
            raise ConfigError("--expert-epoch-images must be at least 1")
        if self.expert_lr <= 0 or not 0 <= self.expert_cutmix <= 1 or self.expert_val_every < 0:
            raise ConfigError("--expert-lr must be positive, --expert-cutmix in [0, 1], --expert-val-every >= 0")
        at_least(self, 1, "expert_width", "expert_depth", "expert_resolution")
        DSA(self.expert_dsa, mode="idc")
        check_arch(self.expert_arch)

    def expert_settings(self) -> dict:
        """Only the expert fields (methods that embed these options have more)."""
        return {f.name: getattr(self, f.name) for f in fields(ExpertOptions)}


def expert_options(opts, **overrides) -> ExpertOptions:
    """The ``ExpertOptions`` part of ``opts`` (any dataclass that inherits from it)."""
    return replace(ExpertOptions(**{f.name: getattr(opts, f.name) for f in fields(ExpertOptions)}), **overrides)


def _spec(data: RealData, opts: ExpertOptions) -> tuple[ModelSpec, int]:
    resolution = opts.expert_resolution or data.native_size
    split = in_memory(data.train, resolution, data.num_classes)
    return ModelSpec(
        opts.expert_arch, data.num_classes, split.channels, resolution, opts.expert_width, opts.expert_depth
    ), resolution


def _recipe(opts: ExpertOptions) -> Recipe:
    dsa = None if opts.expert_dsa.lower() in ("", "none") else DSA(opts.expert_dsa, mode="idc")
    return Recipe(
        epochs=opts.expert_epochs,
        batch_size=opts.expert_batch,
        lr=opts.expert_lr,
        milestones=(2 / 3, 5 / 6),
        gamma=0.2,
        dsa=dsa,
        cutmix=opts.expert_cutmix,
        epoch_images=opts.expert_epoch_images,
    )


def _ident(data: RealData, opts: ExpertOptions, seed: int) -> dict:
    settings = {k: v for k, v in opts.expert_settings().items() if k not in ("num_experts", "expert_seed")}
    spec, resolution = _spec(data, opts)
    return {
        "data": data.fingerprint(),
        **settings,
        "expert_resolution": resolution,
        "seed": seed,
        "channels": spec.channels,
    }


class _ExpertState:
    """The resumable state of one expert's training (``train_resumable`` checkpoints it every epoch)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self.val_acc: list[float | None] = []
        self.train_loss: list[float] = []

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "val_acc": [-1.0 if v is None else v for v in self.val_acc],
            "train_loss": self.train_loss,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.val_acc = [None if v < 0 else v for v in state["val_acc"]]
        self.train_loss = list(state["train_loss"])


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def train_expert(data: RealData, opts: ExpertOptions, k: int, device: torch.device) -> Path:
    """Train (or reuse) expert ``k``; returns its folder (``trajectory.safetensors`` + ``info.json``)."""
    from safetensors.torch import load_file, save_file

    seed = opts.expert_seed + k
    ident = _ident(data, opts, seed)
    folder = model_dir("experts", ident)
    if (folder / "info.json").exists():
        return folder
    spec, resolution = _spec(data, opts)
    train = in_memory(data.train, resolution, data.num_classes)
    val = in_memory(data.val, resolution, data.num_classes)
    norm = InputNorm.of(train)
    recipe = _recipe(opts)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(spec, generator).to(device)
    state = _ExpertState(model, make_optimizer(model, recipe))
    staging = folder.parent / f".{folder.name}.snapshots"
    staging.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_path("experts", ident)

    def save_epoch(j: int) -> None:
        tmp = staging / f".epoch{j}.tmp"
        save_file(_snapshot(state.model), str(tmp))
        tmp.replace(staging / f"epoch{j}.safetensors")

    if not ckpt.exists() and not previous_checkpoint(ckpt).exists():
        save_epoch(0)

    def step(i: int) -> float:
        loss = train_epoch(state.model, norm, train, recipe, i - 1, state.optimizer, generator, device)
        save_epoch(i)
        every = opts.expert_val_every
        val_acc = accuracy(state.model, norm, val, device) if every and (i % every == 0 or i == recipe.epochs) else None
        state.val_acc.append(val_acc)
        state.train_loss.append(round(loss, 6))
        return loss

    log.info("training expert %d (seed %d) on %s: %d epochs", k, seed, data.name, recipe.epochs)
    train_resumable(f"expert {k}", recipe.epochs, step, {"expert": state}, ckpt, every=1, generator=generator)
    snapshots = [load_file(str(staging / f"epoch{j}.safetensors")) for j in range(recipe.epochs + 1)]
    stacked = {name: torch.stack([s[name] for s in snapshots]).contiguous() for name in snapshots[0]}
    with atomic_dir(folder) as tmp:
        save_file(stacked, str(tmp / "trajectory.safetensors"))
        write_json(
            tmp / "info.json",
            {
                "spec": spec.to_dict(),
                "norm": norm.to_dict(),
                "epochs": recipe.epochs,
                "seed": seed,
                "dataset": data.name,
                "val_acc": state.val_acc,
                "train_loss": state.train_loss,
                "options": ident,
            },
        )
    shutil.rmtree(staging, ignore_errors=True)
    remove_checkpoint(ckpt)
    return folder


@dist.on_main_alone_first  # under torchrun rank 0 trains into the cache, then the others load it
def train_experts(data: RealData, opts: ExpertOptions, device: torch.device) -> Path:
    """Train (or reuse) experts 0..N-1; returns the set's folder, which lists the experts' folders."""
    folders = [train_expert(data, opts, k, device) for k in range(opts.num_experts)]
    ident = {"experts": [f.name for f in folders]}
    out = model_dir("expert-sets", ident)
    if not (out / "set.json").exists():
        with atomic_dir(out) as tmp:  # names, not paths: the cache stays valid when moved
            write_json(tmp / "set.json", {"experts": [f.name for f in folders], "options": asdict(opts)})
    return out


register_pretrainer(
    Pretrainer(
        "experts",
        "expert trajectories for TGDD: N ConvNets trained on the real data, a parameter snapshot per epoch",
        ExpertOptions,
        train_experts,
    )
)


class TrajectoryStore:
    """All snapshots of a set of experts in memory: ``trajectories[i][name]`` is (epochs + 1) x shape."""

    def __init__(
        self, spec: ModelSpec, norm: InputNorm, trajectories: list[dict[str, torch.Tensor]], infos: list[dict]
    ):
        lengths = {next(iter(t.values())).shape[0] for t in trajectories}
        if len(lengths) != 1:
            raise DatadistillError(f"experts of one set must have the same number of snapshots, got {lengths}")
        self.spec, self.norm, self.trajectories, self.infos = spec, norm, trajectories, infos
        self.epochs = lengths.pop() - 1
        self._model: nn.Module | None = None

    @property
    def num_experts(self) -> int:
        return len(self.trajectories)

    @classmethod
    def load(cls, folder: str | Path, device: torch.device | str = "cpu") -> TrajectoryStore:
        """Read a set (``pretrain experts`` output) or a single expert folder into memory, once."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if (folder / "set.json").exists():
            names = json.loads((folder / "set.json").read_text())["experts"]
            expert_dirs = [folder.parent.parent / "experts" / name for name in names]
        else:
            expert_dirs = [folder]
        trajectories, infos = [], []
        for d in expert_dirs:
            if not (d / "info.json").exists():
                raise DatadistillError(f"no expert trajectory in {d}; run `datadistill pretrain experts` again")
            infos.append(json.loads((d / "info.json").read_text()))
            trajectories.append({k: v.to(device) for k, v in load_file(str(d / "trajectory.safetensors")).items()})
        spec = ModelSpec(**infos[0]["spec"])
        return cls(spec, InputNorm.from_dict(infos[0]["norm"]), trajectories, infos)

    def params(self, i: int, j: int) -> dict[str, torch.Tensor]:
        """Expert ``i`` after epoch ``j`` (0 = init): views into the stacked tensors, no copy."""
        return {name: t[j] for name, t in self.trajectories[i].items()}

    @property
    def model(self) -> nn.Module:
        """A parameter-free skeleton to run snapshots through with ``functional_call``."""
        if self._model is None:
            model = build_model(self.spec, torch.Generator().manual_seed(0))
            device = next(iter(self.trajectories[0].values())).device
            self._model = model.to(device).requires_grad_(False)
        return self._model

    def sample_indices(self, region: int, generator: torch.Generator) -> tuple[int, int, int]:
        """(i, j, j'): expert i ~ U{0..N-1}, start j ~ U{0..E}, j' ~ U{j..min(j + region - 1, E)}."""
        i = int(torch.randint(self.num_experts, (1,), generator=generator))
        j = int(torch.randint(self.epochs + 1, (1,), generator=generator))
        end = min(j + region - 1, self.epochs)
        j2 = int(torch.randint(j, end + 1, (1,), generator=generator))
        return i, j, j2

    def sample_pair(self, region: int, generator: torch.Generator):
        """(extractor params at epoch j, expert params at epoch j' in [j, j + region - 1]) of one random expert."""
        i, j, j2 = self.sample_indices(region, generator)
        return self.params(i, j), self.params(i, j2)

    def run(self, params: dict[str, torch.Tensor], x: torch.Tensor, features: bool = False) -> torch.Tensor:
        """Logits (or features) of normalised input ``x`` through the snapshot ``params``."""
        return functional_call(self.model, params, (x,), {"features": features})
