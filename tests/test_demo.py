import json

import pytest


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    """The embedded default: SFM beats Random and is not below Centroids (linear probe, 3 seeds)."""
    from datadistill.cli import main

    assert main(["-q", "demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "| sfm |" in out and "| centroids |" in out and "| random |" in out
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    acc = {k: v["mean"] for k, v in metrics["results"].items()}
    assert all(len(v["test_acc"]) == 3 for v in metrics["results"].values())
    assert acc["sfm"] > acc["random"]
    assert acc["sfm"] >= acc["centroids"]
    for name in ("report.md", "grid.png", "sfm/synset/grid.png", "sfm/config.json", "centroids/synset/manifest.json"):
        assert (tmp_path / "demo" / name).exists(), name
