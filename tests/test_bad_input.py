"""The bad-input matrix: every user-facing entry point, one clear line per case, exit status 2, nothing
half-written and nothing that blocks the corrected command. Each case prepares its input, runs the CLI in-process,
checks stderr and the output folder, then runs the corrected command on the same output folder."""

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datadistill.cli import main

SFM_FAST = ["--crop", "32", "--steps", "2", "--grow-every", "1", "--init", "real"]
RANDOM_OK = ["distill", "random", "--data", "digits", "--out", "{out}"]
SFM_OK = ["distill", "sfm", "--data", "digits", *SFM_FAST, "--out", "{out}"]


def _folder(root: Path, per_class: int = 3, classes=("ant", "bee"), mode: str = "RGB") -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(arr).convert(mode).save(d / f"{i}.png")
    return root


def _truncated(root: Path) -> str:
    folder = _folder(root)
    png = folder / "train" / "bee" / "0.png"
    png.write_bytes(png.read_bytes()[:40])
    return f"imagefolder:{folder}"


def _corrupt(root: Path) -> str:
    folder = _folder(root)
    (folder / "train" / "ant" / "9.png").write_bytes(b"\x89PNG not really")
    return f"imagefolder:{folder}"


def _random_bytes_png(root: Path) -> str:
    folder = _folder(root)
    (folder / "train" / "ant" / "7.png").write_bytes(np.random.default_rng(1).bytes(300))
    return f"imagefolder:{folder}"


def _zero_byte_jpeg(root: Path) -> str:
    folder = _folder(root)
    (folder / "train" / "bee" / "8.jpg").write_bytes(b"")
    return f"imagefolder:{folder}"


def _text_named_png(root: Path) -> str:
    folder = _folder(root)
    (folder / "train" / "bee" / "notes.png").write_text("a text file, not an image")
    return f"imagefolder:{folder}"


def _empty_class(root: Path) -> str:
    folder = _folder(root)
    (folder / "train" / "cat").mkdir()
    return f"imagefolder:{folder}"


def _small_class(root: Path) -> str:
    folder = _folder(root)
    for png in sorted((folder / "train" / "bee").glob("*.png"))[1:]:
        png.unlink()
    return f"imagefolder:{folder}"


def _not_a_run(root: Path) -> str:
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("not a run")
    return str(root)


def _empty_dataset(root: Path) -> str:
    (root / "train").mkdir(parents=True)
    return f"imagefolder:{root}"


def _synset_of_other_dataset(root: Path) -> str:
    folder = _folder(root / "other", classes=("x", "y", "z"))
    assert (
        main(
            [
                "-q",
                "distill",
                "random",
                "--data",
                f"imagefolder:{folder}",
                "--val-fraction",
                "0",
                "--out",
                str(root / "foreign"),
            ]
        )
        == 0
    )
    return str(root / "foreign")


def _labels_outside(root: Path) -> str:
    pngs = root / "pngs"
    pngs.mkdir(parents=True)
    for label in (0, 12):
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(pngs / f"c{label}_0.png")
    return str(pngs)


def _nan_in_loss(monkeypatch) -> None:
    from datadistill.methods.sfm import SFM

    monkeypatch.setattr(SFM, "loss", lambda self, ctx, images: images.sum() * float("inf"))


def _disk_full(monkeypatch) -> None:
    import datadistill.core.io as ddio

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ddio.os, "fsync", full)


