"""`poisonbench report`: aggregate run records. One command, four modes, each its own function below:
`show_plain` (a per-configuration summary, no --table / --figure), `show_table` (the paper's Tables II–V,
`--table N`), `show_missing` (what is missing to complete a table, `--table N --missing`) and `draw_figures`
(Figures 1–4 and accuracy vs ρ, `--figure N`). `report` checks the options and picks the mode."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..core.errors import PoisonbenchError, unknown_choice
from ..data import DEFAULT_DATASET, record_name
from ..experiment.packed_records import SUFFIX, is_packed, open_store
from ..experiment.records import RecordReader
from ..report import aggregate as lib
from . import options
from .progress import stdout_console

HELP = ("Aggregate the run records: test accuracy mean ± sample std over trials per configuration, or the "
        "paper's Tables II–V (--table N, --paper, --diff, --missing) and Figures 1–4 and rho (--figure N --out DIR). "
        "A record file that cannot be trusted is skipped and named on stderr, with why (exit status still 0). "
        "--results may name a packed file (`poisonbench records pack`) instead of a workspace.")

Results = typer.Option(None, "--results", envvar="POISONBENCH_RESULTS", show_default=False,
                       help=f"Results workspace (default ./results), or a packed records file (FILE{SUFFIX}, made "
                            "by `poisonbench records pack`), read as is. Env: POISONBENCH_RESULTS.")

FIGURE_NEEDS = {
    "1": "HINT runs whose record keeps healthy-noise examples (record.defense.examples)",
    "2": "untargeted or clean runs with metrics.sample_predictions",
    "3": "targeted MP runs (config.poison.kind = targeted, attack = mp)",
    "4": "targeted BP runs (config.poison.kind = targeted, attack = bp)",
    "rho": "untargeted or clean runs",
}


def _methods(text: str | None) -> list[str] | None:
    return [m.strip() for m in text.split(",") if m.strip()] if text else None


def note(text: str) -> None:
    """A line for the reader on stderr (stdout stays the table, the commands or the paths)."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(text, markup=False)


def check_filters(dataset: str | None, methods: list[str] | None, recipe: str | None, model: str | None,
                  epochs: int | None, attacks: str | None) -> None:
    """A filter naming something that cannot exist is a typo, not an empty selection: refuse it."""
    from ..data import DATASETS, dataset_names
    from ..defenses import DEFENSES
    from ..engine.models import MODELS
    from ..engine.recipes import recipe_names
    from ..experiment.scenarios import check_attacks
    from ..report.tables import PAPER_METHODS

    if dataset is not None and dataset not in DATASETS and not dataset.endswith(".npz"):
        raise unknown_choice("dataset", dataset, dataset_names())
    known_methods = sorted(set(DEFENSES.names()) | set(PAPER_METHODS))
    for m in methods or []:
        if m not in known_methods:
            raise unknown_choice("method", m, known_methods)
    if recipe is not None and recipe not in recipe_names():
        raise unknown_choice("recipe", recipe, recipe_names())
    if model is not None:
        MODELS.get(model)
    if epochs is not None and epochs <= 0:
        raise PoisonbenchError(f"--epochs must be a positive integer, got {epochs}")
    if attacks and attacks != "any":
        check_attacks(attacks.split(","))  # the check `defend --attacks` gets


