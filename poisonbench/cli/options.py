"""Options shared by several commands, made from `defend`'s option table (poisonbench.experiment.options): one
definition each."""

from __future__ import annotations

import inspect

import typer

from ..experiment.options import OPTIONS, DefendOption
from .summaries import CONTEXT_SETTINGS  # noqa: F401 (the groups' settings, read from here by the command modules)


def typer_option(option: DefendOption, help_text: str | None = None, panel: str | None = None):
    """`option` as a `typer.Option` (its default, flags, help, metavar and environment variable), in help panel
    `panel` (None: the command's `Options`)."""
    return typer.Option(option.default, option.flags, help=help_text or option.help, metavar=option.metavar,
                        envvar=option.envvar, show_default=option.show_default, rich_help_panel=panel)


def typer_parameter(option: DefendOption, help_text: str | None = None,
                    panel: str | None = None) -> inspect.Parameter:
    """`option` as a keyword-only parameter of a generated command (poisonbench.cli.generated.with_options)."""
    annotation = option.type if option.default is not None else option.type | None
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
