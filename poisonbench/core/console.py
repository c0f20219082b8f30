"""Rich consoles shared by the library's renderers and the CLI."""

from __future__ import annotations

from rich.console import Console


def stdout_console() -> Console:
    """Console for result tables: the terminal's width, or 160 columns when piped (rich would use 80 and
    squeeze the tables into unreadable columns in logs and CI output)."""
    console = Console()
    return console if console.is_terminal else Console(width=160)