def check_arguments(*, table: str | None, figure: str | None, fmt: str, missing: bool, per_trial: bool,
                    poisons: str | None, trials: int, paper: bool, diff: bool, ci: bool, wilson: bool | None,
                    paired: bool,
                    rho: float | None, out: str | None, run: str | None, trial: int | None, dataset: str | None,
                    method: str | None, recipe: str | None, model: str | None, epochs: int | None,
                    attacks: str | None, **_elsewhere) -> tuple[list[str] | None, str | None, str | None]:
    """Every check `report` makes on its options before it reads a record, in one place: `report` runs it, and so
    does a sweep grid's `report = [...]` at plan time (sweeps/grid.py), so that a `--table 9` there fails before any
    run trains. Returns (methods, the attack mix, the PoisonSet choice) in their normal form. Reads nothing."""
    from ..experiment.scenarios import check_poison_sets, parse_poison_sets
    from ..report import tables

    empty = [flag for flag, v in {"--attacks": attacks, "--method": method, "--dataset": dataset, "--recipe": recipe,
                                  "--model": model, "--poisons": poisons}.items() if v is not None and not v.strip()]
    if empty:  # an empty filter would silently select everything
        raise PoisonbenchError(f"{empty[0]} is empty; omit it to keep every value")
    check_modes(table, figure, fmt, missing, per_trial, poisons, trials,
                views={"--paper": paper, "--diff": diff, "--ci": ci, "--wilson": wilson is True,
                       "--no-wilson": wilson is False, "--paired": paired,
                       "--rho": rho is not None, "--out": out is not None, "--run": run is not None,
                       "--trial": trial is not None})
    if trial is not None and trial < 0:
        raise PoisonbenchError(f"--trial must be a non-negative trial id, got {trial}")
    if rho is not None and not 0 <= rho <= 1:
        raise PoisonbenchError(f"--rho must be in [0, 1], got {rho}")
    methods = _methods(method)
    attacks = ",".join(a.strip() for a in attacks.split(",")) if attacks else attacks  # "pgd, dap" = "pgd,dap"
    check_filters(dataset, methods, recipe, model, epochs, attacks)
    chosen = poisons
    if poisons not in (None, "any"):
        pairs = parse_poison_sets(poisons)
        if attacks != "any":  # --missing would print commands that `defend` refuses
            check_poison_sets(pairs, (attacks or tables.PAPER_MIX).split(","))
        chosen = tables.poison_sets_text(pairs)
    if table is not None:  # before the records are read: a bad --table or --figure is one line, nothing else
        tables.check_table(table)
    if figure is not None:
        from ..report.figures import check_figure

        if check_figure(figure) != "1" and run is not None:
            raise PoisonbenchError("--run selects the record of --figure 1 only")
    return methods, attacks, chosen


def check_modes(table: str | None, figure: str | None, fmt: str, missing: bool, per_trial: bool, poisons: str | None,
                trials: int, views: dict[str, bool]) -> None:
    """Options that contradict the mode they select, or that no mode reads (`views`: flag → given)."""
    from ..report.tables import FORMATS, TABLES

    if fmt not in FORMATS:
        raise unknown_choice("format", fmt, FORMATS)
    if missing and fmt != "rich":
        raise PoisonbenchError(f"--missing prints shell commands, one per line; --format {fmt} does not apply")
    if missing and poisons == "any":
        raise PoisonbenchError("--missing needs one choice of PoisonSets to complete; --poisons any pools them")
    if table is not None and figure is not None:
        raise PoisonbenchError("pass either --table or --figure, not both")
    if trials <= 0:
        raise PoisonbenchError(f"--trials must be a positive integer, got {trials}")
    if missing and table is None:
        raise PoisonbenchError(f"--missing needs --table; valid choices: {', '.join(TABLES)}")
    if per_trial and not missing:
        raise PoisonbenchError("--per-trial only applies to --missing")
    # views of a table or figure; like --wilson (Table III) and --paired (Table II) they may be given to every table,
    # so that one command line serves a loop over tables, but without any table or figure they are a mistake
    given = [flag for flag, on in views.items() if on]
    if given and table is None and figure is None:
        raise PoisonbenchError(f"{given[0]} applies to --table or --figure only; the plain report has no such view")


