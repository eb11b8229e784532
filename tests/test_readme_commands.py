"""Every `datadistill` command in README.md's shell blocks works: each is parsed by the real CLI parser (a renamed
flag or subcommand fails here), and the first command of each subcommand runs end to end at tiny size.

The tiny runs are the README's own commands with the data swapped for scikit-learn ``digits`` (offline, 8 px) and
the size flags turned down by ``SUBSTITUTIONS`` (the documented table below), run from a temporary folder so that
the README's relative ``runs/...`` paths land there. A command that cannot run here is parsed only, with its reason
(``parse_only_reason``).
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

from datadistill.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL_FENCES = {"bash", "sh", "shell", "console"}

# README value -> tiny value, applied in order to a command's argument string. Each row turns one size down.
SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"--data \S+", "--data digits"),  # any dataset -> scikit-learn digits (built in, 1797 images of 8 px)
    (r"--crop (\d+)\b", "--crop 32"),  # backbone input 64 / 224 px -> 32 px
    (r"--crop (\w+)=\d+", r"--crop \1=32"),  # bench's per-backbone crop -> 32 px
    (r"--steps \d+", "--steps 2"),  # distillation steps -> 2
    (r"--set steps=\d+", "--set steps=2"),  # bench: distillation steps -> 2
    (r"--set epochs=\d+", "--set epochs=2"),  # bench: probe epochs -> 2
    (r"--seeds \d+", "--seeds 1"),  # evaluation seeds -> 1
]
# Flags added per subcommand where the README leaves a size to its default (the paper's).
EXTRA_FLAGS: dict[str, list[str]] = {
    "demo": ["--data", "digits", "--steps", "2", "--seeds", "1"],
    "eval": ["--epochs", "2", "--views", "1"],  # the probe: 1000 epochs, 100 views -> 2 epochs, 1 view
    "bench": ["--set", "views=1"],
}
HUB_OR_GPU = ("--device cuda", "dinov2_vit", "clip_", "eva02", "mocov3", "timm:", "hf:", "sd-vae-ft-mse", "DiT-XL")


def readme_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line, argv after `datadistill`) of every datadistill command in the fenced shell blocks of ``text``."""
    commands, fence, pending, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            continue
        if fence not in SHELL_FENCES:
            continue
        if not pending:
            start = number
        pending += line.rstrip().removesuffix("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        tokens = shlex.split(pending, comments=True)
        cuts = [-1] + [i for i, token in enumerate(tokens) if token in ("&&", "||", ";")] + [len(tokens)]
        for words in (tokens[a + 1 : b] for a, b in itertools.pairwise(cuts)):
            for i, word in enumerate(words):
                if word == "datadistill" and (i == 0 or words[i - 1] == "-m"):
                    commands.append((start, words[i + 1 :]))
                    break
        pending = ""
    return commands


def run_key(argv: list[str]) -> tuple[str, ...]:
    """What a command exercises: the subcommand, and for distill and pretrain the method or kind."""
    return tuple(argv[:2]) if argv[0] in ("distill", "pretrain") else (argv[0],)


def subparser(argv: list[str]):
    parser = build_parser(argv)
    for word in argv[: 2 if argv[0] in ("distill", "pretrain") else 1]:
        action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = action.choices[word]
    return parser


def parse_only_reason(argv: list[str], already_run: set[tuple[str, ...]]) -> str | None:
    line = " ".join(argv)
    if "--config" in argv:
        return "a recipe: its settings are benchmark-sized and live in the recipe file, which its own tests cover"
    if any(marker in line for marker in HUB_OR_GPU):
        return "needs hub weights or a GPU, which the tests do not download or have"
    if run_key(argv) in already_run:
        return "this subcommand already ran end to end from an earlier README command"
    return None


def tiny(argv: list[str]) -> list[str]:
    line = " ".join(argv)
    for pattern, replacement in SUBSTITUTIONS:
        line = re.sub(pattern, replacement, line)
    return line.split() + EXTRA_FLAGS.get(argv[0], [])


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_the_readme_shows_each_subcommand() -> None:
    keys = {run_key(argv) for _, argv in COMMANDS}
    assert {("demo",), ("list",), ("distill", "sfm"), ("eval",), ("bench",), ("report",)} <= keys, keys


def test_extraction_follows_shell_syntax() -> None:
    text = "```bash\npip install x && datadistill demo   # comment --steps 9\ndatadistill bench --data d \\\n"
    text += "    --seeds 3 --out o\npython -m datadistill list\n```\n```python\ndatadistill eval x\n```\n"
    assert readme_commands(text) == [
        (2, ["demo"]),
        (3, ["bench", "--data", "d", "--seeds", "3", "--out", "o"]),
        (5, ["list"]),
    ]
    assert tiny(["bench", "--data", "fashion-mnist", "--crop", "efficientnet_lite0=64", "--set", "steps=300"]) == [
        *("bench", "--data", "digits", "--crop", "efficientnet_lite0=32", "--set", "steps=2", "--set", "views=1")
    ]


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[f"README.md:{n}" for n, _ in COMMANDS])
def test_readme_command_parses(line: int, argv: list[str]) -> None:
    try:
        build_parser(argv).parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README.md:{line}: `datadistill {' '.join(argv)}` does not parse (exit {exc.code})")


def tiny_demo_settings(tmp_path: Path) -> list[str]:
    """The demo's recipe (crop 64, a 1000-epoch probe over 100 views) turned down to crop 32, 2 epochs, 1 view."""
    recipe = tmp_path / "tiny-demo.toml"
    recipe.write_text('data = "digits"\ncrop = 32\nsteps = 2\nseeds = 1\n[probe]\nepochs = 2\nviews = 1\n')
    return ["--config", str(recipe)]


def test_readme_commands_run_at_tiny_size(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATADISTILL_PROGRESS", "0")
    ran: set[tuple[str, ...]] = set()
    for line, argv in COMMANDS:
        if parse_only_reason(argv, ran) is not None:
            continue
        command = tiny(argv) + (tiny_demo_settings(tmp_path) if argv[0] == "demo" else [])
        datasets = [command[i + 1] for i, word in enumerate(command) if word == "--data"]
        assert set(datasets) <= {"digits"}, command
        code = main(["-q", *command])
        assert code == 0, f"README.md:{line}: `datadistill {' '.join(command)}` exited {code}: {capsys.readouterr()}"
        ran.add(run_key(argv))
    assert {("demo",), ("distill", "sfm"), ("eval",), ("bench",), ("report",)} <= ran, ran
    for made in ("runs/demo/report.md", "runs/fm-sfm/synset/synset.safetensors", "runs/quick-report/report.html"):
        assert (tmp_path / made).exists(), made
