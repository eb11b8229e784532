"""Image folders: unreadable files reported the same way by every command (or skipped with --skip-corrupt), a file
manifest checked once and invalidated by folder changes, the native-size rule, and the decoding pipeline
(workers, reduced-scale JPEG decoding, torchvision's decoder) against independent references."""

import io
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datadistill.cli import main
from datadistill.core.errors import DataError, user_message
from datadistill.data import iter_batches, load_dataset, resize_center_crop
from datadistill.data import manifest as manifest_mod
from datadistill.data.decode import decode_resized

LONG_AGO = time.time() - 3600  # folders that have settled (see manifest.SETTLE_SECONDS)


def _settle(folder: Path) -> None:
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        os.utime(d, (LONG_AGO, LONG_AGO))


def _folder(root: Path, per_class: int = 4, classes=("ant", "bee", "cat")) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _png_bytes(size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _random_bytes_png(d: Path) -> str:
    (d / "9.png").write_bytes(np.random.default_rng(2).bytes(300))
    return "9.png"


def _zero_byte_jpeg(d: Path) -> str:
    (d / "9.jpg").write_bytes(b"")
    return "9.jpg"


def _text_named_png(d: Path) -> str:
    (d / "9.png").write_text("these are notes, not pixels\n")
    return "9.png"


def _truncated_png(d: Path) -> str:
    (d / "9.png").write_bytes(_png_bytes((32, 32))[:60])
    return "9.png"


CORRUPTIONS = [_random_bytes_png, _zero_byte_jpeg, _text_named_png, _truncated_png]


def _synset_pngs(root: Path, classes: int = 3) -> Path:
    """A folder of PNGs named c{label}_{i}.png, as `eval` takes them."""
    pngs = root / "pngs"
    pngs.mkdir(parents=True)
    for label in range(classes):
        Image.fromarray(np.full((8, 8, 3), 40 * label, dtype=np.uint8)).save(pngs / f"c{label}_0.png")
    return pngs


def _commands(data: str, tmp: Path) -> dict[str, list[str]]:
    return {
        "distill random": ["distill", "random", "--data", data, "--val-fraction", "0", "--out", str(tmp / "r")],
        "distill centroids": [
            *("distill", "centroids", "--data", data, "--crop", "32", "--val-fraction", "0"),
            *("--out", str(tmp / "c")),
        ],
        "eval": [
            *("eval", str(_synset_pngs(tmp)), "--data", data, "--eval-backbone", "efficientnet_lite0"),
            *("--crop", "32", "--epochs", "2"),
            *("--views", "1", "--seeds", "1"),
        ],
        "stats": ["stats", "--data", data, "--crop", "32"],
        "bench": ["bench", "--data", data, "--methods", "random", "--seeds", "1", "--out", str(tmp / "b")],
        "pretrain": ["pretrain", "vae", "--data", data],
    }


def _cli(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(["-q", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["distill random", "distill centroids", "eval", "stats", "bench", "pretrain"])
@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__.strip("_"))
def test_unreadable_file_stops_every_command_with_one_line(command, corrupt, tmp_path, capsys):
    folder = _folder(tmp_path / "f")
    name = corrupt(folder / "train" / "bee")
    code, err = _cli(capsys, _commands(f"imagefolder:{folder}", tmp_path)[command])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("datadistill: error: corrupt or unreadable image"), err
    assert str(folder / "train" / "bee" / name) in lines[0] and "--skip-corrupt" in lines[0]


@pytest.mark.parametrize("command", ["distill random", "distill centroids", "eval", "stats"])
def test_skip_corrupt_leaves_them_out_with_one_warning(command, tmp_path, capsys):
    folder = _folder(tmp_path / "f")
    for corrupt, where in zip(CORRUPTIONS, ["ant", "bee", "cat", "ant/deeper"], strict=True):
        (folder / "train" / where).mkdir(exist_ok=True)
        corrupt(folder / "train" / where)
    code, err = _cli(capsys, [*_commands(f"imagefolder:{folder}", tmp_path)[command], "--skip-corrupt"])
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "left out 4 unreadable image files" in warnings[0], err
    assert "train/ant/9.png" in warnings[0] and "Traceback" not in err


def test_skipped_files_are_out_of_the_dataset_and_its_identity(tmp_path, capsys):
    folder = _folder(tmp_path / "f")
    clean = load_dataset(f"imagefolder:{folder}", val_fraction=0)
    clean_skip = load_dataset(f"imagefolder:{folder}", val_fraction=0, skip_corrupt=True)
    _text_named_png(folder / "train" / "ant")
    skipped = load_dataset(f"imagefolder:{folder}", val_fraction=0, skip_corrupt=True)
    assert len(skipped.train) == len(clean.train) == 12
    assert all("9.png" not in skipped.train.path(i) for i in range(len(skipped.train)))
    # --skip-corrupt is part of the identity even where it leaves nothing out; the skipped file changes it too.
    assert len({clean.fingerprint(), clean_skip.fingerprint(), skipped.fingerprint()}) == 3


def test_skip_corrupt_run_does_not_resume_a_run_without_it_but_workers_may_change(tmp_path, capsys):
    folder = _folder(tmp_path / "f")
    run = ["distill", "random", "--data", f"imagefolder:{folder}", "--val-fraction", "0", "--out", str(tmp_path / "o")]
    assert _cli(capsys, [*run, "--workers", "0"])[0] == 0
    assert _cli(capsys, [*run, "--workers", "2"])[0] == 0  # the worker count never changes a result
    code, err = _cli(capsys, [*run, "--skip-corrupt"])
    assert code == 2 and "skip_corrupt" in err
    # A run saved before these options existed still resumes (a missing field reads as its default).
    config_path = tmp_path / "o" / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("skip_corrupt", "workers"):
        del config["distill"][key]
    config_path.write_text(json.dumps(config))
    assert _cli(capsys, run)[0] == 0


def test_non_image_files_are_ignored(tmp_path):
    folder = _folder(tmp_path / "f")
    (folder / "train" / "ant" / "notes.txt").write_text("not an image")
    (folder / "train" / "README").write_text("not a class")
    data = load_dataset(f"imagefolder:{folder}", val_fraction=0)
    assert len(data.train) == 12 and data.classes == ["ant", "bee", "cat"]


@pytest.fixture
def inspected(monkeypatch):
    """Paths the corruption check opened, in order."""
    seen: list[str] = []
    original = manifest_mod.inspect_image

    def spy(path):
        seen.append(path)
        return original(path)

    monkeypatch.setattr(manifest_mod, "inspect_image", spy)
    return seen


def test_files_are_checked_once(tmp_path, inspected, monkeypatch):
    folder = _folder(tmp_path / "f")
    first = load_dataset(f"imagefolder:{folder}", workers=0)
    assert len(inspected) == 24  # 12 train + 12 test images
    # A fresh folder (changed moments ago) is listed again, but its files keep their check.
    again = load_dataset(f"imagefolder:{folder}", workers=0)
    assert len(inspected) == 24 and again.fingerprint() == first.fingerprint()
    _settle(folder)
    load_dataset(f"imagefolder:{folder}", workers=0)  # relisted once more (the folder times changed)
    listed = []
    original = manifest_mod._list_class
    monkeypatch.setattr(manifest_mod, "_list_class", lambda *a: listed.append(a) or original(*a))
    third = load_dataset(f"imagefolder:{folder}", workers=0)
    assert listed == [] and len(inspected) == 24 and third.fingerprint() == first.fingerprint()


def test_manifest_follows_added_removed_and_replaced_files(tmp_path, inspected):
    folder = _folder(tmp_path / "f")
    _settle(folder)
    data = f"imagefolder:{folder}"
    before = load_dataset(data, val_fraction=0, workers=0)
    inspected.clear()
    ant = folder / "train" / "ant"

    (ant / "new.png").write_bytes(_png_bytes())
    added = load_dataset(data, val_fraction=0, workers=0)
    assert [Path(p).name for p in inspected] == ["new.png"] and len(added.train) == 13
    _settle(folder)
    load_dataset(data, val_fraction=0, workers=0)  # take in the settled times

    (ant / "0.png").unlink()
    removed = load_dataset(data, val_fraction=0, workers=0)
    assert [Path(p).name for p in inspected] == ["new.png"] and len(removed.train) == 12
    _settle(folder)
    load_dataset(data, val_fraction=0, workers=0)

    (ant / "replacement.tmp").write_bytes(_png_bytes((20, 20)))
    os.replace(ant / "replacement.tmp", ant / "1.png")  # how tools replace a file atomically
    replaced = load_dataset(data, val_fraction=0, workers=0)
    assert [Path(p).name for p in inspected] == ["new.png", "1.png"] and len(replaced.train) == 12
    prints = {d.fingerprint() for d in (before, added, removed, replaced)}
    assert len(prints) == 4


def test_manifest_is_stored_in_the_cache(tmp_path):
    folder = _folder(tmp_path / "f")
    load_dataset(f"imagefolder:{folder}", workers=0)
    stored = manifest_mod.manifest_file(folder / "train", None)
    assert stored.exists() and stored.is_relative_to(Path(os.environ["DATADISTILL_CACHE"]))
    m = manifest_mod._read(stored, folder / "train")
    assert m.relpaths[:2] == ["ant/0.png", "ant/1.png"] and m.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert m.widths.tolist() == [12] * 12 and m.sizes[0] == (folder / "train" / "ant" / "0.png").stat().st_size


def test_imagenet_layout_uses_the_manifest(tmp_path, monkeypatch, inspected):
    base = _folder(tmp_path / "inet", classes=("n01", "n02"))
    (base / "test").rename(base / "val")
    monkeypatch.setenv("DATADISTILL_IMAGENET", str(base))
    data = load_dataset("imagenet", workers=0)
    assert data.classes == ["n01", "n02"] and len(data.test) == 8 and len(inspected) == 16
    load_dataset("imagenet", workers=0)
    assert len(inspected) == 16


def test_mixed_sizes_take_the_median_shorter_side(tmp_path, capsys):
    """An 8-px RGBA file sorts first; the folder's own size is the median shorter side of its train images."""
    folder = tmp_path / "mixed"
    sizes = {"a": [(8, 8), (20, 30), (30, 25)], "b": [(24, 32), (26, 40), (30, 30), (28, 28)]}  # (height, width)
    rng = np.random.default_rng(0)
    for c, shapes in sizes.items():
        (folder / "train" / c).mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            arr = rng.integers(0, 255, (h, w, 4 if (h, w) == (8, 8) else 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / "train" / c / f"{i}.png")
    # shorter sides 8, 20, 25, 24, 26, 30, 28 -> sorted 8, 20, 24, 25, 26, 28, 30: median 25
    assert load_dataset(f"imagefolder:{folder}").native_size == 25
    out = tmp_path / "run"
    argv = ["distill", "random", "--data", f"imagefolder:{folder}", "--val-fraction", "0", "--out", str(out)]
    assert _cli(capsys, argv)[0] == 0
    from datadistill.synset.set import SyntheticSet

    assert SyntheticSet.load(out / "synset").images.shape[-2:] == (25, 25)
    assert "sizes 8-30 px (shorter side), using the median 25 px" in (out / "log.txt").read_text()


def _jpeg_folder(root: Path, per_class: int = 7) -> Path:
    from skimage import data as samples

    photo = Image.fromarray(samples.astronaut())
    for split in ("train", "test"):
        for c, name in enumerate(("a", "b", "c")):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                box = (20 * i + 60 * c, 10 * i, 20 * i + 60 * c + 240, 10 * i + 180)
                photo.crop(box).resize((80, 60)).save(root / split / name / f"{i}.jpg", quality=90)
    return root


class TinyEncoder(torch.nn.Module):
    name, feat_dim, input_size = "tiny", 8, 16

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))

    def identity(self):
        return {"name": "tiny-test-encoder"}


def test_worker_count_does_not_change_features(tmp_path, monkeypatch):
    from datadistill.data import datasets
    from datadistill.features.bank import feature_bank

    data = load_dataset(f"imagefolder:{_jpeg_folder(tmp_path / 'jpegs')}", val_fraction=0)
    pids_file = tmp_path / "pids"
    decode = datasets.decode_resized

    def recording(path, resize, crop):
        with open(pids_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        return decode(path, resize, crop)

    monkeypatch.setattr(datasets, "decode_resized", recording)  # forked workers inherit the patch
    features, pids = {}, {}
    for workers in (0, 2):
        monkeypatch.setenv("DATADISTILL_CACHE", str(tmp_path / f"cache{workers}"))
        pids_file.write_text("")
        bank = feature_bank(data, TinyEncoder(), "train", crop=16, batch_size=4, num_workers=workers)
        features[workers] = np.asarray(bank.features)
        pids[workers] = set(pids_file.read_text().split())
        batches = list(iter_batches(data.train, 4, 18, 16, num_workers=workers, keep_uint8=True))
        assert all(b.images.dtype == torch.uint8 for b in batches)
        features[f"pixels{workers}"] = torch.cat([b.images for b in batches])
    assert pids[0] == {str(os.getpid())} and len(pids[2]) == 2 and str(os.getpid()) not in pids[2]
    assert features[0].shape == (21, 8) and np.array_equal(features[0], features[2])
    assert torch.equal(features["pixels0"], features["pixels2"])


def _reference(path: Path, resize: int, crop: int) -> torch.Tensor:
    """The former path, independent of the new one: full PIL decode to float, torch resize, crop."""
    with Image.open(path) as im:
        full = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    return resize_center_crop(full[None], resize, crop)[0]


def _decoded(path: Path, resize: int, crop: int) -> torch.Tensor:
    return torch.from_numpy(decode_resized(path, resize, crop).copy()).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory) -> dict[str, Path]:
    from skimage import data as samples

    root = tmp_path_factory.mktemp("photos")
    photo = Image.fromarray(samples.chelsea()).resize((500, 375))
    photo.save(root / "cat.jpg", quality=90)
    photo.save(root / "cat.png")
    return {"jpg": root / "cat.jpg", "png": root / "cat.png"}


def test_uint8_pil_resize_matches_the_float_torch_path(photo_files):
    for crop in (32, 224):
        resize = round(crop * 256 / 224)
        diff = (_decoded(photo_files["png"], resize, crop) - _reference(photo_files["png"], resize, crop)).abs()
        assert float(diff.max()) <= 1.0 / 255 + 1e-6  # rounding to 8 bits only


def test_reduced_scale_jpeg_decode_is_close_to_the_full_decode(photo_files, monkeypatch):
    from PIL import JpegImagePlugin

    asked = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original(self, mode, size)
        asked.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    diff = (_decoded(photo_files["jpg"], 37, 32) - _reference(photo_files["jpg"], 37, 32)).abs()
    # 500x375 -> 49x37 before the crop: libjpeg decodes at 1/4 scale (125x94), twice the target or more.
    assert asked == [((98, 74), (125, 94))]
    assert float(diff.max()) < 10 / 255 and float(diff.mean()) < 1.5 / 255


def test_torchvision_jpeg_decoder_matches_pil_on_cpu(photo_files, tmp_path):
    """The GPU decoding path, run on the CPU: torchvision's decoder, torch's resize, the same crop."""
    from datadistill.data.gpu_jpeg import decode_jpeg_batch, read_files

    paths = [str(photo_files["jpg"])] * 2
    blob, lengths = read_files(paths)
    out = decode_jpeg_batch(blob, lengths, paths, 37, 32, torch.device("cpu"))
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 32, 32)
    full = (out[0].float() / 255 - _reference(photo_files["jpg"], 37, 32)).abs()
    assert float(full.max()) <= 2 / 255  # a full decode, rounded to 8 bits (libjpeg's IDCT may differ by a level)
    # Through iter_batches, as a pass on CUDA runs it (a folder of JPEGs, a decoding device).
    data = load_dataset(f"imagefolder:{_jpeg_folder(tmp_path / 'jpegs', per_class=2)}", val_fraction=0)
    via_device = list(iter_batches(data.train, 4, 18, 16, keep_uint8=True, jpeg_device=torch.device("cpu")))
    via_pil = list(iter_batches(data.train, 4, 18, 16, keep_uint8=True))
    for a, b in zip(via_device, via_pil, strict=True):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
        assert (a.images.float() - b.images.float()).abs().max() <= 3  # grey levels: float resampling, rounded


