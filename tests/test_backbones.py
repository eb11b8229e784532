import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from datadistill.core.errors import WeightsError
from datadistill.features.backbones import load_backbone


def test_offline_weights_are_real_imagenet_weights(lite0):
    skimage = pytest.importorskip("skimage")
    img = torch.tensor(skimage.data.chelsea()).permute(2, 0, 1).float()[None] / 255
    x = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = lite0.model(lite0.normalize(x)).argmax(dim=1).item()
    assert 281 <= top <= 285, f"chelsea.png classified as ImageNet class {top}, not a cat"
    assert "efficientnet-lite0" in lite0.weights


def test_frozen_features_pass_gradients_to_input(lite0):
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    f = lite0(x)
    assert f.shape == (2, 1280)
    f.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lite0.parameters())
    lite0.train()
    assert not lite0.model.training


def test_unknown_backbone_lists_known():
    with pytest.raises(WeightsError, match="efficientnet_lite0"):
        load_backbone("resnet9000")


def test_missing_weights_path_is_an_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_backbone("efficientnet_lite0", weights=str(tmp_path / "missing.pth"))
    with pytest.raises(WeightsError, match="not found"):
        load_backbone("dinov2_vits14", weights=str(tmp_path / "missing.pth"))


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['DD_EVIL_MARK']}",))


def test_malicious_pickle_weights_are_refused(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("DD_EVIL_MARK", str(mark))
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(WeightsError):
        load_backbone("efficientnet_lite0", weights=str(path))
    assert not mark.exists()
