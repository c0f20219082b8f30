"""Rich consoles shared by the library's renderers and the CLI."""

from __future__ import annotations

import os

from rich.console import Console


def stdout_console() -> Console:
    """Console for result tables: the terminal's width, or when piped the width `COLUMNS` names, else 160 columns
    (rich would use 80 and squeeze the tables into unreadable columns in logs and CI output)."""
    console = Console()
    columns = os.environ.get("COLUMNS", "").strip()
    if console.is_terminal or (columns.isdigit() and int(columns) > 0):
        return console
    return Console(width=160)