def _png_with_broken_pixels(path: Path) -> None:
    """Valid chunk structure and checksums, garbage compressed data: passes the header check, fails to decode."""
    raw, pos = _png_bytes(), 8
    out = raw[:8]
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos : pos + 4])
        kind, payload = raw[pos + 4 : pos + 8], raw[pos + 8 : pos + 8 + n]
        if kind == b"IDAT":
            payload = np.random.default_rng(3).bytes(n)
        out += struct.pack(">I", n) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        pos += 12 + n
    path.write_bytes(out)


def test_file_failing_only_at_decode_time_names_itself_from_a_worker(tmp_path, capsys):
    folder = _jpeg_folder(tmp_path / "jpegs")
    zz = folder / "train" / "b" / "zz.png"
    _png_with_broken_pixels(zz)
    data = load_dataset(f"imagefolder:{folder}", val_fraction=0)  # the header check passes it
    assert len(data.train) == 22
    with pytest.raises(DataError, match="zz.png") as raised:
        list(iter_batches(data.train, 4, 18, 16, num_workers=2))
    assert "worker" in str(raised.value)  # it came from a loader worker, and reads as one line all the same:
    assert user_message(raised.value) == f"corrupt or unreadable image {zz}: broken data stream when reading image file"
    code, err = _cli(capsys, ["stats", "--data", f"imagefolder:{folder}", "--crop", "32", "--workers", "2"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "zz.png" in lines[0] and "broken data stream" in lines[0], err


def test_workers_must_not_be_negative(tmp_path, capsys):
    folder = _folder(tmp_path / "f")
    code, err = _cli(capsys, ["stats", "--data", f"imagefolder:{folder}", "--workers", "-1"])
    assert code == 2 and "--workers" in err
