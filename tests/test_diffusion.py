"""DDPM schedule, respacing, sampler hooks, and loading diffusers DiT weights from a local folder."""

import copy
import json

import numpy as np
import pytest
import torch

from datadistill.core.errors import WeightsError
from datadistill.models.generative.dit import DiTDenoiser, load_dit, tiny_dit, untie
from datadistill.sampling.ddpm import SamplerHook, ddpm_sample, guided_eps
from datadistill.sampling.diffusion import GaussianDiffusion, space_timesteps, training_loss


def test_respacing_keeps_the_marginals():
    kept = space_timesteps(1000, "50")
    assert len(kept) == 50 and kept[:4] == [0, 20, 41, 61] and kept[-1] == 999
    full = GaussianDiffusion.linear(1000)
    spaced = GaussianDiffusion.linear(1000, "50")
    np.testing.assert_allclose(spaced.alphas_cumprod, full.alphas_cumprod[kept], rtol=1e-12)
    assert spaced.num_steps == 50 and full.betas[0] == pytest.approx(1e-4) and full.betas[-1] == pytest.approx(0.02)
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert len(space_timesteps(100, "10,5")) == 15


def test_learned_range_variance_spans_posterior_to_beta():
    d = GaussianDiffusion.linear(1000, "50")
    like = torch.zeros(1, 1, 1, 1)
    idx = torch.tensor([30])
    low = d.model_log_variance(torch.full_like(like, -1.0), idx, like)
    high = d.model_log_variance(torch.full_like(like, 1.0), idx, like)
    assert float(low) == pytest.approx(d.posterior_log_variance_clipped[30], rel=1e-6)
    assert float(high) == pytest.approx(np.log(d.betas[30]), rel=1e-6)
    assert float(d.model_log_variance(None, idx, like)) == pytest.approx(float(low), rel=1e-6)


class _Linear(torch.nn.Module):
    """eps = a * x + label-dependent offset, variance values var_per_label * label (0: mid-range); records calls."""

    num_classes, null_class, learn_sigma, in_channels, sample_size = 3, 3, True, 4, 2

    def __init__(self, var_per_label: float = 0.0):
        super().__init__()
        self.calls = []
        self.var_per_label = var_per_label

    def forward(self, x, t, y, embedding_transform=None):
        self.calls.append((t.clone(), y.clone(), embedding_transform))
        eps = 0.5 * x + y.float().view(-1, 1, 1, 1)
        return torch.cat([eps, self.var_per_label * y.float().view(-1, 1, 1, 1).expand_as(x)], dim=1)


def test_cfg_guides_the_first_channels_only_with_the_dit_quirk():
    model = _Linear(var_per_label=0.25)
    x = torch.randn(2, 4, 2, 2)
    t = torch.tensor([5, 5])
    y = torch.tensor([1, 2])
    eps, var = guided_eps(model, x, t, y, 4.0, 3, None)
    cond = 0.5 * x + y.view(-1, 1, 1, 1)
    uncond = 0.5 * x + 3
    torch.testing.assert_close(eps[:, :3], uncond[:, :3] + 4 * (cond[:, :3] - uncond[:, :3]))
    torch.testing.assert_close(eps[:, 3], cond[:, 3])
    assert torch.equal(model.calls[-1][1], torch.tensor([1, 2, 3, 3]))
    eps_all, _ = guided_eps(model, x, t, y, 4.0, None, None)
    torch.testing.assert_close(eps_all, uncond + 4 * (cond - uncond))
    torch.testing.assert_close(var, 0.25 * y.float().view(-1, 1, 1, 1).expand_as(x))  # the conditional rows' variance


class _Recorder(SamplerHook):
    def __init__(self, window, shift=0.0, sample=0.0):
        self.window, self.shift, self.sample, self.seen = window, shift, sample, []

    def embedding(self, index, t, labels):
        return lambda emb, table: emb

    def mean_shift(self, state):
        self.seen.append(state.index)
        return torch.full_like(state.mean, self.shift)

    def sample_shift(self, state):
        return torch.full_like(state.mean, self.sample)


def test_hooks_run_only_in_their_window_and_shift_the_sample():
    d = GaussianDiffusion.linear(1000, "10")
    noise = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1])
    base = ddpm_sample(_Linear(), d, labels, noise, torch.Generator().manual_seed(1), hooks=[_Recorder((3, 6))])
    rec = _Recorder((3, 6), shift=0.1, sample=0.2)
    model = _Linear()
    shifted = ddpm_sample(model, d, labels, noise, torch.Generator().manual_seed(1), hooks=[rec])
    assert rec.seen == [6, 5, 4, 3]
    assert [c[2] is not None for c in model.calls] == [i in (3, 4, 5, 6) for i in range(9, -1, -1)]
    assert torch.equal(model.calls[0][0], torch.full((4,), 999))  # the model sees training-scale timesteps
    assert not torch.allclose(base, shifted)
    # a window outside the steps changes nothing
    same = ddpm_sample(
        _Linear(), d, labels, noise, torch.Generator().manual_seed(1), hooks=[_Recorder((20, 30), shift=5.0)]
    )
    torch.testing.assert_close(same, base)