def report(
    table: str = typer.Option(None, "--table", help="Paper table to rebuild: 2 | 3 | 4 | 5 (II–V)."),
    figure: str = typer.Option(None, "--figure", help="Paper figure to draw: 1 | 2 | 3 | 4 | rho (accuracy vs ρ)."),
    out: str = typer.Option(None, "--out", help="Directory for --figure PNGs (default <results>/figures)."),
    dataset: str = typer.Option(None, "--dataset", help="Only records of this dataset."),
    method: str = typer.Option(None, "--method", help="Only records of these methods (comma-separated)."),
    recipe: str = typer.Option(None, "--recipe", help="Only records of this recipe (paper | quick | forest)."),
    model: str = typer.Option(None, "--model", help="Only records of this model."),
    epochs: int = typer.Option(None, "--epochs", help="Only records trained for this many epochs."),
    attacks: str = typer.Option(None, "--attacks",
                                help="Untargeted runs of this attack mix only (as given to `defend --attacks`); "
                                     "`any` pools every mix. Default: the paper's four (pgd,dap,durp,deepconfuse) "
                                     "for --table / --figure; every mix for the plain report."),
    poisons: str = typer.Option(None, "--poisons", metavar="ATTACK=ID,...",
                                help="Untargeted runs trained on these PoisonSets (as given to `defend --poisons`); "
                                     "`any`: runs on any choice (of each mix, only the newest PoisonSet generation "
                                     "is shown). Default: the mix's default PoisonSets for --table / --figure; "
                                     "every choice for the plain report."),
    trials: int = typer.Option(5, "--trials", help="Trials a cell should have; other counts are marked (n=k)."),
    fmt: str = typer.Option("rich", "--format", help="rich | md | latex | csv | json."),
    paper: bool = typer.Option(False, "--paper", help="Add the paper's published numbers beside ours, in its whole "
                               "layout (every ρ row and method, empty where no run)."),
    diff: bool = typer.Option(False, "--diff", help="Add ours − paper (percentage points; Table V: × none)."),
    ci: bool = typer.Option(False, "--ci", help="Add 95% t-intervals of the mean."),
    paired: bool = typer.Option(False, "--paired",
                                help="Table II: add each defense minus W/o Defense per trial (same seed and "
                                     "poisons), mean ± std in points."),
    wilson: bool = typer.Option(None, "--wilson/--no-wilson",
                                help="Table III: each k/n with its 95% Wilson interval (the default; --no-wilson: "
                                     "k/n alone)."),
    missing: bool = typer.Option(False, "--missing",
                                 help="Print one `poisonbench defend` command per configuration the table lacks."),
    per_trial: bool = typer.Option(False, "--per-trial",
                                   help="With --missing: one command per missing trial (`--trial T`), so a "
                                        "scheduler can run one job per line."),
    rho: float = typer.Option(None, "--rho", help="Table II: only this ρ; Tables IV/V: runs at this ρ (default "
                                                  "0.6); Fig. 2: this ρ (default: the ρ with the most "
                                                  "methods, then the largest)."),
    trial: int = typer.Option(None, "--trial", help="Fig. 2: the trial to show (default the first)."),
    run: str = typer.Option(None, "--run", help="Fig. 1: draw this HINT run (record id) instead of the one at "
                                                "the highest ρ."),
    data_dir: str = options.DataDir,
    results: str = Results,
) -> None:
    from ..report import tables

    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise PoisonbenchError(f"--out {out!r} is a file; pass a directory for the figures")
    methods, attacks, chosen = check_arguments(
        table=table, figure=figure, fmt=fmt, missing=missing, per_trial=per_trial, poisons=poisons, trials=trials,
        paper=paper, diff=diff, ci=ci, wilson=wilson, paired=paired, rho=rho, out=out, run=run, trial=trial,
        dataset=dataset, method=method, recipe=recipe, model=model, epochs=epochs, attacks=attacks)
    packed = is_packed(results)
    if packed and figure is not None and out is None:  # <results>/figures: a packed file has no directory
        raise PoisonbenchError("--figure with a packed --results file needs --out DIR for the PNGs (the default, "
                               "<results>/figures, is inside a workspace)")
    store = open_store(results)
    filters = {"dataset": record_name(dataset) if dataset else None,
               "model": model, "recipe": recipe, "epochs": epochs, "methods": methods,
               # --run names one record: the mix and PoisonSet defaults of a table must not hide it
               "mix": attacks or ("any" if run is not None else tables.PAPER_MIX),
               "poison_sets": ("any" if run is not None else "") if chosen is None else chosen}
    records = store.all()
    for line in store.skipped_lines():  # one warning per file skipped, naming it and why; the exit status stays 0
        note(line)
    if store.skipped_note():
        note(store.skipped_note())

    if table is not None:
        opts = tables.Options(trials=trials, paper=paper, diff=diff, ci=ci, wilson=wilson is not False, rho=rho,
                              paired=paired)
        if missing:
            if packed:  # `defend --results FILE.jsonl.gz` would be refused: the commands name no workspace
                note(f"the records come from the packed file {store.root}: the commands below name no --results; "
                     "add --results DIR to complete a workspace")
            show_missing(table, records, opts, filters, dataset, per_trial, data_dir, None if packed else results)
        else:
            show_table(table, records, store, opts, filters, fmt)
    elif figure is not None:
        draw_figures(figure, records, store, filters, out=out, run=run, paper=paper, rho=rho, trial=trial,
                     data_dir=data_dir)
    else:
        show_plain(records, store, filters, fmt, attacks)


