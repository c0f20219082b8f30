"""Entry point: `poisonbench` (console script). Turns every usage error into one line and exit code 2."""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from .. import __version__
from ..core.errors import PoisonbenchError, PoisonbenchWarning
from ..core.printable import printable
from ..engine import termination
from .summaries import COMMAND_HELP, CONTEXT_SETTINGS

# Each command: (its module under poisonbench.cli, the module's attribute, what that attribute is): "build command" —
# a function that builds the Typer command (craft, defend: options generated from the registries), "command" — the
# command's function, "build group" — a function that builds a Typer group, "group" — a module-level Typer group.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "defend": ("defend", "command", "build command"),
    "report": ("report", "group", "build group"),
    "data": ("data", "app", "group"),
    "craft": ("craft", "command", "build command"),
    "poisons": ("poisons", "app", "group"),
    "sweep": ("sweep", "app", "group"),
    "records": ("records", "app", "group"),
    "env": ("env", "command", "command"),
}


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print poisonbench's version and exit.")) -> None:
    """The options of `poisonbench` itself (before the command). Runs once a command is chosen, before it parses its
    own options, so `--help` and `--version` never import torch."""
    from ..core.provenance import check_torch_version

    check_torch_version()  # an older torch than the tested one (a GPU machine's own): one line, once


def load_command(name: str) -> Any:
    """The command `name` as its module builds it, importing the module (and with it torch and the registries): a
    Typer app holding only that command, turned into click (which typer vendors in recent releases), gives it
    with the same options, panels and help it has under the full tree; an empty value of any of its options or
    arguments is refused as it is parsed (cli.options.refuse_empty_values)."""
    module_name, attribute, what = COMMANDS[name]
    given = getattr(importlib.import_module(f"{__package__}.{module_name}"), attribute)
    holder = typer.Typer(add_completion=False, context_settings=CONTEXT_SETTINGS)
    holder.callback()(lambda: None)
    if what.endswith("command"):
        holder.command(name, help=COMMAND_HELP[name])(given() if what == "build command" else given)
    else:
        holder.add_typer(given() if what == "build group" else given, name=name, help=COMMAND_HELP[name])
    from .options import refuse_empty_values

    return refuse_empty_values(typer.main.get_command(holder).commands[name])


class LazyGroup(TyperGroup):
    """The root group: lists the commands from poisonbench.cli.summaries and imports a command's module only when
    it is chosen, so `poisonbench --help`, `-h`, a bare `poisonbench` and `--version` import no torch. While the
    group's own help is written it hands out stand-ins that carry only the name and help text."""

    listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        if self.listing:
            return TyperCommand(cmd_name, help=COMMAND_HELP[cmd_name])
        return load_command(cmd_name)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self.listing = False


def build_app() -> typer.Typer:
    """The command tree. Built anew for every `main` call: `craft` and `defend` list the options of the attacks and
    defenses registered at the moment they are loaded (poisonbench.cli.generated); a command's module is imported
    only when that command is chosen (LazyGroup)."""
    app = typer.Typer(
        name="poisonbench",
        cls=LazyGroup,
        help="Benchmark data-poisoning attacks against training-time defenses (reproduces the HINT paper).",
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings=CONTEXT_SETTINGS,  # -h beside --help
    )
    app.callback()(_root)
    return app


def given_value(exc: Exception, argv: list[str] | None) -> str:
    """` (got 'VALUE')` for an option whose value failed Typer's type conversion, when its message (pydantic's
    "Input should be a valid integer", for one) does not name the value; else ''."""
    opts = getattr(getattr(exc, "param", None), "opts", None) or []
    args = sys.argv[1:] if argv is None else argv
    for i, token in reversed(list(enumerate(args))):  # click keeps the last of a repeated option
        for opt in opts:
            if token.startswith(opt + "="):
                value = token[len(opt) + 1:]
            elif token == opt and i + 1 < len(args):
                value = args[i + 1]
            else:
                continue
            return "" if repr(value) in exc.format_message() else f" (got {value!r})"
    return ""


def main(argv: list[str] | None = None) -> None:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    show = warnings.showwarning

    def one_line(message, category, *args, **kwargs) -> None:
        if issubclass(category, PoisonbenchWarning):
            err.print(printable(f"Warning: {message}", newlines=True), markup=False)
        else:
            show(message, category, *args, **kwargs)

    installed = termination.install()  # SIGTERM: finish the epoch in progress, save it, exit 143
    try:
        with warnings.catch_warnings():  # restores the hook for in-process callers (tests, notebooks)
            warnings.showwarning = one_line
            _run(typer.main.get_command(build_app()), argv, err)
    finally:
        if installed:  # in-process callers get their own SIGTERM handling back
            termination.reset()


def _run(command, argv: list[str] | None, err: Console) -> None:
    try:
        code = command.main(args=argv, prog_name="poisonbench", standalone_mode=False)
        if isinstance(code, int) and code:  # a command's `typer.Exit(n)`: click returns n here instead of exiting
            sys.exit(code)
    except PoisonbenchError as exc:
        err.print(printable(f"Error: {exc}", newlines=True), markup=False)  # it may quote a record or a file name
        sys.exit(2)
    except termination.Terminated as exc:  # not an error: what was done is saved, re-running continues
        err.print(f"Terminated: {exc}", markup=False)
        sys.exit(termination.EXIT_CODE)
    except Exception as exc:
        # Typer vendors click (typer._click) in recent releases and uses click itself in older ones, so the
        # exception classes are recognised by their shape: usage errors carry exit_code 2 and a message.
        kind = type(exc).__name__
        if kind == "Exit":
            sys.exit(exc.exit_code)
        if getattr(exc, "exit_code", None) == 2 and hasattr(exc, "format_message"):
            message = exc.format_message()
            group = getattr(getattr(exc, "ctx", None), "command", None)
            if message.startswith("No such command") and hasattr(group, "list_commands"):
                message += f" Valid choices: {', '.join(group.list_commands(exc.ctx))}."
            if message:  # click's "no arguments: here is the help" (a bare group) has printed the help; no message
                err.print(printable(f"Error: {message}{given_value(exc, argv)}", newlines=True), markup=False)
            sys.exit(2)
        if kind == "Abort":
            err.print("Aborted.", markup=False)
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
