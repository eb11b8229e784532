"""DMGD and MGD3: guidance blocks against the released formulas, batching across classes, CLI/API, resume."""

import math

import pytest
import torch

from datadistill import api
from datadistill.cli import main
from datadistill.core.errors import ConfigError
from datadistill.core.io import read_checkpoint, save_checkpoint
from datadistill.methods.dmgd import DMGD, DMGDOptions, OTGuidance, SemanticMatching, annealing
from datadistill.sampling.ddpm import StepState
from datadistill.sampling.diffusion import GaussianDiffusion
from datadistill.synset.set import SyntheticSet


@pytest.fixture(scope="module")
def fast(digits):
    """Run options with tiny offline models on the 8x8 digits: a 40-step VAE and a one-block DiT trained once
    (``api.pretrain``) and passed by folder, as a user passes a model trained elsewhere."""
    folder = api.pretrain(
        "diffusion", digits, device="cpu", vae_steps=40, width=32, depth=1, heads=2, steps=30, batch_size=32
    )
    return {"vae_steps": 40, "dit": str(folder), "sampling_steps": 10, "device": "cpu"}


@pytest.fixture(scope="module")
def dmgd_fast(fast):
    return {**fast, "window_low": 3, "window_high": 8}


def _released_semantic(e, e_star, xi, t, t_up=900, t_low=500, bn=0.06, bs=0.01):
    """DMGD's SemanticMatching.random_label_conditioning for a batch of one (e: its 2 x D CFG rows)."""
    if t > t_up:
        lam, r = 0.0, 0
    elif t < t_low:
        lam, r = 1.0, 1
    else:
        lam, r = (t_up - t) / (t_up - t_low), 1
    y = math.sqrt(lam) * e + bn * math.sqrt(1 - lam) * xi + r * bs * math.sqrt(1 - lam) * e_star
    return (y - y.mean()) / y.std() * e.std() + e.mean()


@pytest.mark.parametrize("t", [999, 700, 520])
def test_semantic_matching_batched_equals_the_released_formula_per_sample(t):
    torch.manual_seed(0)
    table = torch.nn.Embedding(6, 16)  # 5 classes + the null row
    labels, other = torch.tensor([0, 3, 4]), torch.tensor([2, 1, 0])
    emb = table(torch.cat([labels, torch.full((3,), 5)])).detach()  # conditional rows, then null rows
    hook = SemanticMatching(other, DMGDOptions(), torch.Generator().manual_seed(7))
    out = hook.embedding(0, t, labels)(emb, table).detach()
    xi = torch.rand(6, 16, generator=torch.Generator().manual_seed(7))
    for b in range(3):
        pair = torch.stack([emb[b], emb[3 + b]])
        ref = _released_semantic(pair, table.weight[other[b]].detach(), torch.stack([xi[b], xi[3 + b]]), t)
        torch.testing.assert_close(torch.stack([out[b], out[3 + b]]), ref)


def test_semantic_matching_schedule_and_identity_below_t_lower():
    assert annealing(950, 900, 500) == (0.0, 0.0)
    assert annealing(700, 900, 500) == (0.5, 1.0)
    assert annealing(100, 900, 500) == (1.0, 1.0)
    hook = SemanticMatching(torch.tensor([1]), DMGDOptions(), torch.Generator())
    assert hook.embedding(0, 400, torch.tensor([0])) is None
    paper = SemanticMatching(torch.tensor([1]), DMGDOptions(semantic="paper"), torch.Generator().manual_seed(0))
    table = torch.nn.Embedding(3, 8)
    emb = table(torch.tensor([0, 2])).detach()
    out = paper.embedding(0, 950, torch.tensor([0]))(emb, table)
    # above t_up the paper's formula keeps no class signal: b_s e* + b_n n only
    xi = torch.randn(2, 8, generator=torch.Generator().manual_seed(0))
    ref = 0.01 * table.weight[1] + 0.06 * xi * table.weight[:-1].std(dim=0)
    torch.testing.assert_close(out, ref.detach())


