"""The pieces the from-scratch protocols and the generative trainers share: the validation-selected training
loop, the weight EMA, the cached-model folder, the hub/folder loader and DiT's initialisation."""

import importlib
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from datadistill import api
from datadistill.core.errors import WeightsError
from datadistill.training.pretrainers import CachedModel, weight_ema


def _ema_run(decay: float, warmup: bool, values: list[float]) -> list[float]:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(values[0])
    ema = weight_ema(model, decay, warmup)
    out = []
    for v in values[1:]:
        with torch.no_grad():
            model.weight.fill_(v)
        ema.update_parameters(model)
        out.append(float(ema.module.weight))
    return out


def test_weight_ema_warm_up_by_hand():
    # step i moves the average by 1 - d toward the weights, d = min(decay, (1 + i) / (10 + i)):
    # step 1: d = 2/11, 1 + (9/11)(3 - 1) = 2.636363...; step 2: d = 3/12, e + (3/4)(-1 - e) = -0.090909...
    e1 = 1 + (9 / 11) * (3 - 1)
    e2 = e1 + 0.75 * (-1 - e1)
    assert _ema_run(0.9, True, [1.0, 3.0, -1.0]) == pytest.approx([e1, e2], rel=1e-6)
    # after warm-up the decay is the given one: (1 + i) / (10 + i) > 0.5 from i = 9 on
    assert _ema_run(0.5, True, [0.0] + [0.0] * 9 + [4.0])[-1] == pytest.approx(2.0)
    # without warm-up: d = 0.9 from the first step, 1 + 0.1 * 2 = 1.2, then 1.2 + 0.1 * (-1 - 1.2) = 0.98
    assert _ema_run(0.9, False, [1.0, 3.0, -1.0]) == pytest.approx([1.2, 0.98], rel=1e-6)


def test_weight_ema_resumes_from_its_state_dict():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    steps = [torch.randn(2, 3) for _ in range(4)]
    whole, first = weight_ema(model, 0.99, warmup=True), None
    for i, w in enumerate(steps):
        with torch.no_grad():
            model.weight.copy_(w)
        whole.update_parameters(model)
        if i == 1:
            first = {k: v.clone() for k, v in whole.state_dict().items()}
    resumed = weight_ema(nn.Linear(3, 2), 0.99, warmup=True)
    resumed.load_state_dict(first)  # the step count travels with the checkpoint: the warm-up goes on from step 3
    for w in steps[2:]:
        with torch.no_grad():
            model.weight.copy_(w)
        resumed.update_parameters(model)
    assert torch.equal(resumed.module.weight, whole.module.weight)


def test_cached_model_saves_atomically_and_drops_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path))
    cached = CachedModel("toy", {"a": 1}, marker="done.json")
    assert not cached.done() and cached.folder.parent == tmp_path / "models" / "toy"
    cached.checkpoint.parent.mkdir(parents=True)
    cached.checkpoint.write_bytes(b"state")
    with pytest.raises(RuntimeError):
        cached.save(lambda tmp: (tmp / "done.json").write_text("{}") and (_ for _ in ()).throw(RuntimeError()))
    assert not cached.folder.exists() and cached.checkpoint.exists()  # a failed save leaves no half folder
    assert cached.save(lambda tmp: (tmp / "done.json").write_text("{}")) == cached.folder
    assert cached.done() and not cached.checkpoint.exists()
    assert [p.name for p in tmp_path.joinpath("models", "toy").iterdir()] == [cached.folder.name]


def test_hard_label_trains_each_epoch_once_at_the_recipes_rate(digits, monkeypatch):
    """One training pass per epoch at lr 0.01, x0.2 from epoch int(2/3 E) and again from int(5/6 E) (E = 6:
    epochs 5 and 6), one validation point per ``val_every`` epochs; the optimiser is the one asked for."""
    training = importlib.import_module("datadistill.evaluate.training")

    calls = []
    real = training.train_epoch

    def spy(model, norm, source, recipe, epoch, optimizer, generator, device):
        loss = real(model, norm, source, recipe, epoch, optimizer, generator, device)
        group = optimizer.param_groups[0]
        calls.append((epoch, type(optimizer).__name__, group["lr"], group["weight_decay"]))
        return loss

    monkeypatch.setattr(training, "train_epoch", spy)
    synset = api.distill("random", digits.name, ipc=1, dataset=digits)
    for optimizer, name, wd in (("sgd", "SGD", 5e-4), ("adamw", "AdamW", 0.01)):
        calls.clear()
        result = api.evaluate(
            synset, protocol="hard-label", data=digits, seeds=1, device="cpu", optimizer=optimizer, epochs=6,
            resolution=16, width=8, val_every=2, jitter=False,
        )  # fmt: skip
        base = 0.01 if optimizer == "sgd" else 1e-3
        expected = [base] * 4 + [base * 0.2, base * 0.04]
        assert [c[0] for c in calls] == list(range(6))
        assert {c[1] for c in calls} == {name} and {c[3] for c in calls} == {wd}
        np.testing.assert_allclose([c[2] for c in calls], expected, rtol=1e-12)
        assert [e for e, _ in result.details["val_curves"][0]] == [2, 4, 6]