# (case id, argv template, preparation, expected words in the one-line error)
CASES = [
    (
        "missing dataset",
        ["distill", "random", "--data", "mnist", "--root", "{tmp}/none", "--out", "{out}"],
        None,
        "download",
    ),
    ("unknown dataset", ["distill", "random", "--data", "nope", "--out", "{out}"], None, "unknown dataset"),
    (
        "empty dataset",
        ["distill", "random", "--data", "{prep}", "--out", "{out}"],
        _empty_dataset,
        "no class sub-folders",
    ),
    ("empty class", ["distill", "random", "--data", "{prep}", "--out", "{out}"], _empty_class, "has no images"),
    (
        "corrupt image",
        ["distill", "centroids", "--data", "{prep}", "--crop", "32", "--val-fraction", "0", "--out", "{out}"],
        _corrupt,
        "9.png",
    ),
    (
        "truncated image",
        ["distill", "centroids", "--data", "{prep}", "--crop", "32", "--val-fraction", "0", "--out", "{out}"],
        _truncated,
        "0.png",
    ),
    (
        "random bytes named .png",
        ["distill", "random", "--data", "{prep}", "--out", "{out}"],
        _random_bytes_png,
        "7.png",
    ),
    ("zero-byte jpeg", ["distill", "random", "--data", "{prep}", "--out", "{out}"], _zero_byte_jpeg, "8.jpg"),
    (
        "text file named .png",
        ["eval", "--protocol", "full", "--data", "{prep}", "--eval-backbone", "efficientnet_lite0"],
        _text_named_png,
        "notes.png",
    ),
    (
        "ipc larger than a class",
        ["distill", "random", "--data", "digits", "--ipc", "1000", "--out", "{out}"],
        None,
        "larger than",
    ),
    (
        "class smaller than ipc",
        ["distill", "random", "--data", "{prep}", "--ipc", "2", "--val-fraction", "0", "--out", "{out}"],
        _small_class,
        "only 1 training images",
    ),
    ("missing path", ["distill", "random", "--data", "imagefolder:/nope", "--out", "{out}"], None, "does not exist"),
    ("ipc zero", ["distill", "random", "--data", "digits", "--ipc", "0", "--out", "{out}"], None, "at least 1"),
    ("ipc negative", ["distill", "random", "--data", "digits", "--ipc", "-3", "--out", "{out}"], None, "at least 1"),
    ("steps negative", ["distill", "sfm", "--data", "digits", "--steps", "-1", "--out", "{out}"], None, "--steps"),
    ("lr nan", ["distill", "sfm", "--data", "digits", *SFM_FAST, "--lr", "nan", "--out", "{out}"], None, "finite"),
    ("lr inf", ["distill", "sfm", "--data", "digits", *SFM_FAST, "--lr", "inf", "--out", "{out}"], None, "finite"),
    (
        "lr negative",
        ["distill", "sfm", "--data", "digits", *SFM_FAST, "--lr", "-1", "--out", "{out}"],
        None,
        "positive",
    ),
    (
        "unknown backbone",
        ["distill", "sfm", "--data", "digits", "--backbone", "nope", "--out", "{out}"],
        None,
        "unknown backbone",
    ),
    (
        "missing weights",
        ["distill", "sfm", "--data", "digits", "--weights", "{tmp}/w.pth", "--out", "{out}"],
        None,
        "not found",
    ),
    ("unknown option value", ["distill", "lgm", "--data", "digits", "--grad", "magic", "--out", "{out}"], None, None),
    ("nan in a loss", ["distill", "sfm", "--data", "digits", *SFM_FAST, "--out", "{out}"], _nan_in_loss, "inf"),
    ("unwritable output", ["distill", "random", "--data", "digits", "--out", "{tmp}/a-file/out"], None, "not writable"),
    ("disk full", ["distill", "random", "--data", "digits", "--out", "{out}"], _disk_full, "no space left"),
    (
        "synset of another dataset",
        ["eval", "{prep}", "--data", "digits", "--epochs", "2", "--views", "1"],
        _synset_of_other_dataset,
        "do not match",
    ),
    (
        "labels outside the class list",
        ["eval", "{prep}", "--data", "digits", "--epochs", "2"],
        _labels_outside,
        "outside",
    ),
    ("eval of nothing", ["eval", "{tmp}/empty", "--data", "digits"], None, "no png images"),
    ("eval of a folder that is not a run", ["eval", "{prep}"], _not_a_run, "not a run directory"),
    ("unknown protocol", ["eval", "x", "--protocol", "nope"], None, None),
    (
        "bench with an unknown option",
        ["bench", "--data", "digits", "--methods", "random", "--set", "nope=1", "--out", "{out}"],
        None,
        "no benchmarked method",
    ),
    ("pretrain of an unknown kind", ["pretrain", "nope", "--data", "digits"], None, None),
]

