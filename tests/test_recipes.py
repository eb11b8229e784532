"""Recipes (``--config FILE.toml``): the shipped ones validate, the command line wins over the file, bad files give
one line naming the file and the key, results name their recipe, and a recipe resumes the run its flags made."""

import argparse
import hashlib
import json
import re
from pathlib import Path

import pytest

from datadistill.bench.plan import options_for, parse_settings, protocol_spec
from datadistill.cli import bench_plan, build_parser, main
from datadistill.core.options import build
from datadistill.core.recipe import apply_recipe
from datadistill.evaluate import get_protocol
from datadistill.methods import get_method

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes").glob("*.toml"))


def _cli(capsys, *argv):
    code = main(["-q", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _parsed(*argv) -> tuple[argparse.Namespace, object]:
    argv = list(map(str, argv))
    args = build_parser(argv).parse_args(argv)
    return args, apply_recipe(args)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_agreed_recipe_is_shipped():
    names = {p.name for p in SHIPPED}
    assert names == {
        "sfm-fashion-mnist.toml",
        "all-methods-fashion-mnist.toml",
        "lgm-sfm-ci-fashion-mnist.toml",
        "dmgd-mgd3-fashion-mnist.toml",
        "pgfm-fashion-mnist.toml",
        "dm-tgdd-fashion-mnist.toml",
        "dm-tgdd-mnist.toml",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_recipe_resolves_to_a_valid_plan(path):
    """Every key is a bench flag, every value has its type, and every setting is an option of a benchmarked method
    or protocol with a valid value (built as the bench builds them, without running anything)."""
    args, recipe = _parsed("bench", "--config", path)
    plan = bench_plan(args, recipe)
    assert plan.recipe == {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    settings = parse_settings(plan.settings, plan.methods, plan.protocols)
    for spec in plan.methods:
        name = spec.partition(":")[0]
        cls = get_method(name).Options
        extra = {"source": "unused"} if name == "neighbors" else {}
        build(cls, {**options_for(name, cls, settings), **extra}, f"{path.name}: method {name}")
    for spec in plan.protocols:
        name, fixed = protocol_spec(spec)
        cls = get_protocol(name).Options
        build(cls, {**options_for(name, cls, settings), **fixed}, f"{path.name}: protocol {name}")
    assert plan.first_seed == 3407  # every table was measured on the evaluation seeds 3407, 3408, 3409


def test_demo_recipe_holds_the_demo_settings():
    from datadistill.api import make_config
    from datadistill.demo import demo_recipe
    from datadistill.evaluate.linear_probe import ProbeOptions

    values = demo_recipe().values
    assert values == {
        "data": "mnist-5k",
        "seeds": 3,
        "backbone": "efficientnet_lite0",
        "ipc": 1,
        "crop": 64,
        "steps": 300,
        "lr": 0.01,
        "init": "centroids",
        "augs": 4,
        "probe": {"epochs": 1000, "views": 100},
    }
    sfm = {k: values[k] for k in ("backbone", "crop", "steps", "lr", "init", "augs")}
    assert make_config("sfm", values["data"], values["ipc"], **sfm).options["init"] == "centroids"
    build(ProbeOptions, {**values["probe"], "crop": values["crop"]}, "probe")


def test_demo_variant_keeps_the_shipped_keys(tmp_path):
    from datadistill.core.errors import ConfigError
    from datadistill.demo import demo_recipe

    variant = demo_recipe(_write(tmp_path / "v.toml", "steps = 20\n[probe]\nepochs = 5\n")).values
    assert (variant["steps"], variant["probe"], variant["crop"]) == (20, {"epochs": 5, "views": 100}, 64)
    with pytest.raises(ConfigError, match=r"v2\.toml.*unknown key 'probe\.epoch' \(did you mean 'probe\.epochs'"):
        demo_recipe(_write(tmp_path / "v2.toml", "[probe]\nepoch = 5\n"))
    with pytest.raises(ConfigError, match=r"v3\.toml.*'steps' must be an integer"):
        demo_recipe(_write(tmp_path / "v3.toml", 'steps = "20"\n'))


def test_demo_command_reads_its_config(capsys, tmp_path):
    bad = _write(tmp_path / "demo.toml", "step = 20\n")
    code, _, err = _cli(capsys, "demo", "--config", bad, "--out", tmp_path / "d")
    assert code == 2 and "demo.toml" in err and "unknown key 'step' (did you mean 'steps'?)" in err
    assert not (tmp_path / "d").exists()


def test_flags_override_the_recipe_and_defaults_fill_the_rest(tmp_path):
    recipe = _write(
        tmp_path / "r.toml",
        'data = "digits"\nmethods = ["random"]\nseeds = 2\nout = "o"\n'
        "[crop]\nefficientnet_lite0 = 32\n[set]\nepochs = 10\n[set.linear-probe]\nviews = 2\n",
    )
    args, _ = _parsed("bench", "--config", recipe)
    assert (args.seeds, args.protocols, args.first_seed, args.ipc) == (2, ["linear-probe"], 1000, [1])
    assert args.crop == ["efficientnet_lite0=32"]
    assert args.settings == ["epochs=10", "linear-probe.views=2"]
    args, _ = _parsed(
        "bench", "--config", recipe, "--seeds", "1", "--set", "epochs=5", "--crop", "efficientnet_lite0=48"
    )
    assert args.seeds == 1
    plan = bench_plan(args)
    assert plan.crops == {"efficientnet_lite0": 48}
    assert parse_settings(plan.settings, plan.methods, plan.protocols) == {
        "": {"epochs": 5},
        "linear-probe": {"views": 2},
    }
    # without a recipe, the defaults are those of before
    args, recipe_read = _parsed("bench", "--data", "digits", "--methods", "random", "--out", "o")
    assert recipe_read is None and (args.seeds, args.protocols, args.crop, args.settings) == (
        3,
        ["linear-probe"],
        [],
        [],
    )


@pytest.mark.parametrize(
    "command, text, message",
    [
        ("bench", "ipcs = [1]\n", r"unknown key 'ipcs' \(did you mean 'ipc'\?\)"),
        ("bench", "seeds = 1.5\n", r"'seeds' must be an integer, got 1\.5"),
        ("bench", 'methods = "random"\n', r"'methods' must be a list, each item a string"),
        ("bench", "crop = 64\n", r"'crop' must be a table"),
        ("bench", "seeds = \n", r"not valid TOML"),
        ("distill", 'ipc = "2"\n', r"'ipc' must be an integer"),
        ("distill", "amp = 1\n", r"'amp' must be true or false"),
        ("distill", "stepz = 3\n", r"unknown key 'stepz' \(did you mean 'steps'\?\)"),
    ],
)
def test_bad_recipe_gives_one_line_naming_file_and_key(capsys, tmp_path, command, text, message):
    recipe = _write(tmp_path / "bad.toml", text)
    argv = ["bench", "--data", "digits", "--methods", "random"] if command == "bench" else ["distill", "sfm"]
    code, _, err = _cli(capsys, *argv, "--out", tmp_path / "o", "--config", recipe)
    assert code == 2 and err.startswith("datadistill: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "bad.toml" in err or "required" in err
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_missing_recipe_and_missing_required_setting(capsys, tmp_path):
    code, _, err = _cli(capsys, "bench", "--config", tmp_path / "nope.toml")
    assert code == 2 and "nope.toml" in err and "cannot be read" in err
    recipe = _write(tmp_path / "r.toml", 'data = "digits"\n')
    code, _, err = _cli(capsys, "bench", "--config", recipe, "--out", tmp_path / "o")
    assert code == 2 and "required" in err and "--methods" in err and "--data" not in err


def test_tiny_bench_by_recipe_with_an_override(capsys, tmp_path, monkeypatch):
    """The flag wins over the recipe, the recipe is recorded, and the same plan given by flags reuses every cell."""
    recipe = _write(
        tmp_path / "tiny.toml",
        'data = "digits"\nmethods = ["random"]\nseeds = 2\n'
        "[crop]\nefficientnet_lite0 = 32\n[set]\nepochs = 10\nviews = 2\n",
    )
    out = tmp_path / "b"
    code, _, err = _cli(capsys, "bench", "--config", recipe, "--seeds", "1", "--out", out)
    assert code == 0, err
    plan = json.loads((out / "bench.json").read_text())
    assert plan["seeds"] == 1 and plan["methods"] == ["random"]
    assert plan["recipe"] == {"path": str(recipe.resolve()), "sha256": hashlib.sha256(recipe.read_bytes()).hexdigest()}
    from datadistill.reporting.markdown import plan_summary

    assert f"recipe {recipe.resolve()} (sha256 {plan['recipe']['sha256'][:12]})" in plan_summary(plan)
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 1 and all(len(r["test_acc"]) == 1 for r in records)  # 1 seed: the flag's, not the file's
    assert all(r["given"]["linear-probe"] == {"epochs": 10, "views": 2, "crop": 32} for r in records)

    import datadistill.bench.runner

    def no_evaluation(*args, **kwargs):
        raise AssertionError("a cell was evaluated again")

    monkeypatch.setattr(datadistill.bench.runner, "evaluate", no_evaluation)
    flags = ["--methods", "random", "--crop", "efficientnet_lite0=32", "--set", "epochs=10"]
    code, _, err = _cli(capsys, "bench", "--data", "digits", *flags, "--set", "views=2", "--seeds", "1", "--out", out)
    assert code == 0, err
    assert json.loads((out / "bench.json").read_text())["cells"] == plan["cells"]


def test_distill_by_recipe_records_it_and_resumes_the_run_of_its_flags(capsys, tmp_path):
    recipe = _write(tmp_path / "r.toml", 'data = "digits"\nipc = 3\nseed = 5\nval_fraction = 0.2\namp = false\n')
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "distill", "random", "--config", recipe, "--ipc", "2", "--out", run)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["distill"]["ipc"] == 2 and config["distill"]["seed"] == 5 and config["distill"]["amp"] is False
    assert config["recipe"] == {
        "path": str(recipe.resolve()),
        "sha256": hashlib.sha256(recipe.read_bytes()).hexdigest(),
    }
    # the same settings by flags are the same run (found complete); other settings are refused
    same = ["--data", "digits", "--ipc", "2", "--seed", "5", "--val-fraction", "0.2", "--no-amp", "--out", run]
    code, _, err = _cli(capsys, "distill", "random", *same)
    assert code == 0, err
    code, _, err = _cli(capsys, "distill", "random", *same[:-2], "--seed", "6", "--out", run)
    assert code == 2 and "different config" in err and "seed" in err


def test_every_bench_flag_shows_its_default_or_that_it_is_required():
    parser = build_parser([])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bench = sub.choices["bench"]
    flags = [a for a in bench._actions if a.option_strings and a.dest not in ("help", "config")]
    assert len(flags) == 17
    for action in flags:
        assert "(default:" in action.help or "(required" in action.help, action.option_strings
    text = " ".join(bench.format_help().split())
    assert "(default: linear-probe)" in text and "(default: 1000)" in text and "--config FILE.toml" in text
    distill_sfm = sub.choices["distill"]._actions[-1].choices["sfm"]
    assert "(default: 1)" in distill_sfm.format_help()  # --ipc: the option dataclass's default, still shown
    eval_root = next(a for a in sub.choices["eval"]._actions if "--root" in a.option_strings)
    assert eval_root.help


def test_list_aligns_its_columns(capsys):
    from datadistill.data import available_datasets

    code, out, _ = _cli(capsys, "list", "datasets")
    assert code == 0
    lines = out.splitlines()[1:]
    entries = available_datasets()
    starts = {line.index(e.description) for e, line in zip(entries, lines, strict=False)}
    starts.add(lines[-2].index("a folder with train/"))  # imagefolder:PATH, after the registered datasets
    starts.add(lines[-1].index("a Hugging Face dataset"))
    assert len(starts) == 1, out
    for e, line in zip(entries, lines, strict=False):
        before = line[: line.index(e.description)]
        assert before.split() == [e.name, *(["offline"] if e.offline else [])] and before.endswith("  "), line
