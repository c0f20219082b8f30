"""One parameter system for attacks and defenses (docs/engine.md, "Parameters"): each option is declared once as a
`Param`.

A `Param` names the option, its type, its default (one value, one per dataset family, or a function of the family
and the training recipe, e.g. HINT's schedule scaled to the epochs), a help text, the source of the default
(paper or official code), and its bounds. `resolve` turns the caller's values into the resolved parameters that a
poison id or run id hashes; the CLI generates `craft` and `defend` options from the registries' `PARAMS`
(`poisonbench.cli.generated`), so adding an attack or a defense touches no file in `cli/`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import PoisonbenchError, inapplicable_option, unknown_choice

if TYPE_CHECKING:
    from .registry import Registry

# Upper bounds of the counts that size memory or time (issue 68; docs/commands.md, "Limits"): each about 10× the
# largest default or paper / official value, so that no published setting is refused while a typo (`--repeats
# 1000000`) is a one-line error instead of an allocator's death hours later. A parameter states its own `maximum`.
MAX_EPOCHS = 1_000  # training epochs (victim and surrogate recipes): the paper's longest is 80 (CIFAR-10)
MAX_BATCH_SIZE = 10_000  # rows per batch (training and crafting): the largest default is 1,000 (pgd, dap)
MAX_STEPS = 1_000  # inner optimisation steps (PGD, noise updates): the largest default or paper value is 100 (dap)
MAX_ITERATIONS = 40_000  # targeted crafting iterations per restart: the paper's largest is BP's 4,000
MAX_DRAWS = 100  # repeated draws or models per step (restarts, ensembles, EOT samples, UEraser's K): 8 at most


@dataclass(frozen=True)
class Param:
    """One option of an attack or a defense; the CLI flag is `--name-with-dashes` unless `cli_flag` says otherwise.

    `default`: a value; a `{family: value}` dict; or `callable(family, recipe) -> value`. `None` as a resolved
    default means "off" (the option takes a value only when given). `parse` turns the CLI's text into the value
    (lists such as `--schedule 5,15`); `choices` closes the set of strings; `minimum`/`maximum` bound numbers
    (inclusive), `positive` requires > 0. Non-scalar types (lists) are turned into their value by `parse`, from the
    CLI's text or from a value given in code."""

    name: str
    type: type
    default: Any
    help: str
    source: str = ""
    minimum: float | None = None
    maximum: float | None = None
    positive: bool = False
    below_maximum: bool = False  # `maximum` excluded: fractions in [0, 1)
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None
    cli_flag: str | None = None
    # the CLI value is a file that `from_file(path, family, results_root)` imports into the workspace, returning
    # the parameter's value; `file_placeholder` is a valid value to check every other input before that writes
    from_file: Callable[[str, str, Any], Any] | None = None
    file_placeholder: Any = None

    def default_for(self, family: str, recipe: Any = None) -> Any:
        if callable(self.default):
            return self.default(family, recipe)
        if isinstance(self.default, Mapping):
            return self.default[family]
        return self.default

    @property
    def flag(self) -> str:
        return self.cli_flag or "--" + self.name.replace("_", "-")

    @property
    def cli_type(self) -> type:
        """The type the CLI parses: the declared one for bool/int/float/str, else str (turned into the value by
        `parse`)."""
        return self.type if self.type in (bool, int, float, str) else str

    def range_text(self) -> str:
        """`> 0`, `>= 1`, `in (0, 1]`: the bounds as the error messages and the help show them."""
        if self.maximum is None:
            return "> 0" if self.positive else f">= {self.minimum:g}"
        low = "(0" if self.positive else (f"[{self.minimum:g}" if self.minimum is not None else "(-inf")
        return f"in {low}, {self.maximum:g}{')' if self.below_maximum else ']'}"

    def coerce(self, value: Any, owner: str) -> Any:
        """`value` checked and converted to this parameter's type (None: off, passed through). An empty string is
        refused: it never stands for the default (leave the option out for that)."""
        if value is None:
            return None
        if self.type is str and isinstance(value, str) and not value.strip():
            valid = f"valid choices: {', '.join(self.choices)}" if self.choices else "leave it out for its default"
            raise PoisonbenchError(f"{self.flag} of {owner} needs a value, got an empty one; {valid}")
        if self.parse is not None and (isinstance(value, str) or self.cli_type is str and self.type is not str):
            value = self.parse(value)
        if self.type is bool:
            if not isinstance(value, bool):
                raise PoisonbenchError(f"{self.flag} of {owner} is a switch (true or false), got {value!r}")
            return value
        if self.type in (int, float):
            return self._number(value, owner)
        if self.choices is not None and value not in self.choices:
            raise unknown_choice(f"{self.flag} value of {owner}", value, self.choices)
        return value

    def _number(self, value: Any, owner: str) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PoisonbenchError(f"{self.flag} of {owner} must be a number, got {value!r}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an int beyond any float (10**400)
            finite = False
        if not finite:
            raise PoisonbenchError(f"{self.flag} of {owner} must be a finite number, got {value}")
        if self.type is int:
            if isinstance(value, float) and not value.is_integer():
                raise PoisonbenchError(f"{self.flag} of {owner} must be an integer, got {value}")
            value = int(value)
        else:
            value = float(value)  # 1 and 1.0 are one configuration: one run id
        too_low = (self.positive and not value > 0) or (self.minimum is not None and value < self.minimum)
        too_high = self.maximum is not None and (value >= self.maximum if self.below_maximum else value > self.maximum)
        if too_low or too_high:
            raise PoisonbenchError(f"{self.flag} of {owner} must be {self.range_text()}, got {value:g}")
        return value


def resolve(params: Iterable[Param], given: Mapping[str, Any], family: str, recipe: Any, kind: str,
            name: str) -> tuple[dict[str, Any], frozenset[str]]:
    """(resolved parameters, names the caller set) for attack or defense `name`: every default for `family` /
    `recipe`, overridden by the `given` values that are not None, each checked and converted.

    An option the attack or defense does not declare is refused with the options it does take."""
    params = tuple(params)
    known = {p.name: p for p in params}
    set_by_caller = {k: v for k, v in given.items() if v is not None}
    unknown = sorted(k for k in set_by_caller if k not in known)
    if unknown:
        flag = "--" + unknown[0].replace("_", "-")
        raise inapplicable_option(flag, kind, name, [p.flag for p in params])
    owner = f"{kind} {name!r}"
    resolved = {}
    for p in params:
        value = set_by_caller[p.name] if p.name in set_by_caller else p.default_for(family, recipe)
        resolved[p.name] = p.coerce(value, owner)
    return resolved, frozenset(set_by_caller)


@dataclass(frozen=True)
class GeneratedOption:
    """One generated CLI option: its flag, the Python name Typer passes it under, and which entries declare it."""

    flag: str
    python_name: str
    owners: dict[str, Param]  # entry name -> its Param for this flag

    @property
    def cli_type(self) -> type:
        """The type every owner parses the flag as (`collect_options` refuses owners that disagree)."""
        return next(iter(self.owners.values())).cli_type


def subclass_with_params(base: type, texts: tuple[str, ...] = ()) -> Callable[[object], bool]:
    """Whether an entry is a subclass of `base` whose `PARAMS` is a tuple of `Param`s and whose class attributes
    `texts` (the one-line summary `--help-method` / `--help-attack` print) are strings: what a plugin's attack or
    defense must be (poisonbench.core.registry, "Plugins"). The CLI reads `PARAMS` and the summaries while it is
    built: they are read here, at load, so that one that raises leaves the plugin out with a warning instead of
    taking every command down."""

    def accepts(entry: object) -> bool:
        params = getattr(entry, "PARAMS", None)
        return (isinstance(entry, type) and issubclass(entry, base) and isinstance(params, tuple)
                and all(isinstance(p, Param) for p in params)
                and all(isinstance(getattr(entry, text, None), str) for text in texts))

    return accepts


def collect_options(registry: Registry, reserved: Iterable[str]) -> list[GeneratedOption]:
    """The options of every entry of `registry`, by flag, in registration order. A flag that collides with one of
    the command's own options (`reserved`: Python names), or two entries that give one flag different types, is a
    programming error, raised when the command is built (and so by every CLI test). A plugin's entry
    (poisonbench.core.registry) that would do either is taken out of the registry instead, with a one-line
    warning: the built-in entries come first, so the plugin is the one at fault."""
    reserved = set(reserved)
    by_flag: dict[str, dict[str, Param]] = {}
    for name in registry:
        params = registry.get(name).PARAMS
        clash = option_clash(registry, name, params, by_flag, reserved)
        if clash is not None and registry.plugin(name) is not None:
            registry.refuse(name, clash)
            continue
        if clash is not None:
            raise RuntimeError(clash)
        for param in params:
            by_flag.setdefault(param.flag, {})[name] = param
    return [GeneratedOption(flag, python_flag(flag), owners) for flag, owners in by_flag.items()]


def python_flag(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def option_clash(registry: Registry, name: str, params: tuple[Param, ...], by_flag: dict[str, dict[str, Param]],
                 reserved: set[str]) -> str | None:
    """Why entry `name`'s `params` cannot join the options of the entries before it (`by_flag`), or None."""
    for param in params:
        if python_flag(param.flag) in reserved:
            return (f"{registry.kind} option {param.flag} ({name}) collides with an option of the command itself; "
                    "give the Param a cli_flag")
        owners = by_flag.get(param.flag, {})
        if any(p.cli_type != param.cli_type for p in owners.values()):
            return f"{registry.kind}s {', '.join([*owners, name])} declare {param.flag} with different types"
    return None


def chosen_values(options: list[GeneratedOption], given: dict[str, Any], kind: str, name: str,
                  declared: tuple[Param, ...]) -> dict[str, Any]:
    """{param name: value} of the generated options the user gave, for entry `name`; a given flag that entry does
    not declare is refused (one line, with the flags it takes)."""
    values = {}
    for option in options:
        value = given.get(option.python_name)
        if value is None:
            continue
        if name not in option.owners:
            raise inapplicable_option(option.flag, kind, name, [p.flag for p in declared])
        values[option.owners[name].name] = value
    return values


def describe_default(param: Param, families: Iterable[str], recipe_of: Callable[[str], Any] | None = None) -> str:
    """The default for the help text: one value, or `mnist X / cifar10 Y` when the families differ."""
    values = {}
    for family in families:
        try:
            values[family] = param.default_for(family, recipe_of(family) if recipe_of else None)
        except (KeyError, TypeError, AttributeError):
            continue
    shown = {f: show_value(v) for f, v in values.items()}
    if not shown:
        return ""
    if len(set(shown.values())) == 1:
        return next(iter(shown.values()))
    return " / ".join(f"{v} ({f})" for f, v in shown.items())


def show_value(value: Any) -> str:
    """A parameter value as the help and docs/parameters.md show it (None and False: off)."""
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)
