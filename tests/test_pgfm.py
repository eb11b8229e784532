"""PGFM: SiT checkpoints, the flow-matching ODE sampler and its guidance, the offline flow model, the method."""

import json

import pytest
import torch

from datadistill.core.errors import ConfigError, WeightsError
from datadistill.features.coverage import mode_coverage
from datadistill.models.generative.flow import FlowModel, load_sit_checkpoint
from datadistill.models.generative.sit import SiT
from datadistill.sampling.ode import FlowState, PathToPrototype, ode_sample, warm_start

# The key layout of the official SiT checkpoints (models.py of willisma/SiT), for a depth-1 model.
SIT_KEYS = {
    "pos_embed",
    "x_embedder.proj.weight",
    "x_embedder.proj.bias",
    "t_embedder.mlp.0.weight",
    "t_embedder.mlp.0.bias",
    "t_embedder.mlp.2.weight",
    "t_embedder.mlp.2.bias",
    "y_embedder.embedding_table.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.attn.qkv.bias",
    "blocks.0.attn.proj.weight",
    "blocks.0.attn.proj.bias",
    "blocks.0.mlp.fc1.weight",
    "blocks.0.mlp.fc1.bias",
    "blocks.0.mlp.fc2.weight",
    "blocks.0.mlp.fc2.bias",
    "blocks.0.adaLN_modulation.1.weight",
    "blocks.0.adaLN_modulation.1.bias",
    "final_layer.linear.weight",
    "final_layer.linear.bias",
    "final_layer.adaLN_modulation.1.weight",
    "final_layer.adaLN_modulation.1.bias",
}


def _random_sit(depth: int = 1) -> SiT:
    torch.manual_seed(0)
    net = SiT(input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=depth, num_heads=2, num_classes=10)
    with torch.no_grad():  # adaLN-Zero starts as the zero map: randomise everything so the test can fail
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net


