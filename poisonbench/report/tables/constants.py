"""Table numbers, grids, paper defaults and captions shared by the table builders."""

from __future__ import annotations

TABLES = ("2", "3", "4", "5")
ROMAN = {"2": "II", "3": "III", "4": "IV", "5": "V"}
FORMATS = ("rich", "md", "latex", "csv", "json")
RHOS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PAPER_METHODS = ("none", "hint", "atda", "friends", "epic")
R_GRID = (0.25, 0.5, 0.75, 1.0)
BETA_GRID = (0.031, 0.062, 0.125, 0.251)
HINT_PAPER = {"ratio": 0.5, "beta": 0.062}  # Table II's HINT (paper §VI-A3)
ATTACKS = ("gm", "mp", "bp", "fc")
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
