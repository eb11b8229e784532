"""Option values are checked where options are built: a non-finite number is refused for every numeric option of
every method, protocol, pretrainer and common config (NaN passes every range check: ``nan <= 0`` is False), and
the options with an obvious range refuse values outside it, each with a message naming the flag."""

import math

import pytest

from datadistill.api import make_config, pretrain
from datadistill.cli import main
from datadistill.core.config import DistillConfig, EvalConfig
from datadistill.core.errors import ConfigError
from datadistill.core.options import build, fields_of
from datadistill.evaluate import PROTOCOLS
from datadistill.methods import METHODS
from datadistill.training import PRETRAINERS


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option_sets() -> dict[str, type]:
    sets = {"distill": DistillConfig, "evaluation": EvalConfig}
    sets.update({f"method {n}": m.Options for n, m in METHODS.items()})
    sets.update({f"protocol {n}": p.Options for n, p in PROTOCOLS.items()})
    sets.update({f"pretrain {n}": p.Options for n, p in PRETRAINERS.items()})
    return sets


NUMERIC = [
    (what, cls, name)
    for what, cls in _option_sets().items()
    for name, (_, kind) in fields_of(cls).items()
    if kind in (int, float)
]


def test_the_audit_covers_every_kind_of_option_set():
    kinds = {what.split()[0] for what, _, _ in NUMERIC}
    assert kinds == {"distill", "evaluation", "method", "protocol", "pretrain"}
    assert len(NUMERIC) > 100  # every numeric field of every set, not a sample


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_every_numeric_option_refuses_non_finite_numbers(value):
    accepted = []
    for what, cls, name in NUMERIC:
        try:
            build(cls, {name: value}, what)
        except ConfigError as exc:
            assert str(exc) == f"{flag(name)} must be a finite number, got {value}", (what, name)
        else:
            accepted.append(f"{what} {flag(name)}")
    assert not accepted


def test_the_common_run_options_go_through_the_same_check():
    with pytest.raises(ConfigError, match="--val-fraction must be a finite number, got nan"):
        make_config("random", "digits", val_fraction=math.nan)
    with pytest.raises(ConfigError, match="--ipc must be a finite number, got inf"):
        make_config("random", "digits", ipc=math.inf)
    with pytest.raises(ConfigError, match=r"--val-fraction must lie in \[0, 1\), got nan"):
        pretrain("vae", "digits", val_fraction=math.nan)


# (option set, field, a value outside its range, words of the message): the checks the audit added.
RANGES = [
    ("method random", "resolution", 0, "at least 1"),
    ("method centroids", "crop", 0, "at least 1"),
    ("method neighbors", "crop", -1, "at least 1"),
    ("method sfm", "resolution", 0, "at least 1"),
    ("method dm", "width", 0, "at least 1"),
    ("method tgdd", "expert_depth", 0, "at least 1"),
    ("method dmgd", "vae_steps", 0, "at least 1"),
    ("method dmgd", "noise_weight", -0.1, "at least 0"),
    ("method dmgd", "window_low", -1, "at least 0"),
    ("method dmgd", "dit_train_steps", 0, "--dit-train-steps"),
    ("method mgd3", "resolution", 0, "at least 1"),
    ("method pgfm", "finetune_lr", 0.0, "positive"),
    ("method pgfm", "finetune_steps", -1, "at least 0"),
    ("method pgfm", "coverage_k", 0, "at least 1"),
    ("method pgfm", "vae_levels", 0, "at least 1"),
    ("protocol linear-probe", "base_lr", 0.0, "positive"),
    ("protocol linear-probe", "crop", 0, "at least 1"),
    ("protocol full", "full_base_lr", -1.0, "positive"),
    ("protocol ci", "projector_lr", 0.0, "positive"),
    ("protocol ci", "distill_crop", 0, "at least 1"),
    ("protocol kd", "temperature", 0.0, "positive"),
    ("protocol kd", "alpha", 1.5, "lie in [0, 1]"),
    ("protocol hard-label", "lr", 0.0, "positive"),
    ("protocol hard-label", "weight_decay", -0.1, "at least 0"),
    ("pretrain vae", "checkpoint_every", 0, "at least 1"),
    ("pretrain diffusion", "checkpoint_every", 0, "at least 1"),
    ("pretrain diffusion", "patch_size", 0, "at least 1"),
    ("pretrain flow", "vae_latent_channels", 0, "at least 1"),
]


@pytest.mark.parametrize("what, name, value, words", RANGES, ids=[f"{r[0]} {r[1]}" for r in RANGES])
def test_options_outside_their_range_are_refused(what, name, value, words):
    with pytest.raises(ConfigError) as caught:
        build(_option_sets()[what], {name: value}, what)
    assert flag(name) in str(caught.value) and words in str(caught.value)


def test_the_defaults_pass_every_check():
    for what, cls in _option_sets().items():
        if what not in ("distill", "method neighbors"):  # these need a data name / a source set
            build(cls, {}, what)


def test_noise_init_far_below_the_budget_warns_once_on_the_console_and_in_the_log(tmp_path, capsys):
    argv = ["-q", "distill", "lgm", "--data", "digits", "--crop", "32", "--steps", "2", "--augs", "1"]
    assert main([*argv, "--out", str(tmp_path / "noise")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "near-chance" in line]
    assert len(warnings) == 1 and "--init centroids" in warnings[0] and "2 steps" in warnings[0], err
    assert (tmp_path / "noise" / "log.txt").read_text().count("near-chance") == 1
    assert main([*argv, "--init", "real", "--out", str(tmp_path / "real")]) == 0
    assert "near-chance" not in capsys.readouterr().err


def test_help_gives_the_budget_and_the_advice(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "lgm", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: 5000, the papers' budget" in text and "start short runs from --init centroids" in text