def test_a_local_autoencoder_folder_without_weights_is_one_line(tmp_path):
    from datadistill.training.vae import load_latent_space

    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(WeightsError) as err:
        load_latent_space(str(tmp_path / "vae"))
    message = str(err.value)
    assert message.startswith(f"cannot load the AutoencoderKL from the folder {tmp_path / 'vae'}: ")
    assert "no file named" in message and "\n" not in message
    assert message.endswith(
        "(e.g. huggingface-cli download stabilityai/sd-vae-ft-mse --local-dir DIR) and pass the folder"
    )


def test_a_dit_folder_with_a_broken_config_is_one_line(tmp_path):
    from datadistill.models.generative.dit import load_dit

    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match=r"transformer/config.json is not valid JSON"):
        load_dit(str(tmp_path))


def test_dit_and_sit_start_as_adaln_zero_networks():
    """DiT's initialisation: zero output at the start; xavier-uniform linears (|w| <= sqrt(6 / (in + out)));
    label tables with std 0.02."""
    from datadistill.models.generative.dit import tiny_dit
    from datadistill.models.generative.sit import SiT

    torch.manual_seed(0)
    sit = SiT(8, 2, 4, 64, 2, 4, 4.0, 5)
    dit = tiny_dit(4, 8, 5, 64, 2, 4)
    x, t, y = torch.randn(3, 4, 8, 8), torch.rand(3), torch.tensor([0, 1, 5])
    with torch.no_grad():
        assert torch.equal(sit(x, t, y), torch.zeros_like(x))
        assert torch.equal(dit(x, timestep=t * 999, class_labels=y).sample, torch.zeros(3, 8, 8, 8))
    qkv = sit.blocks[0].attn.qkv.weight
    assert float(qkv.abs().max()) <= (6 / (64 + 192)) ** 0.5 and float(qkv.std()) > 0.5 * (2 / (64 + 192)) ** 0.5
    table = sit.y_embedder.embedding_table.weight
    assert float(table.std()) == pytest.approx(0.02, rel=0.1)
    dit_table = dit.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.weight
    assert float(dit_table.std()) == pytest.approx(0.02, rel=0.1)


def test_pretrain_diffusion_resumes_to_the_same_weights(digits, monkeypatch):
    """The EMA (saved) travels in the checkpoint: a run killed at step 5 and resumed from its step-3 checkpoint
    writes the same bytes as an uninterrupted one."""
    import datadistill.training.diffusion as dt

    opts = {"vae_steps": 20, "width": 16, "depth": 1, "heads": 2, "steps": 8, "batch_size": 16}
    opts |= {"checkpoint_every": 3, "ema": 0.5}

    def weights(folder):
        return (folder / "diffusion_pytorch_model.safetensors").read_bytes()

    # the session's cache: the autoencoder (as test_pgfm's) and its latents are reused; this model is removed
    folder = api.pretrain("diffusion", digits, device="cpu", **opts)
    ref = weights(folder)
    shutil.rmtree(folder)
    real = dt.train_resumable

    def dying(name, total, step, *args, **kwargs):
        def die(i):
            if i == 5:
                raise KeyboardInterrupt
            return step(i)

        return real(name, total, die, *args, **kwargs)

    monkeypatch.setattr(dt, "train_resumable", dying)
    with pytest.raises(KeyboardInterrupt):
        api.pretrain("diffusion", digits, device="cpu", **opts)
    assert list(folder.parent.glob(f".{folder.name}.checkpoint*"))
    monkeypatch.setattr(dt, "train_resumable", real)
    assert weights(api.pretrain("diffusion", digits, device="cpu", **opts)) == ref
    assert not list(folder.parent.glob(f".{folder.name}.checkpoint*"))