def test_predict_x0_in_the_state_is_linear_in_x():
    d = GaussianDiffusion.linear(1000, "50")
    got = {}

    class Probe(SamplerHook):
        window = (40, 40)

        def mean_shift(self, state):
            with torch.enable_grad():  # the sampler runs under no_grad; hooks opt in
                x = state.x.clone().requires_grad_(True)
                (g,) = torch.autograd.grad(state.predict_x0(x).sum(), x)
            got["grad"] = g
            torch.testing.assert_close(state.predict_x0(state.x), state.pred_x0)
            return None

    ddpm_sample(_Linear(), d, torch.tensor([0]), torch.randn(1, 4, 2, 2), torch.Generator(), hooks=[Probe()])
    torch.testing.assert_close(got["grad"], torch.full((1, 4, 2, 2), float(d.sqrt_recip_alphas_cumprod[40])))


def _tiny(seed=0):
    torch.manual_seed(seed)
    model = tiny_dit(4, 4, num_classes=5, width=32, depth=2, heads=2)
    with torch.no_grad():  # adaLN-zero starts at zero output: make the test model non-trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_embedding_transform_reaches_every_block_of_the_dit():
    # untied: one label table per block, as diffusers saves DiT weights
    model = DiTDenoiser(untie(_tiny()), "test")
    assert model.learn_sigma and model.null_class == 5 and model.sample_size == 4
    x, t, y = torch.randn(3, 4, 4, 4), torch.tensor([10, 500, 990]), torch.tensor([0, 4, 5])

    def transform(emb, table):
        return emb + 0.5 * table(torch.tensor([1, 1, 1]))

    # the same as a model whose every label table has row 1 / 2 added to every row
    shifted = copy.deepcopy(model)
    tables = [m.embedding_table.weight for m in shifted.model.modules() if type(m).__name__ == "LabelEmbedding"]
    assert len(tables) == 2
    with torch.no_grad():
        for w in tables:
            w += 0.5 * w[1].clone()
        plain = model(x, t, y)
        moved = model(x, t, y, transform)
        again = model(x, t, y)
        torch.testing.assert_close(moved, shifted(x, t, y))
    assert not torch.allclose(plain, moved) and torch.equal(plain, again)  # hooks are removed afterwards


@pytest.mark.parametrize("layout", ["flat", "pipeline", "hub"])
def test_load_dit_weights_in_diffusers_format_from_a_local_folder(tmp_path, layout):
    model = _tiny(seed=1)
    folder = tmp_path / "dit"
    untie(model).save_pretrained(folder if layout == "flat" else folder / "transformer")
    if layout != "flat":
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    if layout == "hub":  # facebook/DiT-XL-2-256's transformer config still names the legacy class and keys
        config = json.loads((folder / "transformer" / "config.json").read_text())
        config.update(
            _class_name="Transformer2DModel",
            cross_attention_dim=None,
            num_vector_embeds=None,
            only_cross_attention=False,
            use_linear_projection=False,
        )
        (folder / "transformer" / "config.json").write_text(json.dumps(config))
    loaded = load_dit(str(folder))
    x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([3, 700]), torch.tensor([2, 5])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), DiTDenoiser(model, "ref")(x, t, y))
    assert "diffusers DiT" in loaded.weights and loaded.num_classes == 5
    assert not any(p.requires_grad for p in loaded.parameters())


def test_missing_or_wrong_dit_weights_raise_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_dit(str(tmp_path / "nothing/here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="holds no DiT"):
        load_dit(str(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps({"_class_name": "DiTTransformer2DModel"}))
    with pytest.raises(WeightsError, match="cannot load"):
        load_dit(str(tmp_path / "broken"))
    with pytest.raises(WeightsError, match="hub"):  # offline in the tests: the hub cannot be reached
        load_dit("DiT-XL-2-256")


def test_training_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    net = DiTDenoiser(tiny_dit(4, 2, 3, width=16, depth=1, heads=2), "t")
    d = GaussianDiffusion.linear(1000)
    x0 = torch.randn(8, 4, 2, 2) * 0.5 + torch.arange(8).view(-1, 1, 1, 1) % 3
    y = torch.arange(8) % 3
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = training_loss(net, d, x0, y, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.7 * losses[0]
