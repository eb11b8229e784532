"""Distilled sets travel: ``datadistill export`` (pt, imagefolder, ddranking) and evaluating sets made elsewhere
(MTT / DATM image and label tensors, LGM-style dicts, exported folders) with ``eval`` and ``bench --methods file:``."""

import argparse
import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch

import datadistill as dd
from datadistill.bench import runner as bench_module
from datadistill.cli import main
from datadistill.core.errors import ConfigError, DatadistillError, DataError
from datadistill.synset.set import SyntheticSet

# The evaluation every round trip repeats: the linear probe at the acceptance sizes (crop 32, 20 epochs, 2 views,
# 2 seeds) on digits.
EVAL = ["--seeds", "2", "--epochs", "20", "--views", "2"]
PROBE = [*EVAL, "--eval-backbone", "efficientnet_lite0", "--crop", "32"]

# CIFAR-10's statistics as MTT / DATM normalise their sets (their utils.get_dataset); any statistics would do for
# the round trip, these are the ones the `cifar10` preset must hold.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def _cli(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _printed_acc(out: str) -> list[float]:
    """The per-seed test accuracies ``eval`` prints: '... over 2 seeds (17.85, 15.82); ...'."""
    inner = out.split(" seeds (", 1)[1].split(")", 1)[0]
    return [float(v) for v in inner.split(", ")]


def _shown(accs: list[float]) -> list[float]:
    return [float(f"{100 * a:.2f}") for a in accs]


@pytest.fixture(scope="module")
def sfm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("interop") / "run"
    dd.distill("sfm", "digits", ipc=2, out=run, crop=32, steps=4, grow_every=2, init="real")
    return run


@pytest.fixture(scope="module")
def run_acc(sfm_run):
    """The run's own accuracy, as `datadistill eval RUN` records it."""
    assert main(["-q", "eval", str(sfm_run), *EVAL]) == 0
    evals = json.loads((sfm_run / "metrics.json").read_text())["eval"]
    return next(e for k, e in evals.items() if k.startswith("linear-probe@efficientnet_lite0|"))["test_acc"]


def test_pt_and_imagefolder_round_trip(sfm_run, run_acc, tmp_path, capsys):
    for fmt in ("pt", "imagefolder"):
        code, out, err = _cli(capsys, "export", sfm_run, "--format", fmt, "--out", tmp_path / fmt)
        assert code == 0 and "20 images" in out, err
    # pt: the tensors exactly as stored, plain (weights_only), with meta.json naming what an evaluator needs
    stored = SyntheticSet.load(sfm_run)
    images = torch.load(tmp_path / "pt" / "images.pt", weights_only=True)
    labels = torch.load(tmp_path / "pt" / "labels.pt", weights_only=True)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(images, stored.images) and torch.equal(labels, stored.labels)
    meta = json.loads((tmp_path / "pt" / "meta.json").read_text())
    assert meta["dataset"] == "digits" and meta["classes"] == [str(i) for i in range(10)] and meta["method"] == "sfm"
    assert meta["normalisation"]["kind"] == "backbone" and meta["normalisation"]["mean"] == [0.5, 0.5, 0.5]
    import hashlib

    assert meta["config_sha256"] == hashlib.sha256((sfm_run / "config.json").read_bytes()).hexdigest()
    assert meta["datadistill"] == dd.__version__ and meta["unbounded"] is False
    # evaluated back with the same protocol and seeds: pt exactly, the PNGs within their quantisation
    code, out, _ = _cli(capsys, "eval", tmp_path / "pt", "--data", "digits", *EVAL)
    assert code == 0 and _printed_acc(out) == _shown(run_acc)
    code, out, _ = _cli(capsys, "eval", tmp_path / "imagefolder", *EVAL)  # the folder names its dataset
    assert code == 0 and abs(np.mean(_printed_acc(out)) - 100 * np.mean(run_acc)) <= 0.5
    png = SyntheticSet.load(tmp_path / "imagefolder")
    assert torch.equal(png.labels, stored.labels) and (png.images - stored.images).abs().max() <= 0.5 / 255 + 1e-6