def test_sit_checkpoint_in_official_layout_loads(tmp_path):
    net = _random_sit(depth=1)
    assert set(net.state_dict()) == SIT_KEYS
    net = _random_sit(depth=2)
    path = tmp_path / "SiT-tiny.pt"
    torch.save(net.state_dict(), path)
    flow = load_sit_checkpoint(path, heads=2)
    c = flow.net.config
    assert (c["depth"], c["hidden_size"], c["patch_size"], c["num_classes"], c["learn_sigma"]) == (2, 32, 2, 10, True)
    assert flow.latent_shape == (4, 4, 4) and flow.null_class == 10 and str(path) in flow.weights
    x, t, y = torch.randn(3, 4, 4, 4), torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0, 3, 9])
    with torch.no_grad():
        assert torch.allclose(flow.velocity(x, t, y), net.eval()(x, t, y), atol=1e-6)
        # classifier-free guidance on the velocity: v_u + w (v_c - v_u), in one batched call
        v_c, v_u = net(x, t, y), net(x, t, torch.full_like(y, 10))
        assert torch.allclose(flow.velocity(x, t, y, cfg_scale=3.0), v_u + 3 * (v_c - v_u), atol=1e-5)
        mixed = flow.velocity(x, t, y, cfg_scale=3.0, cfg_channels=3)
        assert torch.allclose(mixed[:, 3], v_c[:, 3], atol=1e-6)
    torch.save({"model": {}, "ema": net.state_dict(), "args": None}, tmp_path / "train.pt")  # a training checkpoint
    assert torch.allclose(load_sit_checkpoint(tmp_path / "train.pt", heads=2).net.pos_embed, net.pos_embed)
    with pytest.raises(WeightsError, match="heads"):
        load_sit_checkpoint(path)  # width 32 is not in the SiT zoo
    torch.save({"something": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="not a SiT"):
        load_sit_checkpoint(tmp_path / "bad.pt")


class _Const(torch.nn.Module):
    """A velocity field u(x, t, y) = a * y - x (linear in x), with a null class."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.y_embed = torch.nn.Embedding(4, 1)
        self.a = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, y):
        return self.a * y.view(-1, 1, 1, 1).float() - x


def _toy_flow() -> FlowModel:
    return FlowModel(_Const(), "mlp", "toy", (2, 2, 2), torch.arange(3), {})


def test_ode_sampler_counts_and_solvers():
    flow, labels = _toy_flow(), torch.tensor([0, 1, 2])
    x0 = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    euler = ode_sample(flow, labels, x0, steps=4, solver="euler")
    heun = ode_sample(flow, labels, x0, steps=4, solver="heun", cfg_scale=2.0)
    assert (euler.nfe, euler.forward_passes, heun.nfe, heun.forward_passes) == (4, 4, 8, 16)
    # dx/dt = c - x has the exact solution c + (x0 - c) e^{-1} at t = 1; Heun is closer than Euler
    c = 0.5 * labels.view(-1, 1, 1, 1).float()
    exact = c + (x0 - c) * torch.exp(torch.tensor(-1.0))
    heun1 = ode_sample(flow, labels, x0, steps=4, solver="heun")
    assert (heun1.latents - exact).abs().max() < (euler.latents - exact).abs().max() / 5
    with pytest.raises(ConfigError):
        ode_sample(flow, labels, x0, steps=0)


def test_path_to_prototype_lands_on_prototype_and_respects_options():
    flow, labels = _toy_flow(), torch.tensor([0, 1, 2])
    g = torch.Generator().manual_seed(1)
    x0, protos = torch.randn(3, 2, 2, 2, generator=g), 3 * torch.randn(3, 2, 2, 2, generator=g)
    # lambda = 1 everywhere, no clip: the straight path to p, so the sample lands on its prototype
    full = PathToPrototype(protos, strength=1.0, t_stop=1.0, schedule="constant", trust=None, delta=1e-6)
    out = ode_sample(flow, labels, x0, steps=5, hooks=[full]).latents
    assert torch.allclose(out, protos, atol=1e-4)
    plain = ode_sample(flow, labels, x0, steps=5).latents
    none = ode_sample(flow, labels, x0, steps=5, hooks=[PathToPrototype(protos, strength=0.0)]).latents
    assert torch.equal(plain, none)
    half = ode_sample(flow, labels, x0, steps=5, hooks=[PathToPrototype(protos, 0.5, 0.7, "cosine", 0.5)]).latents
    assert (half - protos).norm() < (plain - protos).norm()  # pulled towards the prototypes, not onto them
    assert (half - protos).norm() > 0.1
    # schedule: cosine from strength at t = 0 down to 0 at t_stop, zero after
    hook = PathToPrototype(protos, strength=0.8, t_stop=0.6)
    assert hook.weight(0.0) == pytest.approx(0.8) and hook.weight(0.3) == pytest.approx(0.4)
    assert hook.weight(0.6) == 0 and hook.weight(0.9) == 0
    # trust region: ||g|| <= tau ||v|| per sample
    v = 0.01 * torch.ones(3, 2, 2, 2)
    state = FlowState(0, 0, 0.1, 0.2, x0, v)
    g_clip = PathToPrototype(protos, strength=1.0, trust=0.5)(state)
    assert torch.allclose(g_clip.flatten(1).norm(dim=1), 0.5 * v.flatten(1).norm(dim=1), rtol=1e-4)
    assert torch.allclose(warm_start(protos, x0, 0.25), 0.25 * protos + 0.75 * x0)
    with pytest.raises(ConfigError):
        PathToPrototype(protos, schedule="exp")


def test_mode_coverage():
    centres = torch.tensor([[[0.0], [10.0], [20.0]], [[0.0], [10.0], [20.0]]])  # 2 classes x 3 clusters x 1-d
    latents = torch.tensor([[1.0], [2.0], [19.0], [11.0]])
    labels = torch.tensor([0, 0, 0, 1])
    cov = mode_coverage(latents, labels, centres)
    assert cov["per_class"] == pytest.approx([2 / 3, 1 / 3]) and cov["mean"] == pytest.approx(0.5) and cov["k"] == 3


TINY = {"vae_steps": 20, "flow_steps": 40, "device": "cpu"}


def test_pretrain_flow_learns_and_resumes(digits, tmp_path, monkeypatch):
    import datadistill.training.flow as ft
    from datadistill.api import pretrain

    def val(folder):
        return json.loads((folder / "config.json").read_text())["val_loss"]

    common = {"vae_steps": 20, "width": 64, "depth": 2, "checkpoint_every": 10, "ema": 0.9}
    short, longer = pretrain("flow", digits, steps=2, **common), pretrain("flow", digits, steps=120, **common)
    assert val(longer) < 0.8 * val(short)
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "ref"))
    ref = json.loads((pretrain("flow", digits, steps=25, **common) / "config.json").read_text())
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / "run"))
    real = ft.train_resumable

    def dying(name, total, step, *args, **kwargs):
        def die(i):
            if i == 17:
                raise KeyboardInterrupt
            return step(i)

        return real(name, total, die, *args, **kwargs)

    monkeypatch.setattr(ft, "train_resumable", dying)
    with pytest.raises(KeyboardInterrupt):
        pretrain("flow", digits, steps=25, **common)
    monkeypatch.setattr(ft, "train_resumable", real)
    resumed = json.loads((pretrain("flow", digits, steps=25, **common) / "config.json").read_text())
    assert not list((tmp_path / "run" / "models" / "flow").glob("*checkpoint*"))
    assert resumed["final_train_loss"] == pytest.approx(ref["final_train_loss"], abs=1e-6)
    assert resumed["val_loss"] == pytest.approx(ref["val_loss"], abs=1e-6)


def test_pgfm_modes_through_one_pipeline(digits):
    from datadistill.api import distill

    pgfm = distill("pgfm", "digits", ipc=2, dataset=digits, **TINY)
    assert pgfm.images.shape == (20, 3, 8, 8) and pgfm.labels.tolist() == [c for c in range(10) for _ in range(2)]
    meta = pgfm.meta
    assert meta["nfe"] == 8 and meta["forward_passes_per_image"] == 16 and meta["seconds_per_image"] > 0
    assert meta["mode_coverage"]["k"] == 2 and meta["mode_coverage"]["clusters_from"] == "val"
    assert "velocity MLP" in meta["flow_model"] and "tiny-vae" in meta["latent_space"]
    protos = distill("pgfm", "digits", ipc=2, dataset=digits, mode="prototypes", **TINY)
    assert protos.meta["sampling_seconds"] == 0 and "nfe" not in protos.meta
    # lambda = 1 on the whole path without a trust region lands every sample on its prototype
    landed = distill(
        "pgfm",
        "digits",
        ipc=2,
        dataset=digits,
        strength=1.0,
        guidance_stop=1.0,
        schedule="constant",
        trust_region=0,
        **TINY,
    )
    assert (landed.images - protos.images).abs().max() < 0.02
    assert (pgfm.images - protos.images).abs().max() > 0.05
    plain = distill("pgfm", "digits", ipc=2, dataset=digits, mode="plain", **TINY)
    assert "guidance" not in plain.meta and "guidance" in meta
    heun = distill("pgfm", "digits", ipc=2, dataset=digits, solver="heun", sampling_steps=3, cfg_scale=1.0, **TINY)
    assert heun.meta["nfe"] == 6 and heun.meta["forward_passes_per_image"] == 6
    recon = distill("pgfm", "digits", ipc=2, dataset=digits, mode="real-recon", **TINY)
    rand = distill("random", "digits", ipc=2, dataset=digits)
    assert recon.meta["train_indices"] == rand.meta["train_indices"]
    with pytest.raises(ConfigError):
        distill("pgfm", "digits", ipc=2, dataset=digits, warm_start=1.5, **TINY)


def test_pgfm_mode_coverage_against_numpy(digits):
    # Recomputed with numpy: the posterior-mean latents of the images against k-means clusters of the validation
    # latents (4 per class); a class's coverage is the fraction of its clusters nearest to one of its samples.
    # Reconstructions of 6 random real images per class over 4 clusters, through an autoencoder trained long
    # enough to tell digits apart (after 20 steps every image encodes to about the same latent, so every sample
    # would hit one cluster and the comparison would test nothing): the coverage differs between classes.
    from datadistill.api import distill
    from datadistill.models.generative.latent import LatentOptions, latent_bank
    from datadistill.training.vae import latent_space_from

    trained = {**TINY, "vae_steps": 150}  # the autoencoder of test_latent.py's training test (cached once)
    synset = distill("pgfm", "digits", ipc=6, dataset=digits, mode="real-recon", coverage_k=4, **trained)
    coverage = synset.meta["mode_coverage"]
    space = latent_space_from(LatentOptions(vae_steps=trained["vae_steps"]), digits)
    centres = latent_bank(digits, space, "val").kmeans(4, seed=0)[0].numpy()
    with torch.no_grad():
        latents = space.encode(synset.images, mode="mean").flatten(1).numpy()
    labels = synset.labels.numpy()
    per_class = []
    for c in range(10):
        d2 = ((latents[labels == c][:, None, :] - centres[c][None]) ** 2).sum(-1)
        per_class.append(len(set(d2.argmin(1).tolist())) / 4)
    assert len(set(per_class)) > 1, per_class  # otherwise the comparison below could not tell clusters apart
    assert coverage["k"] == 4 and coverage["per_class"] == pytest.approx(per_class, abs=1e-3), (coverage, per_class)
    assert coverage["mean"] == pytest.approx(sum(per_class) / 10, abs=1e-4)


def test_pgfm_cli_run_and_eval(tmp_path, capsys):
    from datadistill.cli import main

    out = tmp_path / "run"
    args = [
        "distill",
        "pgfm",
        "--data",
        "digits",
        "--ipc",
        "1",
        "--out",
        str(out),
        "--vae-steps",
        "20",
        "--flow-steps",
        "40",
        "--warm-start",
        "0.2",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    manifest = json.loads((out / "synset" / "manifest.json").read_text())
    assert manifest["meta"]["guidance"]["warm_start"] == 0.2 and manifest["meta"]["nfe"] == 8
    assert (
        main(
            [
                "distill",
                "pgfm",
                "--data",
                "digits",
                "--ipc",
                "1",
                "--out",
                str(tmp_path / "x"),
                "--flow",
                str(tmp_path / "missing.pt"),
                "--vae-steps",
                "7",
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    evaluate = ["eval", str(out), "--protocol", "convnet", "--seeds", "1", "--epochs", "2", "--width", "8"]
    assert main([*evaluate, "--device", "cpu"]) == 0
    evals = json.loads((out / "metrics.json").read_text())["eval"]  # keys: protocol@model|settings digest
    recorded = next(e for k, e in evals.items() if k.startswith("convnet@convnet|"))
    assert len(recorded["test_acc"]) == 1 and recorded["details"]["train_images"] == 10


def test_finetune_sit_checkpoint_on_target_classes(digits, tmp_path):
    from datadistill.models.generative.latent import LatentOptions
    from datadistill.training.flow import FlowOptions, difffit_parameters, flow_model_from
    from datadistill.training.vae import latent_space_from

    latent = LatentOptions(vae_steps=20)
    space = latent_space_from(latent, digits)
    torch.manual_seed(0)
    net = SiT(input_size=2, patch_size=1, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=10)
    with torch.no_grad():  # away from adaLN-Zero's zero map, where the class embedding gets no gradient
        for p in net.parameters():
            p.normal_(0, 0.1)
    path = tmp_path / "sit.pt"
    torch.save(net.state_dict(), path)
    opts = FlowOptions(flow=str(path), flow_heads=2, finetune_steps=6, finetune_lr=1e-2)
    tuned = flow_model_from(opts, latent, digits, space, torch.device("cpu"))
    assert "fine-tuned on digits" in tuned.weights and tuned.arch == "sit"
    before, after = net.state_dict(), tuned.net.state_dict()
    chosen = {n for n, p in net.named_parameters() if any(p is q for q in difffit_parameters(net))}
    assert "blocks.0.attn.qkv.bias" in chosen and "blocks.0.attn.qkv.weight" not in chosen
    assert torch.equal(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])  # frozen
    assert not torch.equal(before["y_embedder.embedding_table.weight"], after["y_embedder.embedding_table.weight"])
    again = flow_model_from(opts, latent, digits, space, torch.device("cpu"))  # cached
    assert again.weights == tuned.weights
    wrong = SiT(input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2, num_classes=10)
    torch.save(wrong.state_dict(), tmp_path / "wrong.pt")
    with pytest.raises(ConfigError, match="latents"):
        flow_model_from(
            FlowOptions(flow=str(tmp_path / "wrong.pt"), flow_heads=2), latent, digits, space, torch.device("cpu")
        )