def show_missing(table: str, records: list[dict], opts, filters: dict, dataset: str | None, per_trial: bool,
                 data_dir: str | None, results: str) -> None:
    """`--table N --missing`: one `poisonbench defend` command per missing configuration (or trial) on stdout."""
    from ..report import tables

    number = tables.check_table(table)
    if not records and not dataset:  # an empty workspace: the commands for the dataset `defend` would use
        dataset = os.environ.get("POISONBENCH_DATASET") or DEFAULT_DATASET
    commands, notes = tables.missing_commands(number, records, opts, dataset=dataset, recipe=filters["recipe"],
                                              model=filters["model"], epochs=filters["epochs"],
                                              methods=filters["methods"], mix=filters["mix"],
                                              poison_sets=filters["poison_sets"], per_trial=per_trial,
                                              data_dir=data_dir, results=results)
    for text in notes:
        note(text)
    for command in commands:
        print(command)
    note(f"Table {tables.ROMAN[number]}: {len(commands)} command(s) to complete it ({opts.trials} trials per cell)")


def show_table(table: str, records: list[dict], store: RecordReader, opts, filters: dict, fmt: str) -> None:
    """`--table N`: the paper's table from the records, in `fmt`."""
    from ..report import tables

    number = tables.check_table(table)
    tables.assert_records(records, store.runs, len(store.skipped))
    result = tables.build(number, records, opts, **filters)
    if result.empty:
        note(f"{result.title}: no records match ({describe(filters)})")
        if fmt == "json":  # stdout stays valid JSON for a pipeline
            sys.stdout.write(tables.render(result, fmt))
        return
    if fmt == "rich":
        tables.render_rich(result)
    else:
        sys.stdout.write(tables.render(result, fmt))


def draw_figures(figure: str, records: list[dict], store: RecordReader, filters: dict, *, out: str | None,
                 run: str | None, paper: bool, rho: float | None, trial: int | None, data_dir: str | None) -> None:
    """`--figure N`: the figure's PNGs under `out` (default <results>/figures); their paths on stdout."""
    from ..report import figures, tables

    number = figures.check_figure(figure)
    tables.assert_records(records, store.runs, len(store.skipped))
    if run is not None:
        if number != "1":
            raise PoisonbenchError("--run selects the record of --figure 1 only")
        records = [r for r in records if r["run_id"] == run]
        if not records:
            raise PoisonbenchError(f"no complete record for run {run!r} under {store.runs}")
        if not (records[0].get("defense") or {}).get("examples"):
            method = records[0]["config"]["defense"]["method"]
            raise PoisonbenchError(f"run {run!r} (method {method!r}) keeps no healthy-noise examples; --run "
                                   "needs a HINT run")
    target = out or str(store.root / "figures")
    paths = figures.draw(number, records, target, paper=paper, rho=rho, trial=trial, data_dir=data_dir, **filters)
    if not paths:
        have = sorted({r["config"]["trial"] for r in records}) if trial is not None else []
        where = f" and trial {trial} (the records have trials {', '.join(map(str, have))})" if have else ""
        note(f"Figure {number}: nothing to draw from the records matching ({describe(filters)}){where}; "
             f"it needs {FIGURE_NEEDS[number]}")
        return
    for path in paths:
        print(path)


def show_plain(records: list[dict], store: RecordReader, filters: dict, fmt: str, attacks: str | None) -> None:
    """No --table / --figure: test accuracy mean ± std per configuration; unlike the tables, every attack mix and
    PoisonSet choice unless --attacks / --poisons name one."""
    from ..report import tables

    tables.assert_records(records, store.runs, len(store.skipped))
    summary = lib.load_summary(records, **{**filters, "mix": attacks or "any", "poison_sets": filters["poison_sets"]
                                           or "any"})
    if summary.attrs.get("not_shown"):
        note(f"not shown: {summary.attrs['not_shown']} run(s) repeating the trial id or seed of another run of the "
             "same configuration (e.g. another --seed); each configuration keeps the newest run per trial and seed")
    for text in summary.attrs.get("craft_notes", []):
        note(text)
    if summary.empty:
        note(f"no records match ({describe({**filters, 'mix': attacks})})")
        if fmt == "json":
            print("[]")
        return
    if fmt != "rich":
        text = lib.render(summary, fmt)
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    rows = lib.display_rows(summary)
    rich_table = Table(title="poisonbench report")
    for col in rows[0]:
        rich_table.add_column(col)
    for r in rows:
        rich_table.add_row(*map(str, r.values()))
    stdout_console().print(rich_table)


def describe(filters: dict) -> str:
    from ..report.tables import PAPER_MIX

    given = [f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in filters.items()
             if v and not (k == "mix" and v == PAPER_MIX)]
    return ", ".join(given) or "no filters"