def test_mtt_pair_evaluates_as_the_unnormalised_images(sfm_run, run_acc, tmp_path, capsys):
    stored = SyntheticSet.load(sfm_run)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    mtt = tmp_path / "mtt"
    mtt.mkdir()
    torch.save((stored.images - mean) / std, mtt / "images_best.pt")  # as MTT's distill.py saves image_syn
    torch.save(stored.labels, mtt / "labels_best.pt")
    torch.save({"images": stored.images, "labels": stored.labels}, tmp_path / "data.pth")  # LGM: pixels
    accs = []
    for argv in (
        [mtt, "--input-norm", "cifar10"],
        [mtt / "images_best.pt", "--input-norm", ",".join(map(str, CIFAR_MEAN + CIFAR_STD))],  # MEAN,STD
        [tmp_path / "data.pth"],
    ):
        code, out, err = _cli(capsys, "eval", *argv, "--data", "digits", *PROBE)
        assert code == 0, err
        accs.append(_printed_acc(out))
    unnormalised = accs[-1]
    assert accs[0] == accs[1] == unnormalised == _shown(run_acc)
    # normalised values without --input-norm: refused, naming the flag
    code, _, err = _cli(capsys, "eval", mtt, "--data", "digits", *PROBE)
    assert code == 2 and "--input-norm" in err and len(err.strip().splitlines()) == 1


def _bad_files(tmp_path):
    """(name, path) of sets that must be refused with one line."""
    x, y = torch.rand(20, 3, 8, 8), torch.arange(10).repeat(2)
    d = tmp_path / "bad"
    d.mkdir()
    torch.save(x.permute(0, 2, 3, 1), d / "images_shape.pt")  # channels last
    torch.save(y, d / "labels_shape.pt")
    torch.save(torch.rand(20, 5, 8, 8), d / "images_channels.pt")
    torch.save(y, d / "labels_channels.pt")
    torch.save({"images": x, "labels": y, "args": argparse.Namespace(lr=0.1)}, d / "objects.pth")
    torch.save(x, d / "images_outside.pt")
    torch.save(y + 1, d / "labels_outside.pt")  # label 10 of 10 classes
    torch.save(x, d / "images_count.pt")
    torch.save(y[:-1], d / "labels_count.pt")
    (d / "notatorch.pt").write_bytes(b"\x00not a torch file")
    torch.save((x[:0], y[:0]), d / "empty.pt")
    png = d / "pngs" / "cat"  # a class folder that is not one of digits' classes
    png.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png / "0.png")
    toy = SyntheticSet(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), ["cat", "dog"], {"dataset": "toy"})
    dd.export(toy.save(d / "toy"), "pt", d / "exported")  # an export of another dataset, evaluated with --data digits
    return {
        "shape": (d / "images_shape.pt", "N x C x H x W"),
        "channels": (d / "images_channels.pt", "C = 1 or 3"),
        "objects": (d / "objects.pth", "only plain tensors"),
        "outside": (d / "images_outside.pt", "outside the 10 classes"),
        "count": (d / "images_count.pt", "20 images but"),
        "not torch": (d / "notatorch.pt", "cannot read"),
        "empty": (d / "empty.pt", "holds no images"),
        "folder": (d / "pngs", "not one of the 10 classes"),
        "classes": (d / "exported", "do not match dataset 'digits'"),
    }


def test_bad_files_give_one_line_in_eval_and_bench(tmp_path, capsys):
    for name, (path, message) in _bad_files(tmp_path).items():
        code, out, err = _cli(capsys, "eval", path, "--data", "digits", *PROBE)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (name, err)
        assert "Traceback" not in err and err.startswith("datadistill: error:")
        code, out, err = _cli(
            capsys, "bench", "--data", "digits", "--methods", f"file:{path}", "--seeds", "1", "--out", tmp_path / name
        )
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (name, err)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['DD_EVIL_MARK']}",))


def test_malicious_pickles_are_refused_without_running(tmp_path, capsys, monkeypatch):
    """Tensor files are read with weights_only=True: a pickle that would run code when loaded is one line, exit 2,
    and the code never runs (as for backbone weights)."""
    mark = tmp_path / "pwned"
    monkeypatch.setenv("DD_EVIL_MARK", str(mark))
    x, y = torch.rand(10, 3, 8, 8), torch.arange(10)
    cases = {"images": tmp_path / "images", "labels": tmp_path / "labels", "zip": tmp_path / "zip"}
    for d in cases.values():
        d.mkdir()
    (cases["images"] / "images_best.pt").write_bytes(pickle.dumps({"x": _Evil()}))  # a bare pickle
    torch.save(y, cases["images"] / "labels_best.pt")
    torch.save(x, cases["labels"] / "images_best.pt")
    torch.save([_Evil()], cases["labels"] / "labels_best.pt")  # torch's zip format, the object inside
    torch.save({"images": x, "labels": y, "hook": _Evil()}, cases["zip"] / "data.pth")
    for name, path in {**cases, "zip": cases["zip"] / "data.pth"}.items():
        code, _, err = _cli(capsys, "eval", path, "--data", "digits", *PROBE)
        assert code == 2 and err.startswith("datadistill: error:") and len(err.strip().splitlines()) == 1, name
        assert "weights_only=True" in err, (name, err)
        # the refused global is named where torch names it (its zip files; a bare pickle of protocol 4 stops earlier)
        assert name == "images" or "only plain tensors" in err and "system" in err, (name, err)
    assert not mark.exists()