def _state(x, eps, index, diffusion):
    idx = torch.full((len(x),), index)
    mean, _ = diffusion.q_posterior(diffusion.predict_x0(x, idx, eps), x, idx)
    log_var = torch.full_like(x, -3.0) + 0.1 * torch.arange(len(x)).view(-1, 1, 1, 1)
    return StepState(
        index,
        int(diffusion.timesteps[index]),
        x,
        eps,
        diffusion.predict_x0(x, idx, eps),
        mean,
        log_var,
        torch.zeros(len(x), dtype=torch.long),
        diffusion,
    )


def _released_ot_shift(x, eps, alpha_bar, memory, centres, masses, log_var, g=0.5):
    """DMGD's condition_mean + compute_ot_distribution_matching_loss for one sample (autograd through x)."""
    x = x.clone().requires_grad_(True)
    x0 = (x - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    emb = torch.cat([memory, x0.flatten(1)]) if len(memory) else x0.flatten(1)
    emb = emb / emb.norm(dim=1, keepdim=True)
    pos = centres / centres.norm(dim=1, keepdim=True)
    cost = torch.cdist(emb, pos)
    a = torch.full((len(emb), 1), 1 / len(emb))
    b = masses / masses.sum()
    k = torch.exp(-cost / 0.1)
    for _ in range(5):
        k = k * (a / k.sum(1, keepdim=True))
        k = k * (b / k.sum(0, keepdim=True))
    (grad,) = torch.autograd.grad((k * cost).sum(), x)
    return g * torch.exp(0.5 * log_var) * -grad


@pytest.mark.parametrize("n_memory", [0, 3])
def test_ot_guidance_batched_across_classes_equals_the_released_one_at_a_time(n_memory):
    torch.manual_seed(0)
    d = GaussianDiffusion.linear(1000, "50")
    classes, shape = 4, (4, 3, 3)
    x, eps = torch.randn(classes, *shape), torch.randn(classes, *shape)
    memory = torch.randn(classes, n_memory, 36)
    centres, masses = torch.randn(classes, 10, 36), torch.rand(classes, 10) * 100 + 1
    state = _state(x, eps, 40, d)
    shift = OTGuidance(memory, centres, masses, DMGDOptions()).mean_shift(state)
    for c in range(classes):
        ref = _released_ot_shift(
            x[c : c + 1],
            eps[c : c + 1],
            float(d.alphas_cumprod[40]),
            memory[c],
            centres[c],
            masses[c],
            state.log_variance[c : c + 1],
        )
        torch.testing.assert_close(shift[c : c + 1], ref, atol=1e-6, rtol=1e-4)
    assert OTGuidance(memory, centres, masses, DMGDOptions()).window == (30, 45)


def test_dmgd_chunks_batch_classes_or_one_image_at_a_time():
    class Ctx:
        class data:
            num_classes = 3

        class config:
            ipc = 2

        opts = DMGDOptions()

    assert DMGD().chunks(Ctx) == [[(0, 0), (1, 0), (2, 0)], [(0, 1), (1, 1), (2, 1)]]
    Ctx.opts = DMGDOptions(batch="one")
    assert DMGD().chunks(Ctx) == [[(0, 0)], [(0, 1)], [(1, 0)], [(1, 1)], [(2, 0)], [(2, 1)]]


def test_options_are_validated():
    with pytest.raises(ConfigError, match="window"):
        api.make_config("dmgd", "digits", 1, sampling_steps=10)
    with pytest.raises(ConfigError, match="stop-t"):
        api.make_config("mgd3", "digits", 1, sampling_steps=10)
    with pytest.raises(ConfigError, match="must be one of"):
        api.make_config("dmgd", "digits", 1, semantic="both")
    api.make_config("dmgd", "digits", 1, sampling_steps=10, ot=False)  # no window needed without OT


def test_dmgd_from_the_cli_then_resume_after_a_kill_equals_an_uninterrupted_run(
    tmp_path, monkeypatch, capsys, dmgd_fast
):
    args = [
        "distill",
        "dmgd",
        "--data",
        "digits",
        "--ipc",
        "3",
        "--vae-steps",
        "40",
        "--dit",
        dmgd_fast["dit"],
        "--sampling-steps",
        "10",
        "--window-low",
        "3",
        "--window-high",
        "8",
        "--guidance-scale",
        "2.0",
        "--checkpoint-every",
        "1",
        "--device",
        "cpu",
    ]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    assert "wrote 30 images" in capsys.readouterr().out
    full = SyntheticSet.load(tmp_path / "full")
    assert full.images.shape == (30, 3, 8, 8) and full.labels.tolist() == sorted(full.labels.tolist())

    real_step = DMGD.train_step

    def dying(self, ctx, param, optimizer, autocast):
        if int(param.done) == 2:
            raise KeyboardInterrupt
        return real_step(self, ctx, param, optimizer, autocast)

    monkeypatch.setattr(DMGD, "train_step", dying)
    assert main([*args, "--out", str(tmp_path / "killed")]) == 130
    checkpoint = tmp_path / "killed" / "checkpoints" / "last.pt"
    saved = read_checkpoint(checkpoint)
    assert saved["step"] == 2 and saved["optimizer"] is None  # sampling optimises nothing
    # a checkpoint written when the sampling methods carried a placeholder optimizer still resumes
    placeholder = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=0.0)
    save_checkpoint(checkpoint, {**saved, "optimizer": placeholder.state_dict()})
    monkeypatch.setattr(DMGD, "train_step", real_step)
    assert main([*args, "--out", str(tmp_path / "killed")]) == 0
    torch.testing.assert_close(SyntheticSet.load(tmp_path / "killed").images, full.images)
    log_text = (tmp_path / "killed" / "log.txt").read_text()
    assert "at chunk 2" in log_text and "OT distance" in log_text
    assert "OT distance: " in (tmp_path / "killed" / "report.md").read_text()
    assert "at the first chunk" in (tmp_path / "killed" / "report.md").read_text()
    assert main(["distill", "dmgd", "--data", "digits", "--out", str(tmp_path / "bad"), "--class-ids", "1,2"]) == 2
    assert "--class-ids lists 2 classes" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "bad2"), "--class-ids", ",".join(["99"] * 10)]) == 2
    assert "must lie in [0, 10)" in capsys.readouterr().err


