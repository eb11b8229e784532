import json

import pytest

from datadistill.bench import runner as bench_module
from datadistill.bench.plan import BenchPlan, parse_settings
from datadistill.bench.runner import bench
from datadistill.cli import main
from datadistill.core.errors import ConfigError


def test_settings_are_typed_and_scoped():
    parsed = parse_settings(
        ["steps=5", "sfm.lr=0.5", "ci.projector_lr=0.1", "decorrelate=false", "crop=none"], ["sfm", "random"], ["ci"]
    )
    assert parsed[""] == {"steps": 5, "decorrelate": False, "crop": None}
    assert parsed["sfm"] == {"lr": 0.5} and parsed["ci"] == {"projector_lr": 0.1}
    for bad in (["nope=1"], ["lgm.steps=1"], ["steps=many"], ["steps"]):
        with pytest.raises(ConfigError):
            parse_settings(bad, ["sfm"], ["ci"])


def test_plan_checks_methods_and_neighbour_sources():
    with pytest.raises(ConfigError, match="neighbors:sfm"):
        BenchPlan("digits", ["neighbors:sfm"]).validate()
    with pytest.raises(ConfigError, match="unknown method"):
        BenchPlan("digits", ["magic"]).validate()
    with pytest.raises(ConfigError, match="one of --protocols"):
        BenchPlan("digits", ["random"], ["linear-probe"], evaluate_with={"random": ["ci"]}).validate()
    with pytest.raises(ConfigError, match="not one of --methods"):
        BenchPlan("digits", ["random"], evaluate_with={"sfm": ["linear-probe"]}).validate()


@pytest.mark.slow
def test_cross_backbone_matrix_resumes(tmp_path, monkeypatch, capsys):
    argv = [
        "-q",
        "bench",
        "--data",
        "digits",
        "--methods",
        "random,sfm,neighbors:sfm",
        "--protocols",
        "linear-probe,ci,full",
        "--backbones",
        "efficientnet_lite0,dinov2_vits14_imgfocus",
        "--seeds",
        "1",
        "--crop",
        "efficientnet_lite0=32",
        "--crop",
        "dinov2_vits14_imgfocus=28",
        "--set",
        "steps=2",
        "--set",
        "grow_every=1",
        "--set",
        "epochs=10",
        "--set",
        "views=2",
        "--set",
        "full_epochs=2",
        "--out",
        str(tmp_path / "b"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "distilled with dinov2_vits14_imgfocus" in out and "full data" in out
    records = json.loads((tmp_path / "b" / "results.json").read_text())
    # sfm and neighbors: 2 protocols x 2 evaluation x 2 distillation backbones; random (no backbone): linear probe
    # once per evaluation backbone, CI (golden classifier of the distillation backbone) per pair; full data: 2
    assert len(records) == 8 + 8 + (2 + 4) + 2
    cross = [r for r in records if r["distill_backbone"] != r["eval_backbone"] and r["method"] == "sfm"]
    assert {r["protocol"] for r in cross} == {"linear-probe", "ci"}
    ci = next(r for r in cross if r["protocol"] == "ci")
    assert ci["details"]["distill_backbone"] == ci["distill_backbone"]
    assert ci["details"]["golden"]["backbone"] == ci["distill_backbone"]
    assert (tmp_path / "b" / "results.csv").read_text().count("\n") == 25

    def fail(*args, **kwargs):
        raise AssertionError("a finished cell was evaluated again")

    monkeypatch.setattr(bench_module, "evaluate", fail)
    assert main(argv) == 0
    assert len(json.loads((tmp_path / "b" / "results.json").read_text())) == 24


def test_bench_api_small(tmp_path, digits):
    plan = BenchPlan(
        "digits",
        ["random", "centroids"],
        ["linear-probe"],
        seeds=2,
        crops={"efficientnet_lite0": 32},
        settings=["epochs=10", "views=2"],
    )
    records = bench(plan, tmp_path / "b")
    assert {r["method"] for r in records} == {"random", "centroids"} and all(len(r["test_acc"]) == 2 for r in records)
    assert "| centroids | linear-probe |" in (tmp_path / "b" / "summary.md").read_text()


def test_evaluate_with_narrows_one_methods_protocols(tmp_path, digits):
    plan = BenchPlan(
        "digits",
        ["random", "centroids"],
        ["linear-probe", "linear-probe:augment=false"],
        seeds=1,
        crops={"efficientnet_lite0": 32},
        settings=["epochs=5", "views=2"],
        evaluate_with={"centroids": ["linear-probe:augment=false"]},
    )
    records = bench(plan, tmp_path / "b")
    cells = sorted((r["method"], r["protocol"]) for r in records)
    assert cells == [
        ("centroids", "linear-probe:augment=false"),
        ("random", "linear-probe"),
        ("random", "linear-probe:augment=false"),
    ]
    assert (
        main(
            [
                "-q",
                "bench",
                "--data",
                "digits",
                "--methods",
                "random,centroids",
                "--protocols",
                "linear-probe,linear-probe:augment=false",
                "--evaluate-with",
                "centroids=linear-probe:augment=false",
                "--seeds",
                "1",
                "--crop",
                "efficientnet_lite0=32",
                "--set",
                "epochs=5",
                "--set",
                "views=2",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )  # the same plan from the CLI: every cell is reused
    assert len(json.loads((tmp_path / "b" / "results.json").read_text())) == 3
    from datadistill.reporting.markdown import plan_summary

    summary = plan_summary(json.loads((tmp_path / "b" / "bench.json").read_text()))
    assert "(centroids: linear-probe:augment=false only)" in summary