# The corrected command of a case, run on the same output folder after the failure: whatever the failure left
# there must not stop it (a failed run without a checkpoint binds no config). Cases refused before the output folder
# exists are covered by its absence; a few of them run their corrected command all the same.
CENTROIDS_OK = ["distill", "centroids", "--data", "digits", "--crop", "32", "--out", "{out}"]
FIXES = {
    "missing dataset": RANDOM_OK,
    "empty class": RANDOM_OK,
    "corrupt image": CENTROIDS_OK,
    "truncated image": CENTROIDS_OK,
    "random bytes named .png": ["distill", "random", "--data", "{prep}", "--skip-corrupt", "--out", "{out}"],
    "zero-byte jpeg": ["distill", "random", "--data", "{prep}", "--skip-corrupt", "--out", "{out}"],
    "class smaller than ipc": ["distill", "random", "--data", "{prep}", "--val-fraction", "0", "--out", "{out}"],
    "missing path": RANDOM_OK,
    "ipc negative": RANDOM_OK,
    "lr nan": SFM_OK,
    "nan in a loss": ["distill", "sfm", "--data", "digits", *SFM_FAST, "--lr", "0.001", "--out", "{out}"],
    "disk full": RANDOM_OK,
}

# Cases refused only once the run has started (while reading images, training, writing): the others are refused
# before the output folder is created.
FAIL_DURING_THE_RUN = {"nan in a loss", "disk full"}


