"""BP's and FC's crafting iterations under forest's implementation: the paper's counts where the recipe is the
paper's, forest's default (a documented lower count, docs/fidelity.md) under the CPU recipes.

Paper §VI-A2 crafts BP for 4,000 iterations and FC for 1,000; forest's brew defaults to 250 (`--attackiter 250`).
An unset `iterations` of `--impl forest` resolves from the surrogate's recipe (the victim's, under `defend`): the
paper's count under `paper`, 250 under `quick` and `forest` (the MNIST-family CPU settings). The resolved value is
in the params, so it is part of the PoisonSet's identity.
"""

from __future__ import annotations

from dataclasses import replace

from ..core.params import Param
from .forest import FOREST_DEFAULTS

PAPER_RECIPE = "paper"
CPU_ITERATIONS = FOREST_DEFAULTS["iterations"]  # forest --attackiter 250


def with_iterations_param(params: tuple[Param, ...], paper: int, name: str, toxic: str) -> tuple[Param, ...]:
    """`params` with the brew's `iterations` option saying where its recipe-dependent default comes from."""
    out = []
    for p in params:
        if p.name == "iterations":
            p = replace(p, help=f"Optimisation steps (per restart). Unset: --impl forest: {paper:,} under the paper "
                                f"recipe (paper §VI-A2), {CPU_ITERATIONS} under the CPU recipes (quick, forest); "
                                f"--impl toxic: {toxic}.",
                        source=f"paper §VI-A2: {name} {paper:,} iterations; forest --attackiter {CPU_ITERATIONS} "
                               "(CPU recipes, docs/fidelity.md)")
        out.append(p)
    return tuple(out)


def settle_iterations(attack, given: dict, paper: int) -> None:
    """Fill `iterations` of `--impl forest` left unset from the surrogate's recipe."""
    p = attack.params
    if p.get("impl") == "forest" and given.get("iterations") is None:
        p["iterations"] = paper if p.get("surrogate_recipe") == PAPER_RECIPE else CPU_ITERATIONS
