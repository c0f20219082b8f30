"""Options shared by several commands, made from `defend`'s option table (poisonbench.experiment.options): one
definition each."""

from __future__ import annotations

import inspect
from typing import Any

import typer

from ..experiment.options import MAY_BE_EMPTY, OPTIONS, DefendOption, refuse_empty, what_it_takes
from .summaries import CONTEXT_SETTINGS  # noqa: F401 (the groups' settings, read from here by the command modules)


def typer_option(option: DefendOption, help_text: str | None = None, panel: str | None = None):
    """`option` as a `typer.Option` (its default, flags, help, metavar and environment variable), in help panel
    `panel` (None: the command's `Options`)."""
    return typer.Option(option.default, option.flags, help=help_text or option.help, metavar=option.metavar,
                        envvar=option.envvar, show_default=option.show_default, rich_help_panel=panel)


def typer_parameter(option: DefendOption, help_text: str | None = None,
                    panel: str | None = None) -> inspect.Parameter:
    """`option` as a keyword-only parameter of a generated command (poisonbench.cli.generated.with_options)."""
    # a repeatable option (`--attack-params a=1 --attack-params b=2`) is a list, which the spec reads as the one
    # comma-joined text (`a=1,b=2`; experiment.options.as_text), where a name given twice is refused; every other
    # option keeps click's rule, the last given wins (docs/commands.md, "Repeated options")
    kind = list[option.type] if option.repeatable else option.type
    annotation = kind if option.default is not None else kind | None
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY,
                             default=typer_option(option, help_text, panel), annotation=annotation)


Dataset = typer_option(OPTIONS["dataset"])
DataDir = typer_option(OPTIONS["data_dir"])
NpzSplit = typer_option(OPTIONS["npz_split"])
Download = typer_option(OPTIONS["download"])
Results = typer_option(OPTIONS["results"])
Device = typer_option(OPTIONS["device"])
Seed = typer_option(OPTIONS["seed"])
Accel = typer_option(OPTIONS["accel"])
Deterministic = typer_option(OPTIONS["deterministic"])
Target = typer_option(OPTIONS["target"])
Intended = typer_option(OPTIONS["intended"])
Setup = typer_option(OPTIONS["setup"])
SetupIndex = typer_option(OPTIONS["setup_index"])
JSON_HELP = "Print machine-readable JSON on stdout (progress goes to stderr)."
Json = typer.Option(False, "--json", help=JSON_HELP)


def refuse_empty_values(command: Any) -> Any:
    """`command` (a click command or group, as typer builds it) with every option and argument of it and of its
    subcommands refusing an empty value (`--out ''`, `records pack '' OUT`, `--emit-sbatch ''`, or only spaces) as it
    is parsed, in one line (experiment.options.refuse_empty): an empty value, an unset shell variable's, never stands
    for the default. The one place that does it, for every command (cli.main.load_command, and the report group
    `sweep` runs); the exceptions are experiment.options.MAY_BE_EMPTY (`--milestones ''`: no decay; `--results ''`,
    refused by core.workspace with its own message). Returns `command`."""
    for param in getattr(command, "params", []):
        if param.name not in MAY_BE_EMPTY and not getattr(param, "_refuses_empty", False):
            param.callback = _refusing(param.callback)
            param._refuses_empty = True
    for sub in getattr(command, "commands", {}).values():
        refuse_empty_values(sub)
    return command


def _refusing(callback):
    """A parameter callback that refuses an empty value (or an empty item of a repeated option), then runs
    `callback`."""

    def check(ctx, param, value):
        is_option = param.param_type_name == "option"
        flag = param.opts[0] if is_option else (param.metavar or param.name.upper())
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, str) and not item.strip():
                source = getattr(ctx.get_parameter_source(param.name), "name", "")
                envvar = getattr(param, "envvar", None)
                shown = f"{flag} (from ${envvar})" if source == "ENVIRONMENT" and isinstance(envvar, str) else flag
                takes = what_it_takes(flag, f"give {param.metavar}" if param.metavar else "give a value")
                refuse_empty(shown, item, takes, optional=is_option)
        return value if callback is None else callback(ctx, param, value)

    return check
