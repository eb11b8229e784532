import os
import tempfile

# Before any hub library is imported: never try the network, never touch the user's cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DATADISTILL_PROGRESS"] = "0"
os.environ["DATADISTILL_CACHE"] = tempfile.mkdtemp(prefix="dd-test-cache-")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    from datadistill.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def lite0():
    from datadistill.models.backbones import load_backbone

    return load_backbone("efficientnet_lite0")


@pytest.fixture
def tiny_folder(tmp_path):
    """An ImageFolder tree: train/ and test/, 3 classes x 4 RGB 16x16 PNGs."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("ant", "bee", "cat"):
            d = tmp_path / "folder" / split / c
            d.mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return tmp_path / "folder"
