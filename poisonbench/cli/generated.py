"""CLI options generated from the registries' `PARAMS` (poisonbench.core.params), so that adding an attack or a defense
touches no file in `cli/`: `craft` gets one option per attack parameter, `defend` one per defense parameter.

Options of several entries that share a flag (`--steps` of pgd and dap) become one option whose help lists each
entry's text and default. The values a user gave are handed to the chosen entry only; a flag it does not declare
is refused with the flags it does take.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import typer

from ..core.params import GeneratedOption, Param, describe_default
from ..data.types import FAMILIES


def option_help(option: GeneratedOption, recipe_of: Callable[[str], Any] | None = None) -> str:
    """`pgd, dap: PGD steps. Default 40 (mnist) / 10 (cifar10).` — entries with the same text share a sentence."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for name, param in option.owners.items():
        default = "" if param.from_file is not None else describe_default(param, FAMILIES, recipe_of)
        groups.setdefault((param.help, default, bound_text(param)), []).append(name)
    parts = []
    for (text, default, bound), names in groups.items():
        told = "; ".join(t for t in (f"Default: {default}" if default else "", bound) if t)
        parts.append(f"{', '.join(names)}: {text}" + (f" {told[0].upper()}{told[1:]}." if told else ""))
    return " ".join(parts)


def typer_parameters(options: list[GeneratedOption],
                     recipe_of: Callable[[str], Any] | None = None) -> list[inspect.Parameter]:
    """Keyword-only parameters with `typer.Option` defaults (None: not given), for `with_options`. Each is hidden
    from the command's plain `--help` and shown, in a panel of its entries (`hint options`), by the command's
    per-entry help option (`entry_help_parameter`)."""
    out = []
    for option in options:
        cli_type = option.cli_type
        flags = f"{option.flag}/--no-{option.flag[2:]}" if cli_type is bool else option.flag
        default = typer.Option(None, flags, help=option_help(option, recipe_of), hidden=True,
                               rich_help_panel=panel_name(option.owners))
        out.append(inspect.Parameter(option.python_name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                     annotation=cli_type | None))
    return out


ENTRY_HELP = "help_entry"  # the Python name of `--help-method` / `--help-attack` (never handed to the command)


def panel_name(owners: Iterable[str]) -> str:
    """The help panel of an option: its entries' names (`pgd, dap options` for a flag both declare)."""
    return f"{', '.join(owners)} options"


def entry_help_parameter(flag: str, kind: str, summaries: dict[str, str],
                         options: list[GeneratedOption]) -> inspect.Parameter:
    """An eager `flag NAME` option (`--help-method hint`) that prints the command's help with only entry NAME's
    generated options, in their own panel (`all`: every entry's, a panel each), then its one-line summary
    (`summaries`, by entry name), and exits; the plain `--help` stays short. An unknown NAME is a usage error
    naming the valid choices."""
    owners = {option.python_name: list(option.owners) for option in options}
    choices = [*summaries, "all"]

    def show(ctx: typer.Context, name: str | None) -> None:
        if name is None or ctx.resilient_parsing:
            return
        if name not in choices:
            raise typer.BadParameter(f"unknown {kind} {name!r}; valid choices: {', '.join(choices)}")
        for param in ctx.command.params:
            if param.name in owners:
                param.hidden = not (name == "all" or name in owners[param.name])
            elif param.name != ENTRY_HELP and not getattr(param, "is_eager", False):
                param.hidden = True  # the shared options: `--help` lists them
        text = ctx.get_help()  # rich help is printed by get_help itself (returns ''); plain click returns it
        if text:
            typer.echo(text)
        for entry, summary in summaries.items():
            if name in (entry, "all"):
                own = any(entry in names for names in owners.values())
                typer.echo(f"{entry}: {summary}" + ("" if own else " (no options of its own)"))
        typer.echo(f"The options every {kind} shares: {ctx.command_path} --help.")
        raise typer.Exit()

    return inspect.Parameter(ENTRY_HELP, inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                             default=typer.Option(None, flag, is_eager=True, expose_value=False, callback=show,
                                                  metavar="NAME",
                                                  help=f"Show one {kind}'s options ({', '.join(choices)}; all: "
                                                       f"every {kind}'s, a panel each) and exit."))


def with_options(func: Callable, extra: list[inspect.Parameter], defaults: dict[str, Any] | None = None) -> Callable:
    """`func` (which takes its generated options as `**kwargs`) as a Typer command whose signature lists its own
    options followed by `extra`; `defaults` replaces some of its own options' `typer.Option`s (e.g. a help text
    that lists a registry's names as they are when the command is built)."""
    signature = inspect.signature(func, eval_str=True)
    own = [p.replace(default=(defaults or {}).get(p.name, p.default)) for p in signature.parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]

    def command(**kwargs):
        kwargs.pop(ENTRY_HELP, None)  # `--help-method`: eager, handled before the command runs (typer passes None)
        return func(**kwargs)

    parameters = own + extra
    command.__signature__ = signature.replace(parameters=parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    command.__name__, command.__doc__ = func.__name__, func.__doc__
    return command


def bound_text(param: Param) -> str:
    """`at most 1,000` for an integer parameter with an upper bound (the counts that size memory or time), else
    nothing: the help states the limit the value is checked against."""
    if param.type is not int or param.maximum is None:
        return ""
    return f"at most {param.maximum:,.0f}"
