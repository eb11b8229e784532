"""SFM, DM and TGDD losses on tiny tensors against values computed by hand from their definitions.

The networks are stand-ins (identity features, a per-channel mean, a scaled mean with a 2-class linear head), so
every expected number below can be checked with pencil and paper.
"""

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from datadistill.data.augment import DSA
from datadistill.data.memory import MemorySplit
from datadistill.methods.dm import DM
from datadistill.methods.sfm import SFM
from datadistill.methods.tgdd import TGDD
from datadistill.synset.params import RawPixelParam
from datadistill.training.supervised import InputNorm

# ---- SFM -------------------------------------------------------------------------------------------------------
# Real class means mu (3 classes x 2 features); the synthetic set has 2 images per class whose "features" are
# their two pixels (identity backbone). By hand:
#   nu_c = (sum_j mu_j - mu_c) / 2 = (0.5, 1), (1, 0.5), (0.5, 0.5);  F* = nu - mu = (-.5, 1), (1, -.5), (-.5, -.5)
#   synthetic class means s = (1, 0), (1, 2), (1, 1), their sum (3, 3)
#   --flow-norm classes (/ C-1 = 2):  n = (1, 1.5), (1, .5), (1, 1);  F = n - s = (0, 1.5), (0, -1.5), (0, 0)
#       cos = 2.25 / (sqrt 3 * sqrt 4.5)
#   --flow-norm images (/ mC-1 = 5):  n = (.4, .6), (.4, .2), (.4, .4);  F = (-.6, .6), (-.6, -1.8), (-.6, -.6)
#       cos = 1.8 / (sqrt 3 * sqrt 5.04)
#   decoupled: MSE(s, mu) = 2 / 6 (only s_1 - mu_1 = (1, 1) is off); MSE(n, nu) with /2 = 4 * 0.25 / 6
MU = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
SYN_FEATURES = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
COS_CLASSES = 2.25 / (math.sqrt(3) * math.sqrt(4.5))
COS_IMAGES = 1.8 / (math.sqrt(3) * math.sqrt(5.04))


class _Backbone(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)  # the two "pixels" of a 2 x 1 x 1 image are its features


class _Views:
    """A stand-in augmentation: ``transform`` of all the views at once (draws nothing)."""

    def __init__(self, transform):
        self.transform = transform

    def draw(self, n: int, generator: torch.Generator) -> range:
        return range(n)

    def apply(self, x: torch.Tensor, draw) -> torch.Tensor:
        return self.transform(x)


def _sfm_loss(flow_norm: str, decouple_alpha: float | None, augs: int = 1, augment=None) -> float:
    opts = SimpleNamespace(flow_norm=flow_norm, decouple_alpha=decouple_alpha, augs=augs, noise_mean=0.0, view_chunk=0)
    ctx = SimpleNamespace(
        opts=opts,
        stats=SimpleNamespace(means=MU),
        device=torch.device("cpu"),
        crop=1,
        class_labels=lambda: torch.arange(3).repeat_interleave(2),
        initial_param=lambda: None,
        backbone=_Backbone(),
        generator=torch.Generator().manual_seed(0),
    )
    sfm = SFM()
    sfm.init_param(ctx)
    sfm.augment = _Views(augment or (lambda x: x))  # no augmentation: the features are the pixels
    return float(sfm.loss(ctx, SYN_FEATURES.view(6, 2, 1, 1)).detach())


@pytest.mark.parametrize(
    "flow_norm, alpha, expected",
    [
        ("classes", None, 1 - COS_CLASSES),
        ("images", None, 1 - COS_IMAGES),
        ("classes", 0.25, 0.25 * 2 / 6 + 0.75 * 1 / 6),
        ("classes", 1.0, 2 / 6),  # TCDD: class centres only
        ("classes", 0.0, 1 / 6),  # NCDD: non-target centres only
    ],
)
def test_sfm_loss_by_hand(flow_norm, alpha, expected):
    assert _sfm_loss(flow_norm, alpha) == pytest.approx(expected, rel=1e-6)


def test_sfm_averages_the_views_of_each_image():
    # views are view-major (all images' first view, then all second views): +1 and -1 average back to the image
    def shifted_views(x):
        n = len(x) // 2
        return torch.cat([x[:n] + 1, x[n:] - 1])

    assert _sfm_loss("classes", None, augs=2, augment=shifted_views) == pytest.approx(1 - COS_CLASSES, rel=1e-6)


