"""One registry per kind (datasets, models, attacks, defenses, scenarios): the CLI, the sweeps and the tests read it.

One registration style: each package's `__init__` (or, for models and datasets, the module that defines them)
builds its registry with `Registry.of(kind, entries)` from the entries themselves, each carrying its own `name`;
the order given is the order of help texts and tables. `tests/test_registries.py` checks that every module of the
attacks, defenses and scenarios folders is registered or declared a support module."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from .errors import unknown_choice

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → entry mapping with a uniform error for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    @classmethod
    def of(cls, kind: str, entries: Iterable[T]) -> Registry[T]:
        """A registry of `entries` under their own `name` attribute, in the order given."""
        registry = cls(kind)
        for entry in entries:
            registry.add(entry.name, entry)
        return registry

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_choice(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
