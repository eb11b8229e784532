"""The import contract of docs/architecture.md: layers import only downwards (import-linter, configured in
pyproject.toml) and no module of the package takes part in an import circle (grimp, which also counts imports
inside functions)."""

import os
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def import_circles(package: str = "datadistill") -> list[tuple[str, str]]:
    """Every import a -> b of the package's modules for which b also reaches a, sorted."""
    graph = grimp.build_graph(package, include_external_packages=False)
    return sorted(
        (importer, imported)
        for importer in graph.modules
        for imported in graph.find_modules_directly_imported_by(importer)
        if graph.chain_exists(importer=imported, imported=importer)
    )


def test_no_module_takes_part_in_an_import_circle():
    assert import_circles() == []


def test_the_circle_check_finds_a_circle(tmp_path):
    """The check above can fail: a package whose two modules import each other (one of them inside a function)."""
    (tmp_path / "circled").mkdir()
    (tmp_path / "circled" / "__init__.py").write_text("")
    (tmp_path / "circled" / "a.py").write_text("from . import b\n")
    (tmp_path / "circled" / "b.py").write_text("def f():\n    from . import a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert import_circles("circled") == [("circled.a", "circled.b"), ("circled.b", "circled.a")]
    finally:
        sys.path.remove(str(tmp_path))


def test_import_linter_contracts_are_kept():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_the_documented_import_paths_hold():
    import datadistill as dd
    from datadistill.bench import BenchPlan, bench
    from datadistill.evaluate.ranking import score_records

    assert callable(bench) and BenchPlan.__name__ == "BenchPlan" and callable(score_records)
    assert all(callable(getattr(dd, name)) for name in ("distill", "evaluate", "compute_stats", "report_runs"))
    assert dd.SyntheticSet.__module__ == "datadistill.synset.set"
    assert dd.__version__ == "0.1.0"
