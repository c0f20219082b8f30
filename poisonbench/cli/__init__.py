"""The command-line interface (Typer + rich): parses, validates, calls the library."""
