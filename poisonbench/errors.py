"""Errors the CLI turns into a one-line message and exit code 2."""


class PoisonbenchError(Exception):
    """Bad input from the user (unknown name, value out of range, unreadable file).

    The message is one line that names the bad value and, where there is a closed set, the valid choices.
    """


def unknown_choice(kind: str, value: object, choices) -> PoisonbenchError:
    """The standard error for a name that is not in a registry or a closed set."""
    return PoisonbenchError(f"unknown {kind} {value!r}; valid choices: {', '.join(map(str, choices))}")
