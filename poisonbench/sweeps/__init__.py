"""Sweeps (docs/sweeps.md): grids of `defend` runs, planned into steps and executed locally or on SLURM."""

from .grid import Grid, Run, builtin_grids, load_grid
from .plan import Execution, Plan, Step, make_plan

__all__ = ["Execution", "Grid", "Plan", "Run", "Step", "builtin_grids", "load_grid", "make_plan"]
