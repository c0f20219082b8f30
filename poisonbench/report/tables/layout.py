"""What the paper's Tables II–V are made of: the table numbers and output formats, the ρ / r / β grids, the paper's
methods, attack mix and HINT setting, the captions, how a table names ρ, parameter values and methods, and the
table model a builder fills (`Options`, `Cell`, `Block`, `Table`) for `render` to print."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import paper

# --- table numbers, grids, paper defaults and captions --------------------------------------------------------

TABLES = ("2", "3", "4", "5")
MATRIX = "matrix"  # `--table matrix`: every defense against every attack (tables/matrix.py), not a paper table
ROMAN = {"2": "II", "3": "III", "4": "IV", "5": "V"}
FORMATS = ("rich", "md", "latex", "csv", "json")
RHOS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PAPER_METHODS = ("none", "hint", "atda", "friends", "epic")
R_GRID = (0.25, 0.5, 0.75, 1.0)
BETA_GRID = (0.031, 0.062, 0.125, 0.251)
HINT_PAPER = {"ratio": 0.5, "beta": 0.062}  # Table II's HINT (paper §VI-A3)
ATTACKS = ("gm", "mp", "bp", "fc")  # the paper's Table III columns; FC's per-poison objective `fc-pp` follows
SENSITIVITY_RHO = 0.6  # Table IV; also Table V's default
TOL = 1e-3  # parameter matching: 16/255 = 0.0627 counts as β = 0.062; grid values are ≥ 0.03 apart
DASH = "–"
# Table II's untargeted mix (paper §VI-A2): the default `--attacks` of `report`, and of `defend`
PAPER_MIX = "pgd,dap,durp,deepconfuse"
CAPTIONS = {
    "2": "Test accuracy (%) defending against the untargeted mix (PGD+DAP+DURP+DC) at poison ratio ρ; HINT r = 0.5, "
         "β = 0.062",
    "3": "Attack success (k/n trials) and test accuracy (%) against targeted attacks",
    "4": "Sensitivity of HINT to r (β = 0.062) and β (r = 0.5) under the untargeted mix, test accuracy (%)",
    "5": "Execution time of the defenses (s): training incl. the defense's own work, and the ratio to no defense",
}


# --- how the tables name things: ρ values, parameter values, methods ------------------------------------------

def rho_text(rho: float) -> str:
    return f"{rho:.1f}" if abs(rho * 10 - round(rho * 10)) < 1e-9 else f"{rho:g}"


def value_text(v: float) -> str:
    """A parameter value as the paper prints it: 0.25, 0.5, 1.0, 0.031."""
    text = f"{v:g}"
    return text if "." in text or "e" in text else f"{text}.0"


def upper_bound(m: str) -> bool:
    """Whether method `m` is an upper bound, not a defense: its class sees the poison mask before training
    (`Defense.sees_poison_mask`: the oracle). Such a method is labelled so and never ranked (`Cell.ranked`)."""
    from ...defenses import DEFENSES

    return m in DEFENSES and DEFENSES.get(m).sees_poison_mask


def method_label(m: str) -> str:
    label = paper.METHOD_LABEL.get(m, m)
    return f"{label} (upper bound)" if upper_bound(m) else label


# --- the table model (a list of blocks, each a grid of cells) and the options it is built with ----------------

@dataclass
class Cell:
    text: str = DASH
    value: float | None = None  # compared for "best" (already rounded as displayed)
    best: bool = False
    label: bool = False  # a row-label cell (left-aligned)
    ranked: bool = True  # False: an upper bound's cell (the oracle), never compared for "best" (`mark_best`)


@dataclass
class Block:
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    rules: set[int] = field(default_factory=set)  # row indices preceded by a horizontal rule
    notes: list[str] = field(default_factory=list)


@dataclass
class Table:
    number: str
    caption: str
    blocks: list[Block]
    data: list[dict]  # tidy rows (csv / json)
    notes: list[str] = field(default_factory=list)
    shown: set[str] = field(default_factory=set)  # run ids behind the cells (for notes on the runs shown)
    mixed: list[str] = field(default_factory=list)  # cells whose runs trained on two crafts (tables.provenance)

    @property
    def empty(self) -> bool:
        return not self.blocks

    @property
    def title(self) -> str:
        if self.number == MATRIX:
            return "Defense × attack matrix"
        if self.number == "backdoor":
            return "Backdoor attacks"
        return f"Table {ROMAN.get(self.number, self.number)}"


@dataclass
class Options:
    trials: int = 5
    paper: bool = False
    diff: bool = False
    ci: bool = False
    wilson: bool = True  # III: each k/n with its 95 % Wilson interval (`report --no-wilson`: k/n alone)
    rho: float | None = None  # II: only this row; IV/V: the ρ of the runs (default 0.6)
    paired: bool = False  # II: add each defense's per-trial difference to `none` (same seed, poisons, order)
    versus: str | None = None  # III: pair every row with this row (a method or a row's label) instead of `none`
    poison_ratio: float | None = None  # matrix: the ρ of the untargeted runs (default 1.0)
    attacks: tuple[str, ...] = ()  # matrix: only these attack columns, in this order (default: every attack run)
