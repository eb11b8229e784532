"""Evaluation memory that does not grow with the data: the streaming view pass of the linear probes, the golden
classifier read batch by batch from its memory maps (one per evaluation seed), and the ConvNet protocol's input
normalisation from a cached streaming pass. Each is checked against the materialising computation it replaces."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import datadistill as dd
from datadistill.core.errors import DataError
from datadistill.core.io import cache_root
from datadistill.data import load_dataset, memory, resize_center_crop
from datadistill.data.augment import aug_basic
from datadistill.data.memory import StreamedSplit, channel_stats, in_memory
from datadistill.evaluate import golden as golden_module
from datadistill.evaluate.from_scratch import ConvNetOptions, fit_and_select, synset_tensors
from datadistill.evaluate.golden import FullProbeOptions, golden_classifier
from datadistill.evaluate.linear_probe import view_features
from datadistill.evaluate.training import fit, new_head
from datadistill.features.bank import FeatureBank, feature_bank, resize_for
from datadistill.models.architectures import ModelSpec
from datadistill.synset.set import SyntheticSet
from datadistill.training.supervised import FloatImages, InputNorm

CPU = torch.device("cpu")


# ---- the linear probes' view pass ------------------------------------------------------------------------------


def repeated_view_features(models, images, views, generator, batch_size=100, augment=True):
    """The pass as it was: the set repeated ``views`` times in memory, then sliced into batches."""
    out = [[] for _ in models]
    flat = images.repeat(views, 1, 1, 1)
    with torch.inference_mode():
        for start in range(0, len(flat), batch_size):
            chunk = flat[start : start + batch_size]
            state = generator.get_state()
            for k, (backbone, crop) in enumerate(models):
                generator.set_state(state)
                view = (
                    aug_basic(crop)(chunk, generator) if augment else resize_center_crop(chunk, resize_for(crop), crop)
                )
                out[k].append(backbone(view).float().cpu())
    return [torch.cat(parts).view(views, len(images), -1) for parts in out]


@pytest.mark.parametrize("augment", [True, False])
def test_streamed_views_equal_the_repeated_set(lite0, augment):
    images = torch.rand(7, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    models = [(lite0, 32), (lite0, 24)]
    # batches of 4 over 3 x 7 views: chunks straddle the end of a view and hold the same image twice
    expected = repeated_view_features(models, images, 3, torch.Generator().manual_seed(1), 4, augment)
    g = torch.Generator().manual_seed(1)
    got = view_features(models, images, 3, g, CPU, batch_size=4, augment=augment)
    for e, r in zip(expected, got, strict=True):
        assert r.shape == (3, 7, 1280) and r.dtype == torch.float32
        assert torch.allclose(r, e, atol=1e-5, rtol=0)
    assert torch.equal(g.get_state(), _drawn(1, 4, 21, augment))  # the same random draws were consumed
    half = view_features(models, images, 3, torch.Generator().manual_seed(1), CPU, 4, augment, torch.float16)
    assert half[0].dtype == torch.float16 and torch.allclose(half[0].float(), expected[0], atol=1e-2, rtol=1e-3)


def _drawn(seed, batch, total, augment):
    g = torch.Generator().manual_seed(seed)
    if augment:
        for start in range(0, total, batch):
            torch.rand(min(batch, total - start), 6, generator=g)
    return g.get_state()


def test_float16_features_that_overflow_are_refused():
    class Loud(torch.nn.Module):
        name = "loud"

        def forward(self, x):
            return torch.full((len(x), 4), 1e6)

    with pytest.raises(DataError, match="float16 range"):
        view_features([(Loud(), 8)], torch.rand(2, 3, 8, 8), 1, torch.Generator(), CPU, dtype=torch.float16)


# ---- the golden classifier -------------------------------------------------------------------------------------


class TinyEncoder(torch.nn.Module):
    """A fixed random convolution: features of the real splits in a blink."""

    name, feat_dim, input_size = "tiny", 16, 16

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(16, 3, 3, 3, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return self.conv(x).relu().mean(dim=(2, 3))

    def identity(self):
        return {"name": "tiny-golden-test-encoder"}


def test_golden_classifier_streams_and_matches_the_stacked_training(digits, monkeypatch, tmp_path):
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path))
    encoder = TinyEncoder()
    opts = FullProbeOptions(full_epochs=3, full_batch=64, full_views=2, full_base_lr=0.01)
    reads = []
    real_tensor = FeatureBank.tensor

    def spy(bank, indices=None):
        reads.append((bank.key, None if indices is None else len(indices)))
        return real_tensor(bank, indices)

    monkeypatch.setattr(FeatureBank, "tensor", spy)
    result = golden_classifier(digits, encoder, 16, opts, 11, CPU)
    train_keys = {feature_bank(digits, encoder, "train", crop=16, view_seed=v).key for v in range(2)}
    train_reads = [n for key, n in reads if key in train_keys]
    assert train_reads and all(n is not None and n <= opts.full_batch for n in train_reads)

    # the reference: every view stacked in memory (as it was), the same schedule and seed
    banks = [feature_bank(digits, encoder, "train", crop=16, view_seed=v) for v in range(2)]
    feats = torch.from_numpy(np.stack([np.asarray(b.features) for b in banks]))
    labels = banks[0].labels
    g = torch.Generator().manual_seed(11)
    head = new_head(encoder.feat_dim, 10, g)
    fit(
        [(head, opts.full_base_lr)],
        feats.shape[1],
        2,
        opts.full_epochs,
        opts.full_batch,
        lambda i, v: F.cross_entropy(head(feats[v, i].float()), labels[i]),
        g,
    )
    assert torch.allclose(result.head.weight, head.weight, atol=1e-5, rtol=0)
    assert torch.allclose(result.head.bias, head.bias, atol=1e-5, rtol=0)
    test = feature_bank(digits, encoder, "test", crop=16)
    with torch.no_grad():
        expected = float((head(test.tensor()).argmax(dim=1) == test.labels).float().mean())
    assert result.test_acc == pytest.approx(expected, abs=1e-6)


def test_every_evaluation_seed_has_its_own_cached_golden_classifier(digits, lite0, monkeypatch):
    synset = dd.distill("centroids", "digits", dataset=digits, model=lite0, crop=32)
    golden_opts = dict(full_epochs=4, full_base_lr=0.01, full_batch=96)  # full_batch 96: this test's heads only
    kw = dict(protocol="ci", data=digits, backbone=lite0, crop=32, epochs=20, views=2, **golden_opts)
    two = dd.evaluate(synset, seeds=2, **kw)
    golden = two.details["golden"]
    assert golden["seeds"] == [1000, 1001] and len(golden["test_acc"]) == 2 and min(golden["test_acc"]) > 0.5
    folders = [
        f
        for f in sorted((cache_root() / "golden").iterdir())
        if json.loads((f / "info.json").read_text())["full_batch"] == 96
    ]
    assert sorted(json.loads((f / "info.json").read_text())["seed"] for f in folders) == [1000, 1001]
    from safetensors.torch import load_file

    weights = [load_file(str(f / "head.safetensors"))["weight"] for f in folders]
    assert not torch.allclose(weights[0], weights[1])
    # seed 1001 of the two-seed run is the one-seed run of 1001: it used 1001's golden classifier, not 1000's
    alone = dd.evaluate(synset, seeds=1, first_seed=1001, **kw)
    assert alone.test_acc == two.test_acc[1:] and alone.details["golden"]["test_acc"] == golden["test_acc"][1:]

    def no_training(*args, **kwargs):
        raise AssertionError("a cached golden classifier was trained again")

    monkeypatch.setattr(golden_module, "fit", no_training)
    again = dd.evaluate(synset, protocol="kd", seeds=2, **{k: v for k, v in kw.items() if k != "protocol"})
    assert again.details["golden"]["test_acc"] == golden["test_acc"]
    assert dd.evaluate(synset, seeds=2, **kw).test_acc == two.test_acc


# ---- the ConvNet protocol's normalisation and test split ----------------------------------------------------


def _numpy_stats(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = pixels.astype(np.float64) / 255.0
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


def test_channel_stats_stream_equal_numpy_over_the_whole_split(digits, monkeypatch, tmp_path):
    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path))
    monkeypatch.setattr(memory, "CHANNEL_STATS_CHUNK_BYTES", 8 * 8 * 300)  # 300 native images a chunk
    split = load_dataset("digits").train  # a fresh split: nothing of it held in memory yet
    mean, std = channel_stats(split, 8, 10)  # native size: the uint8 pixels as they are
    ref_mean, ref_std = _numpy_stats(split.images.numpy())
    assert mean.shape == (1,) and np.allclose(mean, ref_mean, atol=1e-6) and np.allclose(std, ref_std, atol=1e-6)
    assert split not in memory._CACHE
    resized = channel_stats(split, 12, 10)  # resized: the pixels in_memory would hold
    held = in_memory(split, 12, 10)
    ref_mean, ref_std = _numpy_stats(held.images.numpy())
    assert np.allclose(resized[0], ref_mean, atol=1e-6) and np.allclose(resized[1], ref_std, atol=1e-6)
    assert torch.allclose(resized[0], held.channel_stats()[0], atol=1e-6)
    assert len(list((tmp_path / "channel_stats").glob("*.json"))) == 2

    def no_pass(*args, **kwargs):
        raise AssertionError("cached statistics were computed again")

    monkeypatch.setattr(memory, "in_memory", no_pass)
    assert torch.equal(channel_stats(load_dataset("digits").train, 8, 10)[0], mean)


def test_channel_stats_of_image_files(tiny_folder, monkeypatch, tmp_path):
    from PIL import Image

    monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path))
    data = load_dataset(f"imagefolder:{tiny_folder}", val_fraction=0.25)
    mean, std = channel_stats(data.train, 16, data.num_classes)
    pixels = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1)
            for p in map(data.train.path, range(len(data.train)))
        ]
    )
    ref_mean, ref_std = _numpy_stats(pixels)
    assert mean.shape == (3,) and np.allclose(mean, ref_mean, atol=1e-6) and np.allclose(std, ref_std, atol=1e-6)


def test_streamed_split_serves_the_in_memory_pixels(digits, tiny_folder):
    for split, resolution in ((digits.test, 12), (load_dataset(f"imagefolder:{tiny_folder}").test, 10)):
        streamed, held = StreamedSplit(split, resolution, 10), in_memory(split, resolution, 10)
        idx = torch.tensor([0, 2, 3, len(split) - 1])
        assert torch.equal(streamed.batch(idx), held.batch(idx)) and torch.equal(streamed.labels, held.labels)
        assert torch.equal(streamed.batch(), held.batch())


def test_convnet_protocol_loads_no_train_or_test_split_and_gives_the_same_numbers(digits):
    synset = dd.distill("random", "digits", ipc=3, dataset=digits)
    fresh = load_dataset("digits")  # new split objects: nothing of them held in memory yet
    opts = dict(epochs=4, val_every=2, width=8, batch_size=16, val_images=50)
    r = dd.evaluate(synset, protocol="convnet", data=fresh, seeds=1, **opts)
    assert fresh.train not in memory._CACHE and fresh.test not in memory._CACHE
    # the reference: every split in memory, as the protocol held them before
    train, val, test = (in_memory(s, 8, 10) for s in (digits.train, digits.val, digits.test))
    per = 50 // 10
    idx = torch.cat([members[:per] for members in val.by_class]).sort().values
    val_subset = FloatImages(val.batch(idx), val.labels[idx])
    options = ConvNetOptions(**opts)
    recipe = options.make_recipe(digits.mirror_safe)
    images, labels = synset_tensors(synset, 8, True)
    spec = ModelSpec("convnet", 10, train.channels, 8, 8, None)
    seed = r.seeds[0]
    ref = fit_and_select(spec, InputNorm.of(train), FloatImages(images, labels), recipe, val_subset, test, seed, 2, CPU)
    assert r.test_acc == pytest.approx([ref["test"]], abs=1e-6) and r.val_acc == pytest.approx([ref["val"]], abs=1e-6)
    assert r.details["test_last"] == pytest.approx([ref["test_last"]], abs=1e-6)


def test_a_loaded_set_does_not_keep_its_file_mapped(tmp_path):
    status = Path("/proc/self/status")
    if "RssFile" not in (status.read_text() if status.exists() else ""):
        pytest.skip("no per-kind resident memory on this system")

    def mapped_file_mb():
        line = next(x for x in status.read_text().splitlines() if x.startswith("RssFile:"))
        return int(line.split()[1]) / 1024

    images = torch.rand(400, 3, 128, 128, generator=torch.Generator().manual_seed(0))  # 75 MB
    SyntheticSet(images, torch.arange(400) % 10, [str(c) for c in range(10)]).save(tmp_path / "set")
    del images
    before = mapped_file_mb()
    loaded = SyntheticSet.load(tmp_path / "set")
    assert loaded.images.shape == (400, 3, 128, 128)
    assert mapped_file_mb() - before < 25  # the 75 MB file stayed mapped and resident beside the loaded images