@pytest.mark.parametrize("case, argv, prepare, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_matrix(case, argv, prepare, words, tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("a file, not a folder")
    (tmp_path / "empty").mkdir()
    prep = ""
    if prepare is not None:
        if prepare.__code__.co_varnames[:1] == ("monkeypatch",):
            prepare(monkeypatch)
        else:
            prep = prepare(tmp_path / "prep")
    out = tmp_path / "out"
    args = [a.format(tmp=tmp_path, out=out, prep=prep) for a in argv]
    try:
        code = main(["-q", *args])
    except SystemExit as exc:  # argparse rejects unknown choices itself, with its usage line
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    if words is not None:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("datadistill: error:"), err
        assert words in lines[0].lower() or words in lines[0], err
    # Nothing half-written: no synthetic set, no completion mark; no folder at all when refused before the run.
    assert not (out / "synset").exists()
    if (out / "metrics.json").exists():
        assert not json.loads((out / "metrics.json").read_text()).get("distill", {}).get("complete")
    if case not in FAIL_DURING_THE_RUN:
        assert not out.exists(), sorted(p.name for p in out.iterdir())
    if case in FIXES:
        monkeypatch.undo()
        fixed = [a.format(tmp=tmp_path, out=out, prep=prep) for a in FIXES[case]]
        assert main(["-q", *fixed]) == 0, capsys.readouterr().err
        assert (out / "synset" / "synset.safetensors").exists()


def test_files_that_are_not_images_are_ignored(tmp_path, capsys):
    folder = _folder(tmp_path / "f")
    (folder / "train" / "ant" / "notes.txt").write_text("not an image, and not named like one")
    (folder / "train" / "bee" / "labels.csv").write_text("0,1")
    assert main(["-q", "distill", "random", "--data", f"imagefolder:{folder}", "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().err == ""
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["resolved"]["train_images"] + config["resolved"]["val_images"] == 6


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_grayscale_rgba_and_16_bit_datasets_distill(mode, tmp_path, capsys):
    folder = tmp_path / "f"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (folder / split / c).mkdir(parents=True)
            for i in range(3):
                arr = rng.integers(0, 60000 if mode == "I;16" else 255, (10, 10)).astype(
                    np.uint16 if mode == "I;16" else np.uint8
                )
                img = Image.fromarray(arr) if mode in ("L", "I;16") else Image.fromarray(arr).convert(mode)
                img.save(folder / split / c / f"{i}.png")
    assert (
        main(
            [
                "-q",
                "distill",
                "random",
                "--data",
                f"imagefolder:{folder}",
                "--val-fraction",
                "0",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert (tmp_path / "o" / "synset" / "synset.safetensors").exists()


def test_backbone_weights_of_another_size_are_refused(tmp_path):
    """A DINOv2 folder of another width under a registry name whose feature size differs."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from datadistill.core.errors import WeightsError
    from datadistill.features.backbones import load_backbone

    Dinov2Model(
        Dinov2Config(
            hidden_size=32,
            num_attention_heads=2,
            num_hidden_layers=1,
            intermediate_size=64,
            patch_size=14,
            image_size=28,
        )
    ).save_pretrained(tmp_path / "tiny")
    backbone = load_backbone("dinov2_vits14_imgfocus", weights=str(tmp_path / "tiny"))
    with pytest.raises(WeightsError, match="32-d features"):
        backbone(torch.rand(1, 3, 28, 28))


PROCESS = [sys.executable, "-m", "datadistill"]


def _lgm(out: Path, steps: int = 12, every: int = 1) -> list[str]:
    """LGM with one view: a backbone run without a statistics pass, about as cheap as a step gets."""
    fast = ["--crop", "32", "--augs", "1", "--init", "real", "--steps", str(steps), "--checkpoint-every", str(every)]
    return ["-q", "distill", "lgm", "--data", "digits", *fast, "--out", str(out)]


def _wait_until(ready, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not ready():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before it was ready"
        assert time.time() < deadline, "the run never got ready"
        time.sleep(0.02)


def _lock_owner(out: Path) -> int | None:
    try:
        return json.loads((out / ".lock").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_sigint_after_a_checkpoint_then_the_same_command_resumes(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([*PROCESS, *_lgm(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until(lambda: (out / "checkpoints" / "last.pt").exists(), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert lines == ["datadistill: interrupted; run the same command again to resume"], err
    assert not (out / "synset").exists()
    assert main(_lgm(out)) == 0  # the same command, in this process
    assert "resumed from" in (out / "log.txt").read_text()
    assert (out / "synset" / "synset.safetensors").exists()


def test_two_distills_on_one_out(tmp_path):
    """The second process stops at the first one's lock (one line naming it) and writes nothing; once the first is
    gone (SIGKILL: its lock file and a config without checkpoint stay behind), a corrected command runs there."""
    out = tmp_path / "out"
    first = subprocess.Popen([*PROCESS, *_lgm(out, steps=100000, every=100000)], stderr=subprocess.DEVNULL)
    try:
        _wait_until(lambda: _lock_owner(out) == first.pid and (out / "config.json").exists(), first)
        second = subprocess.run(
            [*PROCESS, *_lgm(out, steps=100000, every=100000)], capture_output=True, text=True, timeout=600
        )
        assert first.poll() is None, "the first run ended before the second one started"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2, second.stderr
    assert len(lines) == 1 and lines[0].startswith(f"datadistill: error: {out} is in use by process {first.pid} ")
    assert lines[0].endswith("; wait for it or use another --out")
    assert (out / "log.txt").read_text().count("lgm run in") == 1  # the second never wrote to the log
    assert _lock_owner(out) == first.pid  # the stale lock file of a killed process ...
    assert main(["-q", *(a.format(out=out) for a in RANDOM_OK)]) == 0  # ... blocks nothing, nor does its config
    assert (out / "synset" / "synset.safetensors").exists()