# ---- DM and TGDD --------------------------------------------------------------------------------------------------
# Two classes of 1-channel 2 x 2 real images, normalised with mean 0.5, std 0.25:
#   class 0: pixels 0.2 and 0.4 -> -1.2, -0.4;  class 1: pixels 1.0 and 0.8 -> 2.0, 1.2
# synthetic: one image per class, pixels 0.5 (-> 0) and 0.75 (-> 1).
NORM = InputNorm(torch.tensor([0.5]), torch.tensor([0.25]))
REAL = MemorySplit(
    torch.tensor([51, 102, 255, 204], dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous(),
    torch.tensor([0, 0, 1, 1]),
    2,
)
SYN = torch.tensor([0.5, 0.75]).view(2, 1, 1, 1).expand(2, 1, 2, 2)


class _ScaledMean(nn.Module):
    """Features: ``scale`` x the image's mean (one per channel); logits: a linear head on them."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.weight = nn.Parameter(torch.tensor([[1.0], [-1.0]]))
        self.bias = nn.Parameter(torch.zeros(2))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        z = self.embed(x)
        return z if features else z @ self.weight.T + self.bias


class _Pixels(nn.Module):
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor:
        return self.embed(x)


def _matching_ctx(opts) -> SimpleNamespace:
    return SimpleNamespace(
        opts=opts,
        data=SimpleNamespace(num_classes=2),
        config=SimpleNamespace(ipc=1),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
    )


def _dm(strategy: str) -> tuple[DM, SimpleNamespace]:
    dm = DM()
    dm.real, dm.norm, dm.net, dm.labels = REAL, NORM, _ScaledMean(), torch.tensor([0, 1])
    dm.classes, dm.shares_classes = range(2), True  # one process matches every class
    dm.dsa = DSA(strategy, mode="all")
    return dm, _matching_ctx(SimpleNamespace(batch_real=8))


def test_dm_loss_by_hand():
    # real feature means -0.8 and 1.6, synthetic 0 and 1: (0.8)^2 + (0.6)^2
    dm, ctx = _dm("none")
    assert float(dm.loss(ctx, SYN.expand(2, 3, 2, 2)).detach()) == pytest.approx(0.64 + 0.36, rel=1e-6)


def test_dm_shares_one_augmentation_draw_per_class():
    # pixels as features: a synthetic image equal to its class's only real image matches it exactly when both
    # get the same draw (Siamese augmentation), whatever the draw
    dm, ctx = _dm("color_crop_flip_scale_rotate")
    dm.net = _Pixels()
    g = torch.Generator().manual_seed(1)
    dm.real = MemorySplit(torch.randint(0, 256, (2, 1, 4, 4), generator=g, dtype=torch.uint8), torch.tensor([0, 1]), 2)
    for seed in range(3):
        ctx.generator.manual_seed(seed)
        assert float(dm.loss(ctx, dm.real.batch().expand(2, 3, 4, 4)).detach()) == pytest.approx(0.0, abs=1e-10)


def test_tgdd_step_by_hand():
    # extractor: features 2 x mean -> real class means -1.6 and 3.2, synthetic 0 and 2
    #   MMD: 1.6^2 = 2.56 and 1.2^2 = 1.44
    # expert: features 1 x mean = 0 and 1, logits (z, -z): CE = ln 2 and ln(1 + e^2)
    # one SGD step per class: class 1's loss is taken on its unchanged image (class 0's step moved only class 0)
    model = _ScaledMean()
    extractor = {name: p.detach() for name, p in _ScaledMean(2.0).named_parameters()}
    expert = {name: p.detach() for name, p in _ScaledMean(1.0).named_parameters()}
    store = SimpleNamespace(
        model=model,
        norm=NORM,
        sample_pair=lambda region, g: (extractor, expert),
        run=lambda params, x, features=False: torch.func.functional_call(model, params, (x,), {"features": features}),
    )
    tgdd = TGDD(store)
    tgdd.real, tgdd.norm, tgdd.dsa, tgdd.alpha = REAL, NORM, DSA("none"), 0.5
    ctx = _matching_ctx(SimpleNamespace(region=2, batch_real=8, factor=1, max_syn=200))
    param = RawPixelParam(SYN.clone())
    optimizer = torch.optim.SGD(param.parameters(), lr=0.1, momentum=0.5)
    value = tgdd.train_step(ctx, param, optimizer, contextlib.nullcontext())
    losses = [2.56 + 0.5 * math.log(2), 1.44 + 0.5 * math.log(1 + math.e**2)]
    assert value == pytest.approx(sum(losses) / 2, rel=1e-6)
    moved = param.render().detach()[:, 0, 0, 0]
    assert float(moved[0]) < 0.5 and float(moved[1]) > 0.75  # towards their classes' real means, 0.3 and 0.9
