"""Entry point: `poisonbench` (console script). Turns every usage error into one line and exit code 2."""

from __future__ import annotations

import sys
import warnings

import typer
from rich.console import Console

from .. import __version__
from ..core.errors import PoisonbenchError, PoisonbenchWarning
from ..core.printable import printable
from ..core.provenance import check_torch_version
from ..engine import termination
from . import craft as craft_cmd
from . import data as data_cmd
from . import defend as defend_cmd
from . import env as env_cmd
from . import options
from . import poisons as poisons_cmd
from . import records as records_cmd
from . import report as report_cmd
from . import sweep as sweep_cmd


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print poisonbench's version and exit.")) -> None:
    """The options of `poisonbench` itself (before the command)."""


def build_app() -> typer.Typer:
    """The command tree. Built anew for every `main` call: `craft` and `defend` list the options of the attacks and
    defenses registered at that moment (poisonbench.cli.generated)."""
    app = typer.Typer(
        name="poisonbench",
        help="Benchmark data-poisoning attacks against training-time defenses (reproduces the HINT paper).",
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings=options.CONTEXT_SETTINGS,  # -h beside --help
    )
    app.callback()(_root)
    app.command("defend", help=defend_cmd.HELP)(defend_cmd.command())
    app.add_typer(report_cmd.group(), name="report", help=report_cmd.HELP)
    app.add_typer(data_cmd.app, name="data", help=data_cmd.HELP)
    app.command("craft", help=craft_cmd.HELP)(craft_cmd.command())
    app.add_typer(poisons_cmd.app, name="poisons", help=poisons_cmd.HELP)
    app.add_typer(sweep_cmd.app, name="sweep", help=sweep_cmd.HELP)
    app.add_typer(records_cmd.app, name="records", help=records_cmd.HELP)
    app.command("env", help=env_cmd.HELP)(env_cmd.command)
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
            check_torch_version()  # an older torch than the tested one (a GPU machine's own): one line, once
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
            err.print(printable(f"Error: {message}{given_value(exc, argv)}", newlines=True), markup=False)
            sys.exit(2)
        if kind == "Abort":
            err.print("Aborted.", markup=False)
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
