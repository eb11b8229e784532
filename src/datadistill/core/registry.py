"""The one registry type: methods, protocols, backbones, datasets, architectures and pretrainers are each a
``Registry`` of named entries, filled by the modules that define them and, optionally, by installed plugins.

A plugin package adds entries through an entry point in the group ``datadistill.<kind>s`` (``datadistill.methods``,
``datadistill.backbones``, ...): its name is the entry's name, and loading it either registers the entry itself
(a module or class that calls ``register``) or returns the object to register under that name. Plugins load
lazily, on the first lookup, so an installed but unused plugin costs nothing at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar, overload

from .errors import ConfigError, DatadistillError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name, in registration order.

    ``also`` names what a lookup accepts besides the entries (``timm:ARCH``, ``imagefolder:PATH``), listed in the
    error of an unknown name; ``error`` is that error's class (a ``ConfigError`` unless the kind says otherwise:
    an unknown dataset is a ``DataError``)."""

    def __init__(self, kind: str, also: tuple[str, ...] = (), error: type[DatadistillError] = ConfigError):
        self.kind = kind
        self.also = also
        self.error = error
        self.group = f"datadistill.{kind}s"
        self._entries: dict[str, T] = {}
        self._plugins_loaded = False

    @overload
    def register(self, name: str, obj: T) -> T: ...

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    def register(self, name: str, obj: T | None = None) -> T | Callable[[T], T]:
        """Add ``obj`` under ``name``; without ``obj``, a decorator that adds what it decorates."""
        if obj is None:
            return lambda decorated: self.register(name, decorated)
        self._entries[name] = obj
        return obj

    def register_each(self, entries: Iterable[T]) -> None:
        """Add each entry under its own ``name`` attribute (a table of specs defined in one place)."""
        for entry in entries:
            self.register(entry.name, entry)

    def get(self, name: str) -> T:
        self._load_plugins()
        if name not in self._entries:
            known = ", ".join([*sorted(self._entries), *self.also]) or "none registered"
            raise self.error(f"unknown {self.kind} '{name}'. Known: {known}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_plugins()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._load_plugins()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # first, so a plugin that looks entries up while it loads does not recurse
        for point in entry_points(group=self.group):
            try:
                loaded = point.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin is reported in one line, whatever it raised
                raise ConfigError(
                    f"the {self.kind} plugin '{point.name}' ({point.value}) cannot be loaded: {exc}"
                ) from None
            if point.name not in self._entries:
                self.register(point.name, loaded)
