"""The parameter reference (`docs/parameters.md`): every built-in attack's and defense's options, generated from the
registries' `PARAMS` (poisonbench.core.params), so the page a user reads is the one the CLI parses: flag, type,
default per family, the values it accepts, what it does and the paper or official code its default comes from.

    python -m poisonbench.report.parameters > docs/parameters.md

`tests/test_parameter_reference.py` fails when the page and the registries differ (a default, a bound, a choice, a
help text or a source changed without the page): regenerate it and review the diff.
"""

from __future__ import annotations

from typing import Any

from ..attacks import ATTACKS
from ..core.params import Param, describe_default, show_value
from ..data.types import FAMILIES
from ..defenses import DEFENSES

HEADER = """# Parameters of every attack and defense

Generated from the registries by `python -m poisonbench.report.parameters > docs/parameters.md`; do not edit by
hand (`tests/test_parameter_reference.py` checks it is current). Give an attack's options to `poisonbench craft
--attack NAME` (or `defend --attack-params key=value,...`) and a defense's to `poisonbench defend --method NAME`
(or `--defense-params`). Defaults per dataset family (`mnist`: mnist-5k, MNIST, Fashion-MNIST; `cifar10`); "off":
the option is unset unless given; "set by the recipe": derived from the training recipe of the run.
"""


def default_text(param: Param) -> str:
    """One value, `X (mnist) / Y (cifar10)` when the families differ (as `--help` says it), or "set by the recipe"."""
    return describe_default(param, FAMILIES) or "set by the recipe"


def accepted_text(param: Param) -> str:
    """The values the option accepts: its choices, or its bounds (inclusive unless said)."""
    if param.choices:
        return " \\| ".join(param.choices)
    parts = []
    if param.positive:
        parts.append("> 0")
    if param.minimum is not None:
        parts.append(f"≥ {show_value(param.minimum)}")
    if param.maximum is not None:
        parts.append(f"{'<' if param.below_maximum else '≤'} {show_value(param.maximum)}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section(kind: str, name: str, entry: Any) -> str:
    about = getattr(entry, "summary", None)
    if not isinstance(about, str):  # a defense's `summary` is its run summary: its docstring's first line instead
        about = (entry.__doc__ or "").strip().split("\n\n")[0]
    lines = [f"### {kind} `{name}`", "", _cell(" ".join(about.split())), ""]
    params = getattr(entry, "PARAMS", ())
    if not params:
        return "\n".join([*lines, "No options.", ""])
    lines += ["| option | type | default | accepts | what | default's source |", "|---|---|---|---|---|---|"]
    for p in params:
        lines.append(f"| `{p.flag}` | {getattr(p.type, '__name__', str(p.type))} | {_cell(default_text(p))} | "
                     f"{_cell(accepted_text(p))} | {_cell(p.help)} | {_cell(p.source)} |")
    return "\n".join([*lines, ""])


def parameter_reference() -> str:
    """The whole page (Markdown), attacks then defenses, in the registries' order."""
    parts = [HEADER, "## Attacks", ""]
    parts += [section("attack", n, e) for n, e in ATTACKS.builtins().items()]
    parts += ["## Defenses", ""]
    parts += [section("defense", n, e) for n, e in DEFENSES.builtins().items()]
    return "\n".join(parts).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(parameter_reference(), end="")
