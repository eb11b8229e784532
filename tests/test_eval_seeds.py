"""Evaluation seeds are not the distillation seed: an evaluation must not replay the draws that made its set."""

import json

import pytest

from datadistill import api
from datadistill.cli import main


def test_default_evaluation_seeds_differ_from_the_distillation_seed(digits, tmp_path):
    run = tmp_path / "run"
    api.distill("random", "digits", ipc=1, dataset=digits, out=run)  # the default distillation seed
    distill_seed = json.loads((run / "config.json").read_text())["distill"]["seed"]
    assert distill_seed == 3407
    result = api.evaluate(run, protocol="convnet", seeds=3, epochs=1, val_every=1, width=8, device="cpu")
    evals = json.loads((run / "metrics.json").read_text())["eval"]  # keys: protocol@model|settings digest
    recorded = next(e for k, e in evals.items() if k.startswith("convnet@convnet|"))["seeds"]
    assert result.seeds == recorded == [1000, 1001, 1002]
    # nor the seeds 0, 1, 2, ... with which benchmarks and the demo redraw the Random baseline per evaluation seed
    assert not {distill_seed, 0, 1, 2} & set(result.seeds)


def test_eval_help_gives_the_default_first_seed(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--protocol", "convnet", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--first-seed" in help_text and "(default: 1000)" in help_text and "distillation seed (3407)" in help_text