def test_ot_guidance_lowers_the_ot_distance_and_ablations_share_the_sampler(tmp_path, dmgd_fast):
    runs = {}
    for name, extra in {"plain": {"semantic": "off", "ot": False}, "ot": {"semantic": "off"}, "dmgd": {}}.items():
        api.distill("dmgd", "digits", ipc=3, out=tmp_path / name, guidance_scale=5.0, **dmgd_fast, **extra)
        runs[name] = api.RunDir(tmp_path / name).metrics()["distill"]["loss_last"]
    # the OT distance of each class's 3 samples to its 10 k-means supports, after the last step
    assert runs["ot"] < runs["plain"] and runs["dmgd"] < runs["plain"]


def test_mgd3_pulls_each_sample_to_its_mode(tmp_path, fast):
    from datadistill.methods.guided_sampling import load_sampler

    far = {}
    for scale in (0.0, 0.1):
        out = tmp_path / f"m{scale}"
        api.distill("mgd3", "digits", ipc=2, out=out, mode_guidance_scale=scale, stop_t=2, **fast)
        latents = read_checkpoint(out / "checkpoints" / "last.pt")["param"]["state"]["latents"]
        far[scale] = latents
        meta = SyntheticSet.load(out).meta  # the set names the weights it was sampled with
        assert "DiT" in meta["diffusion_model"] and "digits" in meta["diffusion_model"], meta
        assert "digits" in meta["latent_space"], meta
    ctx = api.build_context(api.make_config("mgd3", "digits", 2, stop_t=2, **fast))
    modes = load_sampler(ctx, 2).supports.view(10, 2, -1)
    dist = {s: float((far[s].flatten(2) - modes).norm(dim=-1).mean()) for s in far}
    assert dist[0.1] < 0.8 * dist[0.0]
