"""`poisonbench figure ...`: figures drawn from run records."""

from __future__ import annotations

import typer
from rich.console import Console

from .. import figures
from ..errors import PoisonbenchError
from ..records import RunStore
from . import options

HELP = "Draw figures from run records (e.g. `figure noise --run RUN_ID`, the paper's Fig. 1)."

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("noise", help="Paper Fig. 1 for a HINT run: original image, healthy noise (scaled to [0, 1]) and "
                           "perturbed image with the model's prediction and probability, for the clean and "
                           "poisoned selected examples stored in the record.")
def noise(
    run: str = typer.Option(..., "--run", help="Run id (the record's file name without .json)."),
    results: str = options.Results,
    out: str = typer.Option(None, "--out", help="PNG path (default <results>/figures/noise_<run>.png)."),
) -> None:
    store = RunStore(results)
    record = store.get(run)
    if record is None:
        raise PoisonbenchError(f"no complete record for run {run!r} under {store.runs}")
    path = figures.noise_figure(record, out or store.root / "figures" / f"noise_{run}.png")
    Console(stderr=True).print(f"wrote {path}")
    print(path)
