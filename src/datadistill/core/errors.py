"""User-facing errors: one clear message, no traceback from deep inside torch."""

from __future__ import annotations


class DatadistillError(Exception):
    """An error caused by the user's input or environment; the CLI prints its message and exits 2.

    ``cli``, when given, is the same message in command-line terms (flags where the message names Python
    arguments); the CLI shows it instead of the message.
    """

    def __init__(self, *args: object, cli: str | None = None):
        super().__init__(*args)
        self.cli = cli


class DataError(DatadistillError):
    """A dataset is missing, corrupt or unsuitable for the request."""


class WeightsError(DatadistillError):
    """Pretrained weights cannot be found or loaded."""


class ConfigError(DatadistillError):
    """An option or a combination of options is invalid."""


class TrainingDiverged(DatadistillError):
    """A loss became NaN or infinite."""


def user_message(exc: BaseException) -> str:
    """The message to show for ``exc``.

    Errors raised inside a DataLoader worker come back wrapped with the worker's traceback in the
    message; the user only needs its last line, stripped of the ``module.Class:`` prefix.
    """
    if getattr(exc, "cli", None):
        return exc.cli
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    last = lines[-1]
    for cls in (DataError, WeightsError, ConfigError, TrainingDiverged, DatadistillError):
        prefix = f"{cls.__module__}.{cls.__name__}: "
        if last.startswith(prefix):
            return last[len(prefix) :]
    return last if len(lines) > 1 and "Traceback" in str(exc) else "\n".join(lines)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name when it has none), cut at ``limit``: what a
    one-line error says of a library's failure."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:limit]