def test_tensor_files_forms(tmp_path, caplog):
    classes = [str(i) for i in range(10)]
    gray = torch.rand(10, 1, 6, 6)
    torch.save((gray, torch.arange(10)), tmp_path / "pair.pt")  # a tuple (images, labels)
    s = SyntheticSet.load(tmp_path / "pair.pt", classes)
    assert s.images.shape == (10, 3, 6, 6) and torch.equal(s.images[:, 2], gray[:, 0])  # one channel -> three
    # DATM's learned soft labels: one score per class, evaluated as their argmax
    scores = torch.full((10, 10), -1.0)
    scores[torch.arange(10), torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])] = 2.0
    torch.save(torch.rand(10, 3, 6, 6), tmp_path / "images_best.pt")
    torch.save(scores, tmp_path / "labels_best.pt")
    with caplog.at_level(logging.WARNING, logger="datadistill"):
        s = SyntheticSet.load(tmp_path, classes)
    assert s.labels.tolist() == [3, 1, 4, 1, 5, 9, 2, 6, 5, 3] and "soft labels" in caplog.text
    # a normalisation undone: x * std + mean per channel (uint8 and one statistic for all channels too)
    torch.save({"x": torch.zeros(10, 3, 4, 4), "y": torch.arange(10)}, tmp_path / "zeros.pth")
    s = SyntheticSet.load(tmp_path / "zeros.pth", classes, input_norm="0.25:0.5")
    assert torch.allclose(s.images, torch.full_like(s.images, 0.25))
    with pytest.raises(ConfigError, match="gives 2 channel statistics"):
        SyntheticSet.load(tmp_path / "zeros.pth", classes, input_norm="0.1,0.2:0.3,0.4")
    with pytest.raises(ConfigError, match="pass the dataset"):
        SyntheticSet.load(tmp_path / "zeros.pth")
    s.save(tmp_path / "saved")
    with pytest.raises(ConfigError, match="pixels"):  # our own sets hold pixels
        SyntheticSet.load(tmp_path / "saved", input_norm="cifar10")
    # values outside [0, 1] that the user says are pixels stay as they are (unbounded, like DM --no-clamp)
    torch.save({"images": torch.full((10, 3, 4, 4), 1.5), "labels": torch.arange(10)}, tmp_path / "hot.pth")
    s = SyntheticSet.load(tmp_path / "hot.pth", classes, input_norm="none")
    assert s.meta["unbounded"] and float(s.images.max()) == 1.5
    with pytest.raises(ConfigError, match="input-norm"):
        SyntheticSet.load(tmp_path / "hot.pth", classes)


def test_input_norm_presets_hold_the_projects_statistics():
    from datadistill.synset.tensorfiles import parse_input_norm

    assert parse_input_norm("cifar10") == (CIFAR_MEAN, CIFAR_STD)
    assert parse_input_norm("CIFAR100") == ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762))
    assert parse_input_norm("0.5:0.25") == ((0.5,), (0.25,)) and parse_input_norm("none") == "none"
    assert parse_input_norm("0.5,0.25") == ((0.5,), (0.25,))  # MEAN,STD: the means, then the stds
    assert parse_input_norm("0.1,0.2,0.3,0.4,0.5,0.6") == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    for bad in ("0.5", "0.5:0", "1,2:3", "1,2,3", "0.5,0", "a:b", "a,b", "tiny"):
        with pytest.raises(ConfigError):
            parse_input_norm(bad)


