"""Results you can trust: a bench cell, a bench run directory and an evaluation stored in a run are identified by
every setting that changes their number, so a changed plan or another evaluation never relabels or replaces an
earlier result; reports show each result with the settings it was made with; `eval` errors speak in flags."""

import csv
import json
import shutil

import pytest

import datadistill as dd
from datadistill.bench import runner as bench_module
from datadistill.cli import main
from datadistill.core.errors import ConfigError
from datadistill.evaluate.ranking import score_records
from datadistill.reporting.collect import collect
from datadistill.reporting.comparison import build_sections

TINY = ["-q", "bench", "--data", "digits", "--methods", "random,centroids", "--crop", "efficientnet_lite0=32"]


def _bench(out, *extra) -> int:
    return main([*TINY, "--set", "views=2", *extra, "--out", str(out)])


def _table(out) -> list[dict]:
    """results.csv without its timings."""
    with open(out / "results.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "eval_seconds"} for row in csv.DictReader(f)]


def _by_cell(records: list[dict]) -> dict:
    return {(r["method"], r["protocol"], r["eval_backbone"]): r for r in records}


@pytest.mark.slow  # three benches (the acceptance check of a re-run against a fresh bench)
def test_rerun_with_more_seeds_and_other_settings_equals_a_fresh_bench(tmp_path):
    again, fresh = tmp_path / "again", tmp_path / "fresh"
    assert _bench(again, "--seeds", "1", "--set", "epochs=5") == 0
    assert _bench(again, "--seeds", "2", "--set", "epochs=7") == 0
    assert _bench(fresh, "--seeds", "2", "--set", "epochs=7") == 0
    # The re-run's table and summary are the fresh bench's, number for number and setting for setting
    assert _table(again) == _table(fresh)
    summary = (again / "summary.md").read_text()
    assert summary == (fresh / "summary.md").read_text()
    assert "over 2 seeds" in summary and "epochs=7" in summary and "epochs=5" not in summary
    kept = json.loads((again / "results.json").read_text())
    plan = json.loads((again / "bench.json").read_text())["cells"]
    current = [r for r in kept if r["key"] in plan]
    expected = json.loads((fresh / "results.json").read_text())
    assert len(kept) == 4 and len(current) == 2  # the 1-seed records stay, under their own keys
    for cell, r in _by_cell(expected).items():
        mine = _by_cell(current)[cell]
        assert mine["test_acc"] == r["test_acc"] and mine["val_acc"] == r["val_acc"] and len(r["test_acc"]) == 2
        assert mine["details"]["epochs"] == 7 and mine["key"] == r["key"]
        assert mine["settings"]["evaluation"]["seeds"] == 2 and mine["given"]["linear-probe"]["epochs"] == 7
    old = [r for r in kept if r["key"] not in plan]
    assert {len(r["test_acc"]) for r in old} == {1} and {r["details"]["epochs"] for r in old} == {5}
    # Random's seed-0 draw and the Centroids run were reused (same settings), only seed 1 is new
    assert sorted(p.name for p in (again / "ipc1").glob("random-*/seed*")) == ["seed0", "seed1"]
    assert len(list((again / "ipc1" / "efficientnet_lite0").glob("centroids-*"))) == 1
    assert len(_table(again)) == 2  # this plan's cells


def test_method_settings_get_their_own_run_directories(tmp_path, monkeypatch):
    out = tmp_path / "b"
    small = ["--seeds", "1", "--set", "epochs=2"]
    assert _bench(out, *small, "--set", "centroids.resolution=8") == 0
    assert _bench(out, *small, "--set", "centroids.resolution=12") == 0  # a run directory of its own
    runs = sorted((out / "ipc1" / "efficientnet_lite0").glob("centroids-*"))
    sizes = sorted(json.loads((r / "config.json").read_text())["distill"]["options"]["resolution"] for r in runs)
    assert sizes == [8, 12]

    def fail(*args, **kwargs):
        raise AssertionError("a finished run or cell was computed again")

    monkeypatch.setattr(bench_module, "evaluate", fail)
    monkeypatch.setattr(bench_module, "distill", fail)
    assert _bench(out, *small, "--set", "centroids.resolution=8") == 0  # the first plan again: all reused
    assert "resolution=8" in (out / "summary.md").read_text()
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 3  # Random's cell is shared; Centroids has one per resolution


@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "random"
    dd.distill("random", "digits", out=run)
    return run


def test_eval_keeps_evaluations_of_other_settings_apart(random_run, tmp_path):
    run = tmp_path / "random"
    shutil.copytree(random_run, run)
    probe = ["-q", "eval", str(run), "--eval-backbone", "efficientnet_lite0", "--seeds", "1", "--views", "2"]
    assert main([*probe, "--epochs", "2", "--crop", "32"]) == 0
    assert main([*probe, "--epochs", "2", "--crop", "48"]) == 0
    assert main([*probe, "--epochs", "3", "--crop", "48"]) == 0
    evals = json.loads((run / "metrics.json").read_text())["eval"]
    assert len(evals) == 3 and all(k.startswith("linear-probe@efficientnet_lite0|") for k in evals)
    assert sorted((e["details"]["crop"], e["details"]["epochs"]) for e in evals.values()) == [(32, 2), (48, 2), (48, 3)]
    assert all(e["settings"]["options"]["crop"] == e["details"]["crop"] for e in evals.values())
    report = (run / "report.md").read_text()
    assert "| linear-probe @ efficientnet_lite0 (32 px) |" in report
    assert "| linear-probe @ efficientnet_lite0 (48 px), epochs=2 |" in report
    assert "| linear-probe @ efficientnet_lite0 (48 px), epochs=3 |" in report
    (section,) = build_sections(collect([run]))
    assert len(section.columns) == 3 and section.columns[0] == "linear-probe @ efficientnet_lite0 (32 px)"
    # metrics.json of earlier versions: keys protocol@backbone, no settings; still read, and shown apart
    metrics = json.loads((run / "metrics.json").read_text())
    first = next(iter(metrics["eval"].values()))
    metrics["eval"]["linear-probe@efficientnet_lite0"] = {k: v for k, v in first.items() if k != "settings"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (section,) = build_sections(collect([run]))
    assert "linear-probe @ efficientnet_lite0 (32 px), settings not recorded" in section.columns
    assert len(section.columns) == 4


def test_run_report_shows_the_values_of_the_run(tmp_path, random_run, capsys):
    run = tmp_path / "sfm"
    argv = ["-q", "distill", "sfm", "--data", "digits", "--steps", "3", "--lr", "0.05", "--crop", "16"]
    assert main([*argv, "--grow-every", "1", "--out", str(run)]) == 0
    report = (run / "report.md").read_text()
    weights = json.loads((run / "config.json").read_text())["resolved"]["backbone_weights"]
    assert f"- backbone: `efficientnet_lite0` ({weights})" in report and "ImageNet" in weights
    assert "steps 3, lr 0.05, views per step 1, parameterisation pyramid, crop 16" in report
    losses = json.loads((run / "metrics.json").read_text())["distill"]["losses"]
    assert f"Loss: {losses[0]:.4f} at the first step, {losses[-1]:.4f} at the last." in report
    assert "None" not in report
    plain = (random_run / "report.md").read_text()  # Random has no backbone, no steps, no learning rate
    assert "backbone" not in plain and "steps" not in plain and "lr " not in plain and "None" not in plain
    assert "- render 8, seed 3407" in plain


def _err(capsys, argv) -> str:
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("datadistill: error: ") and err.count("\n") == 1
    for python_word in ("data=", "backbone=", "synset=", "evaluate needs"):
        assert python_word not in err, err
    return err


def test_eval_errors_speak_in_flags(random_run, tmp_path, capsys):
    run = str(random_run)
    err = _err(capsys, ["eval", run, "--seeds", "1"])
    assert "this run (random) was made without a backbone" in err
    assert "--eval-backbone NAME" in err and "--eval-backbone efficientnet_lite0" in err
    err = _err(capsys, ["eval", run, "--protocol", "ci", "--eval-backbone", "efficientnet_lite0"])
    assert "--distill-backbone NAME" in err and "without a backbone" in err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("not images")
    err = _err(capsys, ["eval", str(other)])
    assert "not a run directory (no config.json)" in err and "no PNGs" in err and "--data NAME" in err
    err = _err(capsys, ["eval", str(random_run / "synset")])
    assert "is a saved synthetic set, not a run directory" in err and "--data NAME" in err
    assert "datadistill eval RUN" in _err(capsys, ["eval"])
    assert "--data NAME" in _err(capsys, ["eval", "--protocol", "full"])
    assert "--eval-backbone NAME" in _err(capsys, ["eval", "--protocol", "full", "--data", "digits"])
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(random_run / "config.json", unfinished / "config.json")
    assert "has not finished" in _err(capsys, ["eval", str(unfinished)])
    # The Python API names its own arguments, with the flag beside them
    with pytest.raises(ConfigError, match=r"pass backbone=NAME \(CLI: --eval-backbone NAME\)"):
        dd.evaluate(random_run, seeds=1)
    with pytest.raises(ConfigError, match=r"pass data=NAME \(CLI: --data NAME\)"):
        dd.evaluate(random_run / "synset", seeds=1)


def _record(method: str, epochs: int, acc: list[float]) -> dict:
    data = {"name": "digits", "fingerprint": "f", "val_fraction": 0.1, "split_seed": 0}
    options = {"eval_backbone": "b", "weights": None, "crop": 32, "epochs": epochs, "augment": True}
    return {
        "key": f"{method}-{epochs}",
        "ipc": 1,
        "method": method,
        "distill_backbone": "-" if method == "random" else "b",
        "protocol": "linear-probe",
        "eval_backbone": "b",
        "evaluated_with": "b",
        "data": "digits",
        "source": f"/runs/{method}-{epochs}",
        "test_acc": acc,
        "mean": sum(acc) / len(acc),
        "std": 0.0,
        "details": {"crop": 32, "augment": True},
        "settings": {
            "evaluation": {"data": data, "protocol": "linear-probe", "options": options, "seeds": 2, "first_seed": 0}
        },
    }


def test_scores_relative_to_random_compare_the_same_evaluation_only():
    sfm7, random5 = _record("sfm", 7, [0.6, 0.7]), _record("random", 5, [0.5, 0.5])
    scores = score_records([sfm7, random5])
    assert scores["sfm-7"].ior is None and "Random" in scores["sfm-7"].missing["ior"]
    scores = score_records([sfm7, random5, _record("random", 7, [0.4, 0.45])])
    assert scores["sfm-7"].ior.mean == pytest.approx(0.225)  # (0.6 - 0.4 + 0.7 - 0.45) / 2


def test_reports_show_the_current_plan_and_read_old_benches(tmp_path):
    plan = {
        "data": "digits",
        "methods": ["random", "centroids"],
        "protocols": ["linear-probe"],
        "seeds": 2,
        "crops": {"b": 32},
        "settings": ["epochs=5"],
        "evaluate_with": {},
    }
    random5, centroids5 = _record("random", 5, [0.5, 0.5]), _record("centroids", 5, [0.6, 0.6])
    centroids7 = _record("centroids", 7, [0.7, 0.8])
    for r in (random5, centroids5, centroids7):
        r.update(runs=[], given={"linear-probe": {"epochs": r["settings"]["evaluation"]["options"]["epochs"]}})
    current = tmp_path / "current"
    current.mkdir()
    (current / "bench.json").write_text(json.dumps({**plan, "cells": ["random-5", "centroids-5"]}))
    (current / "results.json").write_text(json.dumps([centroids7, random5, centroids5]))
    collection = collect([current])
    assert [r["method"] for r in collection.records] == ["random", "centroids"]
    assert main(["-q", "report", str(current)]) == 0
    page = (current / "report.md").read_text()
    assert "seeds 2; settings linear-probe: epochs=5" in page
    assert "not shown: 1 result of earlier plans kept in results.json" in page and "75.00" not in page
    # A bench written before records carried their settings: every record shown, its plan's settings named
    old = tmp_path / "old"
    old.mkdir()
    (old / "bench.json").write_text(json.dumps(plan))
    legacy = [{k: v for k, v in r.items() if k not in ("settings", "given", "runs")} for r in (random5, centroids7)]
    (old / "results.json").write_text(json.dumps(legacy))
    assert main(["-q", "report", str(old)]) == 0
    page = (old / "report.md").read_text()
    assert "settings ['epochs=5']" in page and "75.00 ± 0.00" in page
