import atexit
import os
import shutil
import tempfile

# Before any hub library is imported: never try the network, never touch the user's cache.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DATADISTILL_PROGRESS"] = "0"
os.environ["DATADISTILL_CACHE"] = tempfile.mkdtemp(prefix="dd-test-cache-")
atexit.register(shutil.rmtree, os.environ["DATADISTILL_CACHE"], ignore_errors=True)  # ~150 MB per session

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Where every test must run (CI: .ci/run), a skip is a failure: a missing dependency must not pass unnoticed.
NO_SKIPS = os.environ.get("DATADISTILL_NO_SKIPS") == "1"


def _fail_if_skipped(report):
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, which DATADISTILL_NO_SKIPS=1 makes a failure: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    return _fail_if_skipped((yield))


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    return _fail_if_skipped((yield))  # a module that skips as a whole (pytest.importorskip at import)


@pytest.fixture(scope="session")
def digits():
    from datadistill.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def lite0():
    from datadistill.features.backbones import load_backbone

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