def _quadrant_set(classes: list[str], factor_meta: dict) -> SyntheticSet:
    """2 images of 8x8 whose 2x2 tiles are each one grey level: image n, tile (i, j) = (10 n + 2 i + j + 1) / 40."""
    images = torch.zeros(2, 3, 8, 8)
    for n in range(2):
        for i in range(2):
            for j in range(2):
                images[n, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = (10 * n + 2 * i + j + 1) / 40
    return SyntheticSet(images, torch.tensor([0, 1]), classes, {"dataset": "toy", **factor_meta})


def test_multi_formation_sets_are_decoded_by_default(tmp_path):
    s = _quadrant_set(["T-shirt/top", "bag"], {"factor": 2, "method": "tgdd"})
    dd.export(s.save(tmp_path / "set"), "imagefolder", tmp_path / "png")
    png = SyntheticSet.load(tmp_path / "png")
    # IDC's decoding: every tile upsampled to a full image with its image's label, tile-major ((i, j) then n),
    # so decoded image k = (2 i + j) * 2 + n shows the grey level of tile (i, j) of image n
    expected = [(10 * n + t + 1) / 40 for t in range(4) for n in range(2)]
    assert png.labels.tolist() == [0, 1] * 4 and "factor" not in png.meta
    assert np.allclose(png.images.mean(dim=(1, 2, 3)).numpy(), expected, atol=0.5 / 255)
    assert json.loads((tmp_path / "png" / "classes.json").read_text())["folders"] == {
        "T-shirt_top": "T-shirt/top",
        "bag": "bag",
    }
    dd.export(tmp_path / "set", "imagefolder", tmp_path / "tiles", decode=False)
    assert len(SyntheticSet.load(tmp_path / "tiles")) == 2
    dd.export(tmp_path / "set", "pt", tmp_path / "pt")  # pt keeps the stored tiles and says their factor
    back = SyntheticSet.load(tmp_path / "pt")
    assert torch.equal(back.images, s.images) and back.meta["factor"] == 2


def test_unbounded_set_warns_once_for_the_pngs(tmp_path, caplog):
    images = torch.full((2, 3, 4, 4), 0.5)
    images[0, 0, 0, :3] = torch.tensor([-0.5, 1.5, 2.0])  # 3 of 96 values outside [0, 1]
    s = SyntheticSet(images, torch.tensor([0, 1]), ["a", "b"], {"unbounded": True})
    s.save(tmp_path / "set")
    with caplog.at_level(logging.WARNING, logger="datadistill"):
        dd.export(tmp_path / "set", "imagefolder", tmp_path / "png")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unbounded" in warnings[0].message and "3 of 96" in warnings[0].message
    dd.export(tmp_path / "set", "pt", tmp_path / "pt")  # pt keeps the values
    assert torch.equal(torch.load(tmp_path / "pt" / "images.pt", weights_only=True), images)
    assert json.loads((tmp_path / "pt" / "meta.json").read_text())["unbounded"] is True


def test_export_refuses_a_non_empty_folder_unless_forced(sfm_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = _cli(capsys, "export", sfm_run, "--format", "pt", "--out", out)
    assert code == 2 and "--force" in err and (out / "keep.txt").exists()
    code, _, _ = _cli(capsys, "export", sfm_run, "--format", "pt", "--out", out, "--force")
    assert code == 0 and not (out / "keep.txt").exists() and (out / "images.pt").exists()
    code, _, err = _cli(capsys, "export", sfm_run, "--format", "ddranking", "--out", tmp_path / "d")
    assert code == 2 and "ddranking 0.2.0 evaluates" in err and not (tmp_path / "d").exists()


# ddranking 0.2.0, ddranking/utils/data.py, get_dataset(): CIFAR10 (and CIFAR100) are normalised with mean
# [0.4914, 0.4822, 0.4465], std [0.2023, 0.1994, 0.2010] at im_size (32, 32); ImageNette with mean
# [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225], resized to im_size, (128, 128) in the MTT / DD-Ranking tables.
# compute_metrics(image_tensor=..., hard_labels=...) wraps them in TensorDataset(image_tensor, hard_labels) as they
# are (ddranking/metrics/hard_label.py), so the tensor must be N x 3 x S x S and already normalised.
DDRANKING = {"cifar10": (32, CIFAR_MEAN, CIFAR_STD), "imagenette": (128, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


@pytest.mark.parametrize("dataset", list(DDRANKING))
def test_ddranking_layout(tmp_path, dataset):
    size, mean, std = DDRANKING[dataset]
    grey = torch.tensor([0.2, 0.5, 0.9])  # one colour per image, so resizing leaves every pixel as it is
    images = grey.view(3, 1, 1, 1).expand(3, 3, 16, 16).clone()
    classes = [f"c{i}" for i in range(10)]
    SyntheticSet(images, torch.tensor([0, 5, 9]), classes, {"dataset": dataset}).save(tmp_path / "set")
    dd.export(tmp_path / "set", "ddranking", tmp_path / "ddr")
    x = torch.load(tmp_path / "ddr" / "images.pt", weights_only=True)
    y = torch.load(tmp_path / "ddr" / "labels.pt", weights_only=True)
    assert x.shape == (3, 3, size, size) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [0, 5, 9]
    for n, g in enumerate(grey.tolist()):
        for c in range(3):
            assert torch.allclose(x[n, c], torch.tensor((g - mean[c]) / std[c]), atol=1e-5)
    meta = json.loads((tmp_path / "ddr" / "meta.json").read_text())
    assert meta["ddranking"]["im_size"] == [size, size] and meta["normalised"]["mean"] == list(mean)
    values = [(g - mean[c]) / std[c] for g in grey.tolist() for c in range(3)]
    assert meta["value_range"] == pytest.approx([min(values), max(values)], abs=1e-5)  # what images.pt holds
    back = SyntheticSet.load(tmp_path / "ddr")  # read back, the normalisation undone
    assert torch.allclose(back.images, images[:, :, :1, :1].expand(-1, -1, size, size), atol=1e-5)


def test_bench_file_sets_are_identified_by_content(sfm_run, tmp_path, monkeypatch):
    stored = SyntheticSet.load(sfm_run)
    mtt = tmp_path / "mtt"
    mtt.mkdir()
    torch.save(stored.images * 2 - 1, mtt / "images_best.pt")  # normalised with mean 0.5, std 0.5
    torch.save(stored.labels, mtt / "labels_best.pt")
    dd.export(sfm_run, "pt", tmp_path / "exported")
    plan = bench_module.BenchPlan(
        "digits",
        ["random", f"file:{mtt}@0.5:0.5", f"file:{tmp_path / 'exported'}"],
        ["linear-probe"],
        seeds=2,
        crops={"efficientnet_lite0": 32},
        settings=["epochs=20", "views=2"],
    )
    out = tmp_path / "b"
    records = {r["method"]: r for r in bench_module.bench(plan, out)}
    assert records["file:mtt"]["ipc"] == 2 and records["random"]["ipc"] == 1  # a file's table is its own IPC
    assert records["file:mtt"]["test_acc"] == records["file:exported"]["test_acc"]
    assert records["file:mtt"]["set_source"] == str(mtt) and records["file:mtt"]["runs"] == []
    summary = (out / "summary.md").read_text()
    assert "| file:mtt | linear-probe |" in summary and f"- file:mtt: `{mtt}`" in summary
    paths = dd.report_runs(out)
    assert f"`{mtt}`" in paths["markdown"].read_text() and str(mtt) in paths["html"].read_text()

    calls = []
    real = bench_module.evaluate
    monkeypatch.setattr(bench_module, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    bench_module.bench(plan, out)
    assert calls == []  # the same files: every cell reused
    labels = stored.labels.clone()
    labels[[0, 2]] = labels[[2, 0]]
    torch.save(labels, mtt / "labels_best.pt")  # a changed file is evaluated again, the others are not
    again = {r["method"]: r for r in bench_module.bench(plan, out)}
    assert len(calls) == 1 and again["file:mtt"]["key"] != records["file:mtt"]["key"]


def test_file_spec_names_and_errors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "images_best.pt").write_bytes(b"")
    specs = [f"file:{tmp_path / 'a' / 'images_best.pt'}", f"file:{tmp_path / 'b' / 'images_best.pt'}@cifar10"]
    assert sorted(bench_module.method_labels(specs).values()) == ["file:a/images_best.pt", "file:b/images_best.pt"]
    with pytest.raises(DataError, match="does not exist"):
        bench_module.BenchPlan("digits", [f"file:{tmp_path / 'missing.pt'}"]).validate()
    with pytest.raises(ConfigError, match="input-norm"):
        bench_module.BenchPlan("digits", [f"{specs[0]}@nonsense"]).validate()
    with pytest.raises(DatadistillError):
        bench_module.BenchPlan("digits", ["neighbors:" + specs[0], specs[0]]).validate()
