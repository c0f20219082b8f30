"""One registry per kind (datasets, models, attacks, defenses, scenarios): the CLI, the sweeps and the tests read it.

One registration style: each package's `__init__` (or, for models and datasets, the module that defines them)
builds its registry with `Registry.of(kind, entries)` from the entries themselves, each carrying its own `name`;
the order given is the order of help texts and tables. `tests/test_registries.py` checks that every module of the
attacks, defenses and scenarios folders is registered or declared a support module.

Plugins: a registry built with a `PluginGroup` also takes the entries other installed packages declare under that
entry-point group (`poisonbench.attacks`, `poisonbench.defenses`, `poisonbench.datasets`, `poisonbench.scenarios`;
docs/extending.md, "A plugin package"). They are looked up and imported once, on the registry's first read, and
come after the built-in entries. A plugin that cannot be imported, whose entry is not of the registry's kind, or
whose name is taken (by a built-in entry or an earlier plugin) is left out with a one-line `PoisonbenchWarning`
naming its distribution and entry point; everything else works as before. A plugin cannot take the CLI down: what its
import raises is caught whatever it is (an exception, `SystemExit` from a `sys.exit()` at import, `KeyboardInterrupt`,
`GeneratorExit`), and so is what the checks of its entry raise (a `PARAMS` or `name` that is a property raising when
read); each is that one warning, and the plugin is left out."""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import PoisonbenchWarning, unknown_choice

T = TypeVar("T")


@dataclass(frozen=True)
class PluginGroup:
    """An entry-point group a registry takes plugins from: `accepts(entry)` says whether a loaded entry is of the
    registry's kind, `wanted` names that kind in the warning when it is not."""

    group: str
    accepts: Callable[[object], bool]
    wanted: str


@dataclass(frozen=True)
class Plugin:
    """Where a registry entry came from when another package declared it: its distribution and the entry point."""

    dist: str
    version: str
    entry_point: str  # "group: name = module:attr"

    def ref(self) -> dict[str, str]:
        return {"name": self.dist, "version": self.version}


def entry_points_of(group: str) -> list[importlib.metadata.EntryPoint]:
    """The installed entry points of `group` (one place to stub in tests)."""
    return list(importlib.metadata.entry_points(group=group))


def _dist_of(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "an unknown distribution", "unknown"
    return str(dist.metadata["Name"] or dist.name), str(dist.version)


def _first_line(exc: BaseException) -> str:
    """`Type: first line of the message` (the type alone without one); `str(exc)` itself may raise (a plugin's
    exception class): then the type alone."""
    try:
        text = str(exc).strip().splitlines()
    except Exception:
        text = []
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _shown(entry: object) -> str:
    """`repr(entry)`, cut to 80 characters; a repr that raises or never ends a line: the type's name."""
    try:
        text = repr(entry)
    except Exception:
        return f"a {type(entry).__name__} object"
    return text if len(text) <= 80 else text[:77] + "..."


class Registry(Generic[T]):
    """Name → entry mapping with a uniform error for unknown names."""

    def __init__(self, kind: str, plugins: PluginGroup | None = None):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._group = plugins
        self._plugins: dict[str, Plugin] = {}
        self._loaded = plugins is None

    @classmethod
    def of(cls, kind: str, entries: Iterable[T], plugins: PluginGroup | None = None) -> Registry[T]:
        """A registry of `entries` under their own `name` attribute, in the order given; with `plugins`, the
        entries of that entry-point group follow them (module docstring)."""
        registry = cls(kind, plugins)
        for entry in entries:
            registry.add(entry.name, entry)
        return registry

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry

    def _load(self) -> None:
        """Take the plugins' entries, once (the flag is set first: a plugin that reads this registry while it is
        imported sees the built-in entries)."""
        if self._loaded:
            return
        self._loaded = True
        try:
            points = entry_points_of(self._group.group)
        except Exception as exc:  # a broken installation's metadata: no plugins rather than no CLI
            warnings.warn(f"{self._group.group} plugins not loaded: {_first_line(exc)}", PoisonbenchWarning,
                          stacklevel=2)
            return
        for ep in points:
            self._load_one(ep)

    def _load_one(self, ep: importlib.metadata.EntryPoint) -> None:
        dist, version = _dist_of(ep)
        plugin = Plugin(dist, version, f"{ep.group}: {ep.name} = {ep.value}")
        try:
            entry = ep.load()
        except BaseException as exc:  # a plugin's `sys.exit(0)` or KeyboardInterrupt at import too
            return self._warn(plugin, f"failed to import: {_first_line(exc)}")
        try:  # the checks read the entry's attributes: a property there may raise anything
            fits = self._group.accepts(entry)
            name = getattr(entry, "name", None)
        except BaseException as exc:
            return self._warn(plugin, f"its entry raised when checked: {_first_line(exc)}")
        if not fits:
            return self._warn(plugin, f"{_shown(entry)} is not {self._group.wanted}")
        if not isinstance(name, str) or name != ep.name:
            return self._warn(plugin, f"its {self.kind} names itself {_shown(name)}, not {ep.name!r} as its entry "
                                      "point")
        if name in self._entries:
            taken = self._plugins.get(name)
            by = f"plugin {taken.dist}'s" if taken else "built in"
            return self._warn(plugin, f"{self.kind} {name!r} is {by}; refused")
        self._entries[name] = entry
        self._plugins[name] = plugin

    def _warn(self, plugin: Plugin, why: str) -> None:
        warnings.warn(f"plugin {plugin.dist} {plugin.version} ({plugin.entry_point}) left out: {why}",
                      PoisonbenchWarning, stacklevel=3)

    def refuse(self, name: str, why: str) -> None:
        """Take back plugin entry `name`, found unfit after loading (its options clash, say), with a warning."""
        plugin = self._plugins.pop(name)
        del self._entries[name]
        self._warn(plugin, why)

    def plugin(self, name: str) -> Plugin | None:
        """The plugin entry `name` came from, or None (a built-in entry, or no such entry)."""
        self._load()
        return self._plugins.get(name)

    def builtins(self) -> dict[str, T]:
        """{name: entry} of the entries poisonbench registers itself, in order, without loading plugins (for
        import-time defaults)."""
        return {n: e for n, e in self._entries.items() if n not in self._plugins}

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_choice(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._entries))


def plugins_used(uses: Iterable[tuple[Registry, object]]) -> dict[str, str]:
    """{distribution: version} of the plugins that the (registry, name) pairs `uses` come from; empty when all are
    built in (a record then has no `plugins` field)."""
    found = {}
    for registry, name in uses:
        plugin = registry.plugin(name) if isinstance(name, str) else None
        if plugin is not None:
            found[plugin.dist] = plugin.version
    return dict(sorted(found.items()))
