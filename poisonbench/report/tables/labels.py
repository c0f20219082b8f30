"""How the tables name things: ρ values, parameter values, methods."""

from __future__ import annotations

from .. import paper


def rho_text(rho: float) -> str:
    return f"{rho:.1f}" if abs(rho * 10 - round(rho * 10)) < 1e-9 else f"{rho:g}"


def value_text(v: float) -> str:
    """A parameter value as the paper prints it: 0.25, 0.5, 1.0, 0.031."""
    text = f"{v:g}"
    return text if "." in text or "e" in text else f"{text}.0"


def method_label(m: str) -> str:
    return paper.METHOD_LABEL.get(m, m)
