import pytest
import torch
from torch import nn

from datadistill.core.errors import ConfigError
from datadistill.models.architectures import ARCHITECTURES, ModelSpec, build_model, init_parameters_
from datadistill.models.convnet import ConvNet, default_depth
from datadistill.models.resnet import ResNet


def test_convnet_shapes_follow_the_papers():
    assert [default_depth(r) for r in (28, 32, 64, 128)] == [3, 3, 4, 5]
    net = ConvNet(10, channels=1, resolution=28)  # first conv pads by 3: 32 -> 16 -> 8 -> 4
    assert net.feat_dim == 128 * 4 * 4
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert net(torch.rand(2, 1, 28, 28), features=True).shape == (2, 2048)
    assert ConvNet(10, 3, 32).feat_dim == 2048 and ConvNet(10, 3, 128).feat_dim == 128 * 4 * 4
    norms = [type(m) for m in net.features if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 and all(
        m.num_groups == m.num_channels == 128 for m in net.features if isinstance(m, nn.GroupNorm)
    )
    assert sum(isinstance(m, nn.AvgPool2d) for m in net.features) == 3


def test_instance_norm_makes_samples_independent():
    net = ConvNet(10, 3, 16).train()
    x = torch.rand(5, 3, 16, 16)
    assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-5)
    bn = ConvNet(10, 3, 16, norm="batch").train()
    assert not torch.allclose(bn(x)[:1], bn(x[:1]), atol=1e-3)


def test_models_are_functions_of_their_generator():
    spec = ModelSpec("convnet", 10, 1, 28)
    a = build_model(spec, torch.Generator().manual_seed(1))
    b = build_model(spec, torch.Generator().manual_seed(1))
    c = build_model(spec, torch.Generator().manual_seed(2))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["features.0.weight"], sc["features.0.weight"])
    init_parameters_(c, torch.Generator().manual_seed(1))  # in-place re-draw = a fresh model of that seed
    assert all(torch.equal(sa[k], c.state_dict()[k]) for k in sa)
    w = sa["features.0.weight"]
    assert float(w.abs().max()) <= 1 / (1 * 9) ** 0.5 + 1e-6  # default bound: 1/sqrt(fan_in)


@pytest.mark.parametrize(
    "arch", ["resnet10-bn", "resnet10-in", "resnet18-bn", "resnet18-in", "resnet10-ap", "convnet-bn", "convnet-nn"]
)
def test_cross_architectures_run_at_28_and_32_px(arch):
    for res, ch in ((28, 1), (32, 3)):
        model = build_model(ModelSpec(arch, 10, ch, res, width=8), torch.Generator().manual_seed(0))
        assert model(torch.rand(2, ch, res, res)).shape == (2, 10)
        assert model.embed(torch.rand(2, ch, res, res)).shape == (2, model.feat_dim)
    assert set(ARCHITECTURES) >= {"convnet", "resnet10-bn", "resnet18-bn", "resnet10-ap"}


def test_resnet_ap_downsamples_by_average_pooling():
    ap = ResNet(10, 10, 3, 64, norm="instance", avgpool_down=True, width=8)
    convs = [m for m in ap.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.stride == (1, 1) for m in convs)
    assert all(isinstance(m, nn.GroupNorm) for m in ap.modules() if isinstance(m, nn.GroupNorm | nn.BatchNorm2d))
    plain = ResNet(10, 10, 3, 64, norm="batch", width=8)
    assert any(m.stride == (2, 2) for m in plain.modules() if isinstance(m, nn.Conv2d))
    for res in (96, 160):  # the 'mid' and 'large' stems of ResNet-AP (avg pool 2 / 4 after the first conv)
        net = build_model(ModelSpec("resnet10-ap", 10, 3, res, width=8), torch.Generator().manual_seed(0))
        assert net(torch.rand(1, 3, res, res)).shape == (1, 10)
    assert ap.feat_dim == 64 and ResNet(10, 10).feat_dim == 512


def test_unknown_architecture_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_model(ModelSpec("vgg11", 10, 3, 32))
    with pytest.raises(ConfigError, match="too deep"):
        build_model(ModelSpec("convnet", 10, 3, 8, depth=5))
