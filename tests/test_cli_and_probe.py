import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import datadistill as dd
from datadistill.cli import main
from datadistill.core.errors import DataError
from datadistill.evaluate.linear_probe import ProbeOptions, train_head
from datadistill.evaluate.results import EvalResult
from datadistill.synset.set import SyntheticSet


def _cli(capsys, *argv):
    code = main(["-q", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["distill", "sfm", "--data", "nope", "--out", "{tmp}/o"], "unknown dataset"),
        (["distill", "sfm", "--data", "digits", "--backbone", "nope", "--out", "{tmp}/o"], "unknown backbone"),
        (["distill", "random", "--data", "digits", "--ipc", "1000", "--out", "{tmp}/o"], "larger than"),
        (["distill", "random", "--data", "digits", "--out", "{tmp}/file/o"], "not writable"),
        (["distill", "sfm", "--data", "mnist", "--root", "{tmp}", "--out", "{tmp}/o"], "download"),
        (["eval", "{tmp}/missing-run", "--protocol", "convnet"], "does not exist"),
    ],
)
def test_bad_input_gives_one_clear_line(capsys, tmp_path, argv, message):
    (tmp_path / "file").write_text("a file, not a folder")
    code, _, err = _cli(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert err.startswith("datadistill: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "synset").exists()


def test_corrupt_image_in_imagefolder(capsys, tiny_folder, tmp_path):
    (tiny_folder / "train" / "ant" / "broken.png").write_bytes(b"\x89PNG garbage")
    code, _, err = _cli(
        capsys,
        "distill",
        "centroids",
        "--data",
        f"imagefolder:{tiny_folder}",
        "--crop",
        "32",
        "--val-fraction",
        "0",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "broken.png" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "synset").exists()


def test_nan_loss_through_cli(capsys, tmp_path, monkeypatch):
    from datadistill.methods.sfm import SFM

    monkeypatch.setattr(SFM, "loss", lambda self, ctx, images: images.sum() * float("nan"))
    code, _, err = _cli(
        capsys, "distill", "sfm", "--data", "digits", "--crop", "32", "--steps", "3", "--out", str(tmp_path / "o")
    )
    assert code == 2 and "nan" in err.lower() and "Traceback" not in err


def test_subprocess_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "datadistill", "-q", "distill", "sfm", "--data", "nope", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "unknown dataset" in proc.stderr


def test_distill_eval_list_stats_commands(capsys, tmp_path):
    run = tmp_path / "run"
    code, out, _ = _cli(
        capsys,
        "distill",
        "sfm",
        "--data",
        "digits",
        "--crop",
        "32",
        "--steps",
        "4",
        "--grow-every",
        "2",
        "--out",
        str(run),
    )
    assert code == 0 and "synset" in out
    code, out, _ = _cli(capsys, "eval", str(run), "--seeds", "2", "--epochs", "20", "--views", "4")
    evals = json.loads((run / "metrics.json").read_text())["eval"]  # keys: protocol@backbone|settings digest
    ev = next(e for k, e in evals.items() if k.startswith("linear-probe@efficientnet_lite0|"))
    assert len(ev["test_acc"]) == 2 and "Evaluation" in (run / "report.md").read_text()
    # the printed line gives the recorded accuracies: per seed, and their mean ± population std
    acc = 100 * np.array(ev["test_acc"])
    per_seed = f"({acc[0]:.2f}, {acc[1]:.2f})"
    assert code == 0 and f"test {acc.mean():.2f} ± {abs(acc[0] - acc[1]) / 2:.2f} % over 2 seeds {per_seed}" in out
    code, out, _ = _cli(capsys, "list")
    assert code == 0 and "efficientnet_lite0" in out and "digits" in out and "sfm" in out
    code, out, _ = _cli(capsys, "stats", "--data", "digits", "--crop", "32", "--kmeans", "2")
    assert code == 0 and "10 classes" in out


def test_train_head_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(5)
    feats = torch.nn.functional.one_hot(labels, 4).float() * 5 + 0.1 * torch.randn(20, 4, generator=g)
    cfg = ProbeOptions(epochs=200, views=1, base_lr=0.5)
    head = train_head(feats[None], labels, 4, cfg, g)
    assert (head(feats).argmax(1) == labels).all()


def test_eval_result_statistics():
    # mean 0.6; population std sqrt((0.1^2 + 0.1^2 + 0) / 3) = sqrt(0.02 / 3), not the sample std 0.1
    r = EvalResult("linear-probe", "b", [0.5, 0.7, 0.6], [0.4, 0.5, 0.9], [1, 2, 3])
    assert r.mean == pytest.approx(0.6) and r.std == pytest.approx((0.02 / 3) ** 0.5)
    assert r.val_mean == pytest.approx(0.6) and r.summary() == "60.00 ± 8.16"


def test_probe_is_deterministic_and_checks_classes(digits, lite0):
    from sklearn.linear_model import LogisticRegression

    from datadistill.data import resize_center_crop
    from datadistill.features.bank import feature_bank, resize_for

    s = dd.distill("random", "digits", dataset=digits)
    # without augmentation the probe is a linear classifier on the 10 images' centre-view features: trained to
    # convergence it scores about what scikit-learn's (nearly unregularised) logistic regression does on them
    kw = dict(data=digits, backbone=lite0, seeds=2, epochs=300, views=1, augment=False, base_lr=2.56, crop=32)
    a, b = dd.evaluate(s, **kw), dd.evaluate(s, **kw)
    assert len(a.test_acc) == 2 and a.test_acc == b.test_acc
    test = feature_bank(digits, lite0, "test", crop=32)
    with torch.no_grad():
        train = lite0(resize_center_crop(s.images, resize_for(32), 32))
    reference = LogisticRegression(C=1e4, max_iter=10000).fit(train.numpy(), s.labels.numpy())
    expected = float((reference.predict(test.tensor().numpy()) == test.labels.numpy()).mean())
    assert expected > 0.3 and a.mean == pytest.approx(expected, abs=0.1)  # chance is 0.1
    wrong = SyntheticSet(s.images, s.labels, [f"x{i}" for i in range(10)])
    with pytest.raises(DataError, match="classes"):
        dd.evaluate(wrong, **kw)


def _help_commands() -> list[list[str]]:
    from datadistill.evaluate import PROTOCOLS
    from datadistill.methods import METHODS
    from datadistill.training import PRETRAINERS

    return (
        [["--help"], ["demo", "--help"], ["bench", "--help"], ["report", "--help"], ["stats", "--help"]]
        + [["distill", name, "--help"] for name in METHODS]
        + [["eval", "--protocol", name, "--help"] for name in PROTOCOLS]
        + [["pretrain", kind, "--help"] for kind in PRETRAINERS]
    )


def test_every_help_page_renders(capsys):
    # argparse %-formats help text: a stray '%' in one option's help broke `pretrain flow --help`
    for argv in _help_commands():
        with pytest.raises(SystemExit) as stop:
            main(argv)
        out = capsys.readouterr().out
        assert stop.value.code == 0 and "usage: datadistill" in out, argv
        if argv[:2] == ["pretrain", "flow"]:
            assert "cosine decay to 10 %)" in out
