"""Typed option sets. A method or an evaluation protocol declares one dataclass of options; the same
declaration drives the Python API (keyword arguments), the CLI (``--flag`` per field, with help) and the
resolved config saved with every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import MISSING, field
from typing import Any

from .errors import ConfigError


def option(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A dataclass field with a help text (and allowed values) for the CLI."""
    return field(default=default, metadata={"help": help, "choices": choices})


def _base_type(annotation: Any) -> type:
    """int for ``int``, ``int | None`` and ``Optional[int]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return args[0]
    return annotation


def fields_of(cls: type) -> dict[str, tuple[dataclasses.Field, type]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, _base_type(hints[f.name])) for f in dataclasses.fields(cls)}


def flag(name: str) -> str:
    """The command-line flag of a field: ``--batch-size`` for ``batch_size``."""
    return "--" + name.replace("_", "-")


def add_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, skip: set[str] = frozenset()
) -> None:
    """One ``--name`` per field of ``cls`` (booleans get ``--name/--no-name``)."""
    for name, (f, kind) in fields_of(cls).items():
        if name in skip:
            continue
        option_flag = flag(name)
        default = None if f.default is MISSING else f.default
        help_text = f.metadata.get("help", "")
        if default is not None and "(default:" not in help_text:  # a help that names its default keeps its wording
            help_text = f"{help_text} (default: {default})"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings
        if kind is bool:
            parser.add_argument(
                option_flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
            continue
        parser.add_argument(
            option_flag, type=kind, default=argparse.SUPPRESS, choices=f.metadata.get("choices"), help=help_text
        )


def build(cls: type, values: dict, what: str) -> Any:
    """An instance of ``cls`` from ``values``; unknown names, wrong choices, non-numbers and non-finite numbers
    are a ConfigError, and so is whatever the class's own ``validate`` refuses."""
    known = fields_of(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{what} has no option {', '.join(unknown)}. Options: {', '.join(known)}")
    for name, value in values.items():
        f, kind = known[name]
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{flag(name)} must be one of {', '.join(map(str, choices))}, got {value}")
        if value is not None and kind in (int, float) and not isinstance(value, int | float):
            raise ConfigError(f"{flag(name)} must be a number, got {value!r}")
        # Before any range check: NaN passes them all (``nan <= 0`` is False) and would reach torch.
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag(name)} must be a finite number, got {value}")
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def at_least(obj: Any, minimum: int, *names: str) -> None:
    """Range check of ``validate`` methods: each named field of ``obj`` that is set must be >= ``minimum``."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < minimum:
            raise ConfigError(f"{flag(name)} must be at least {minimum}, got {value}")


def positive(obj: Any, *names: str) -> None:
    """Range check of ``validate`` methods: each named field of ``obj`` that is set must be > 0."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{flag(name)} must be positive, got {value}")


def fraction(obj: Any, *names: str) -> None:
    """Range check of ``validate`` methods: each named field of ``obj`` that is set must lie in [0, 1]."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"{flag(name)} must lie in [0, 1], got {value}")


def split(values: dict, *classes: type) -> list[dict]:
    """Partition ``values`` by which class declares each name (first match wins); leftovers go last."""
    parts: list[dict] = [{} for _ in range(len(classes) + 1)]
    for name, value in values.items():
        for i, cls in enumerate(classes):
            if name in fields_of(cls):
                parts[i][name] = value
                break
        else:
            parts[-1][name] = value
    return parts


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)
