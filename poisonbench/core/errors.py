"""Errors the CLI turns into a one-line message and exit code 2."""


class PoisonbenchError(Exception):
    """Bad input from the user (unknown name, value out of range, unreadable file).

    The message is one line that names the bad value and, where there is a closed set, the valid choices.
    """


class PoisonbenchWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one line)."""


def unknown_choice(kind: str, value: object, choices) -> PoisonbenchError:
    """The standard error for a name that is not in a registry or a closed set."""
    return PoisonbenchError(f"unknown {kind} {value!r}; valid choices: {', '.join(map(str, choices))}")


def inapplicable_option(option: str, kind: str, name: str, flags: list[str]) -> PoisonbenchError:
    """An option the attack or method `name` does not take, with the options it does take."""
    valid = "its options: " + ", ".join(flags) if flags else "it takes none"
    return PoisonbenchError(f"option {option} does not apply to {kind} {name!r}; {valid}")
