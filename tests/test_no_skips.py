"""DATADISTILL_NO_SKIPS=1 (set by CI) turns every skip into a failure; without it a skip stays a skip."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SKIPPING_TESTS = """
import pytest

def test_skips_in_its_body():
    pytest.skip("needs the moon")

@pytest.mark.skipif(True, reason="needs the sun")
def test_skipped_by_a_mark():
    pass

@pytest.mark.xfail(reason="known bug", strict=True)
def test_expected_failure():
    assert False

def test_passes():
    pass
"""
SKIPPING_MODULE = """
import pytest

pytest.importorskip("a_module_that_is_not_installed")

def test_never_collected():
    pass
"""


@pytest.fixture
def suite(tmp_path):
    """A test folder with the project's own conftest.py and tests that skip."""
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_skipping.py").write_text(SKIPPING_TESTS)
    (tmp_path / "test_skipping_module.py").write_text(SKIPPING_MODULE)
    return tmp_path


def _pytest(folder: Path, no_skips: bool) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATADISTILL_NO_SKIPS"}  # CI sets it for this very run
    if no_skips:
        env["DATADISTILL_NO_SKIPS"] = "1"
    proc = subprocess.run(
        # --continue-on-collection-errors: the module that fails at collection does not stop the other file
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--continue-on-collection-errors"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_skips_pass_without_the_variable(suite):
    code, out = _pytest(suite, no_skips=False)
    assert code == 0 and "1 passed, 3 skipped, 1 xfailed" in out, out


def test_skips_fail_with_the_variable(suite):
    code, out = _pytest(suite, no_skips=True)
    assert code == 1 and "1 failed, 1 passed, 1 xfailed, 2 errors" in out, out
    assert "FAILED test_skipping.py::test_skips_in_its_body" in out and "needs the moon" in out
    assert "ERROR test_skipping.py::test_skipped_by_a_mark" in out and "needs the sun" in out
    assert "ERROR test_skipping_module.py" in out and "a_module_that_is_not_installed" in out
    # the three failure sections; the short summary repeats the message in full or cut, by terminal width
    sections = [line for line in out.splitlines() if not line.startswith(("FAILED ", "ERROR "))]
    assert sum("which DATADISTILL_NO_SKIPS=1 makes a failure: Skipped:" in line for line in sections) == 3
