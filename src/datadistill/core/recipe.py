"""Recipes: a command's settings in a TOML file (``--config FILE.toml``), with the command line over the file.

A recipe's keys are the command's long flags without the dashes (``--eval-backbones`` -> ``eval_backbones``). Flags
that take a comma list (``--methods``) take a TOML list; flags given several times (``--crop``, ``--set``,
``--evaluate-with``) take a table whose entries are the flag's ``KEY=VALUE`` items (a nested table prefixes its name
and a dot: ``[set.sfm]`` ``lr = 0.01`` is ``--set sfm.lr=0.01``; a list value joins with ``+``). Precedence:
the flags' defaults < the recipe < the flags given. The parsers do not fill their defaults themselves
(``defer_defaults``) so that a flag the user did not give never masks the file; ``apply_recipe`` fills them once the
file is merged.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFERRED = "_deferred"  # namespace entry (set by the subparser) holding its deferred defaults and required flags


def words(value: str) -> list[str]:
    """A comma list flag: ``a,b`` -> ``["a", "b"]``."""
    return [v.strip() for v in value.split(",") if v.strip()]


def ints(value: str) -> list[int]:
    """A comma list of integers: ``1,10`` -> ``[1, 10]``."""
    try:
        return [int(v) for v in words(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got '{value}'") from None


@dataclass
class Recipe:
    path: Path
    sha256: str
    values: dict

    def identity(self) -> dict:
        """What results record of the recipe they were run from."""
        return {"path": str(self.path), "sha256": self.sha256}


def load_recipe(path: str | Path) -> Recipe:
    """Read a TOML recipe; a missing or unreadable file and a syntax error are a ConfigError naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"recipe {path}: cannot be read ({exc.strerror or exc})") from None
    try:
        values = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {path}: not valid TOML ({exc})") from None
    return Recipe(path.resolve(), hashlib.sha256(raw).hexdigest(), values)


# ---- the flags of a parser as recipe keys -------------------------------------------------------------------------


def recipe_key(action: argparse.Action) -> str:
    """``--eval-backbones`` -> ``eval_backbones``: the long flag a user knows, not the namespace name."""
    long = next(s for s in action.option_strings if s.startswith("--") and not s.startswith("--no-"))
    return long[2:].replace("-", "_")


def _kind(action: argparse.Action) -> Any:
    """What a recipe value of this flag must be: a scalar type, ("list", type), or "table"."""
    if isinstance(action, argparse.BooleanOptionalAction | argparse._StoreTrueAction):
        return bool
    if isinstance(action, argparse._AppendAction):
        return "table"
    if action.type is words:
        return ("list", str)
    if action.type is ints:
        return ("list", int)
    return action.type or str


KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_value(where: str, key: str, value: Any, kind: Any) -> None:
    """A ConfigError naming the file and the key when ``value`` is not of ``kind``."""
    if kind == "table":
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a table of KEY = VALUE entries, got {value!r}")
        for name, item in table_items(value):
            parts = item if isinstance(item, list) else [item]
            if not all(_is(p, str | int | float | bool) for p in parts):
                raise ConfigError(f"{where}: '{key}.{name}' must be a string, number, boolean or list, got {item!r}")
        return
    if isinstance(kind, tuple):
        if not isinstance(value, list) or not all(_is(v, kind[1]) for v in value):
            raise ConfigError(f"{where}: '{key}' must be a list, each item {KIND_NAMES[kind[1]]}, got {value!r}")
        return
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{key}' must be a table, got {value!r}")
        check_keys(where, value, kind, prefix=f"{key}.")
        return
    if not _is(value, kind):
        raise ConfigError(f"{where}: '{key}' must be {KIND_NAMES.get(kind, kind.__name__)}, got {value!r}")


def check_keys(where: str, values: dict, schema: dict[str, Any], prefix: str = "") -> None:
    """Every key of ``values`` known to ``schema`` (key -> kind; a dict kind is a nested table) and of its kind."""
    for key, value in values.items():
        if key not in schema:
            close = difflib.get_close_matches(key, schema, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{where}: unknown key '{prefix}{key}'{hint}; known keys: {', '.join(prefix + k for k in schema)}"
            )
        check_value(where, prefix + key, value, schema[key])


def table_items(table: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """A table's entries with nested tables flattened: ``{"sfm": {"lr": 0.01}}`` -> ``[("sfm.lr", 0.01)]``."""
    items = []
    for key, value in table.items():
        if isinstance(value, dict):
            items += table_items(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(_text(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _shown(default: Any) -> str:
    if default in (None, []):
        return "none"
    if default is False:
        return "off"
    return ",".join(map(str, default)) if isinstance(default, list) else str(default)


# ---- parsers whose defaults wait for the recipe -------------------------------------------------------------------


def defer_defaults(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE.toml`` to ``parser`` and hold back its flags' defaults (and requirements) until
    ``apply_recipe``: a flag absent from the namespace was not given. Every default stays in ``--help``."""
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE.toml",
        help="read the settings from this recipe (keys: these flags without dashes); flags given here override it",
    )
    defaults, required = {}, []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "config"):
            continue
        if action.required:
            action.required = False
            required.append(action)
            action.help = f"{action.help or ''} (required: as a flag or in the recipe)".lstrip()
        elif action.default is not argparse.SUPPRESS:
            defaults[action.dest] = action.default
            if "(default:" not in (action.help or ""):
                action.help = f"{action.help or ''} (default: {_shown(action.default)})".lstrip().replace("%", "%%")
        action.default = argparse.SUPPRESS
    schema = {recipe_key(a): (a.dest, _kind(a)) for a in parser._actions if a.option_strings and a.dest != "help"}
    schema.pop("config")
    parser.set_defaults(**{DEFERRED: {"defaults": defaults, "required": required, "schema": schema}})


def apply_recipe(args: argparse.Namespace) -> Recipe | None:
    """Merge ``--config``'s recipe under the flags given, then fill the defaults; the recipe read, if any.

    Both ``config`` and the deferred bookkeeping leave the namespace, so it holds the command's settings only."""
    state = vars(args).pop(DEFERRED, None)
    if state is None:  # a command without deferred defaults (the demo reads its own recipe)
        return None
    path = vars(args).pop("config", None)
    recipe = load_recipe(path) if path is not None else None
    if recipe is not None:
        schema = state["schema"]
        check_keys(f"recipe {recipe.path}", recipe.values, {k: kind for k, (_, kind) in schema.items()})
        for key, value in recipe.values.items():
            dest, kind = schema[key]
            if kind == "table":  # the file's items first: a flag's item for the same key comes later and wins
                setattr(args, dest, [f"{k}={_text(v)}" for k, v in table_items(value)] + getattr(args, dest, []))
            elif not hasattr(args, dest):
                setattr(args, dest, value)
    for dest, default in state["defaults"].items():
        if not hasattr(args, dest):
            setattr(args, dest, default)
    missing = [a for a in state["required"] if not hasattr(args, a.dest)]
    if missing:
        flags = ", ".join(a.option_strings[0] for a in missing)
        raise ConfigError(f"the following arguments are required (as flags or in the --config recipe): {flags}")
    return recipe
