"""`poisonbench report`: aggregate run records. A command group: `report` alone prints a per-configuration summary
(`show_plain`), `report table N` the paper's Tables II–V (`show_table`), `report missing N` the `defend` commands a
table still lacks (`show_missing`), `report figure N` Figures 1–4 and accuracy vs ρ (`draw_figures`) and `report
html OUT.html` all of them on one self-contained page (`html_command`, report.html). Each
subcommand takes the options that apply to it. The older flag form (`report --table N [--missing]`, `report
--figure N`) is the group's callback: its options are the old ones (the mode flags hidden from `--help`) and it runs
the same code. Every form ends in `report`, which checks the options (`check_arguments`) and picks the mode."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..core.errors import PoisonbenchError, unknown_choice
from ..core.printable import printable, printable_json
from ..core.workspace import workspace_dir
from ..data import DEFAULT_DATASET
from ..experiment.packed_records import SUFFIX, is_packed, open_store
from ..experiment.records import RecordReader
from ..report import aggregate as lib
from ..report import selection
from ..report.tables import provenance
from .options import CONTEXT_SETTINGS
from .progress import stdout_console
from .summaries import COMMAND_HELP

HELP = COMMAND_HELP["report"]  # poisonbench.cli.summaries: read by `poisonbench --help` without this module

Results = typer.Option(None, "--results", envvar="POISONBENCH_RESULTS", show_default=False,
                       help=f"Results workspace (default ./results), or a packed records file (FILE{SUFFIX}, made "
                            "by `poisonbench records pack`), read as is. Env: POISONBENCH_RESULTS.")

MIX_RUNS = "clean runs or untargeted runs of the attack mix (--attacks; default the paper's four)"
FIGURE_NEEDS = {
    "1": "HINT runs whose record keeps healthy-noise examples (record.defense.examples)",
    "2": f"{MIX_RUNS} with metrics.sample_predictions",
    "3": "targeted MP runs (config.poison.kind = targeted, attack = mp)",
    "4": "targeted BP runs (config.poison.kind = targeted, attack = bp)",
    "rho": MIX_RUNS,
}
# what a table empty of runs needs, named in its one line (issue 82: a workspace of one kind of run)
TABLE_NEEDS = {
    "2": MIX_RUNS,
    "3": "targeted runs (config.poison.kind = targeted)",
    "4": "HINT runs of the attack mix at ρ = --rho (default 0.6)",
    "5": "runs of the attack mix at ρ = --rho (default 0.6)",
    "matrix": "clean runs, untargeted runs of one attack alone at ρ = --poison-ratio (default 1.0), or targeted runs",
}


def note(text: str) -> None:
    """A line for the reader on stderr (stdout stays the table, the commands or the paths); it may name a record's
    fields or a file's name: control characters shown escaped (core.printable)."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(printable(text, newlines=True), markup=False)


def emit(text: str, fmt: str) -> None:
    """A rendered table on stdout, in `fmt`; nothing a record holds reaches the terminal raw (core.printable: the
    renderers escape each field already, this is the last gate)."""
    sys.stdout.write(printable_json(text) if fmt == "json" else printable(text, newlines=True))


def check_arguments(*, table: str | None, figure: str | None, fmt: str, missing: bool, per_trial: bool,
                    poisons: str | None, trials: int, paper: bool, diff: bool, ci: bool, wilson: bool | None,
                    paired: bool,
                    rho: float | None, out: str | None, run: str | None, trial: int | None, dataset: str | None,
                    method: str | None, recipe: str | None, model: str | None, epochs: int | None,
                    attacks: str | None, poison_ratio: float | None = None, versus: str | None = None,
                    **_elsewhere) -> tuple[list[str] | None, str | None, str | None]:
    """Every check `report` makes on its options before it reads a record, in one place: `report` runs it, and so
    does a sweep grid's `report = [...]` at plan time (sweeps/grid.py), so that a `--table 9` there fails before any
    run trains. Returns (methods, the attack mix, the PoisonSet choice) in their normal form. Reads nothing."""
    from ..report import tables

    selection.check_not_empty(**{"--attacks": attacks, "--method": method, "--dataset": dataset, "--recipe": recipe,
                                 "--model": model, "--poisons": poisons})
    check_modes(table, figure, fmt, missing, per_trial, poisons, trials,
                views={"--paper": paper, "--diff": diff, "--ci": ci, "--wilson": wilson is True,
                       "--no-wilson": wilson is False, "--paired": paired,
                       "--rho": rho is not None, "--out": out is not None, "--run": run is not None,
                       "--trial": trial is not None})
    if trial is not None and trial < 0:
        raise PoisonbenchError(f"--trial must be a non-negative trial id, got {trial}")
    if rho is not None and not 0 <= rho <= 1:
        raise PoisonbenchError(f"--rho must be in [0, 1], got {rho}")
    check_matrix(table, figure, missing, rho, out, poison_ratio)
    check_versus(table, missing, versus)
    methods, attacks, chosen = selection.normal_selection(dataset=dataset, method=method, recipe=recipe,
                                                          model=model, epochs=epochs, attacks=attacks,
                                                          poisons=poisons)
    if table is not None:  # before the records are read: a bad --table or --figure is one line, nothing else
        tables.check_table(table)
    if figure is not None:
        from ..report.figures import check_figure

        if check_figure(figure) != "1" and run is not None:
            raise PoisonbenchError("--run selects the record of --figure 1 only")
    return methods, attacks, chosen


def check_versus(table: str | None, missing: bool, versus: str | None) -> None:
    """`--versus ROW` pairs Table III's rows with that row: a view of Table III only (it names one of its rows), and
    never empty. Whether the row exists is known once the records are read (`tables.build`)."""
    if versus is None:
        return
    if not versus.strip():
        raise PoisonbenchError("--versus is empty; name a row of Table III: a method (none, hint, friends, ...) or a "
                               "row's label as the table shows it ('HINT (β 0.3, signed)')")
    if table is None or missing or str(table).strip().upper() not in ("3", "III"):
        raise PoisonbenchError(f"--versus {versus!r} names a row of Table III; it applies to `report table 3` only")


def is_matrix(table: str | None) -> bool:
    return table is not None and str(table).strip().lower() == "matrix"


def check_matrix(table: str | None, figure: str | None, missing: bool, rho: float | None, out: str | None,
                 poison_ratio: float | None) -> None:
    """The options of `--table matrix` (every defense against every attack), and the ones it does not take."""
    matrix = is_matrix(table)
    if poison_ratio is not None and not matrix:
        raise PoisonbenchError("--poison-ratio applies to --table matrix only (Tables II, IV and V take --rho)")
    if poison_ratio is not None and not 0 < poison_ratio <= 1:
        raise PoisonbenchError(f"--poison-ratio must be in (0, 1], got {poison_ratio:g} (the clean column holds "
                               "ρ = 0)")
    if not matrix:
        return
    if missing:
        raise PoisonbenchError("--missing does not list the matrix's runs; `poisonbench sweep plan matrix-quick "
                               "--print-commands` does")
    if rho is not None:
        raise PoisonbenchError("--table matrix takes --poison-ratio (the ρ of its untargeted runs), not --rho")


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
    check_trials(trials)
    if missing and table is None:
        raise PoisonbenchError(f"--missing needs --table; valid choices: {', '.join(TABLES)}")
    if per_trial and not missing:
        raise PoisonbenchError("--per-trial only applies to --missing")
    # views of a table or figure; like --wilson (Table III) and --paired (Table II) they may be given to every table,
    # so that one command line serves a loop over tables, but without any table or figure they are a mistake
    given = [flag for flag, on in views.items() if on]
    if given and table is None and figure is None:
        raise PoisonbenchError(f"{given[0]} applies to --table or --figure only; the plain report has no such view")


def check_trials(trials: int) -> None:
    """A report's `--trials` (the trials a cell should have): 1 to MAX_TRIALS, the most `defend --trials` runs in one
    call (a sweep grid's limit too); `report missing --per-trial` prints one line per missing trial, so this bounds
    its output as well."""
    from ..experiment.spec import MAX_TRIALS

    if not 0 < trials <= MAX_TRIALS:
        raise PoisonbenchError(f"--trials must be a positive integer, at most {MAX_TRIALS:,} (the most `defend "
                               f"--trials` runs in one call), got {trials}")


def report(table: str | None = None, figure: str | None = None, out: str | None = None, dataset: str | None = None,
           method: str | None = None, recipe: str | None = None, model: str | None = None, epochs: int | None = None,
           attacks: str | None = None, poisons: str | None = None, trials: int = 5, fmt: str = "rich",
           paper: bool = False, diff: bool = False, ci: bool = False, paired: bool = False,
           wilson: bool | None = None, missing: bool = False, per_trial: bool = False, rho: float | None = None,
           trial: int | None = None, run: str | None = None, data_dir: str | None = None,
           results: str | None = None, poison_ratio: float | None = None, strict: bool = False,
           versus: str | None = None) -> None:
    """Every form of `report` (flags or subcommand) ends here, with the options in the flag form's terms: the mode is
    `table` (with `missing`), `figure`, or neither (the plain summary). `strict`: exit 1 when a cell shown pools
    runs trained on two crafts of one PoisonSet (report.tables.provenance), after the output."""
    from ..report import tables

    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise PoisonbenchError(f"--out {out!r} is a file; pass a directory for the figures")
    methods, attacks, chosen = check_arguments(
        table=table, figure=figure, fmt=fmt, missing=missing, per_trial=per_trial, poisons=poisons, trials=trials,
        paper=paper, diff=diff, ci=ci, wilson=wilson, paired=paired, rho=rho, out=out, run=run, trial=trial,
        dataset=dataset, method=method, recipe=recipe, model=model, epochs=epochs, attacks=attacks,
        poison_ratio=poison_ratio, versus=versus)
    packed = is_packed(results)
    matrix = is_matrix(table)
    if packed and figure is not None and out is None:  # <results>/figures: a packed file has no directory
        raise PoisonbenchError("--figure with a packed --results file needs --out DIR for the PNGs (the default, "
                               "<results>/figures, is inside a workspace)")
    store = open_store(results)
    filters = selection.record_filters(dataset=dataset, model=model, recipe=recipe, epochs=epochs, methods=methods,
                                       attacks=attacks, chosen=chosen, matrix=matrix, run=run)
    records = store.all()
    for line in store.skipped_lines():  # one warning per file skipped, naming it and why; the exit status stays 0
        note(line)
    if store.skipped_note():
        note(store.skipped_note())

    if table is not None:
        # the matrix's and the backdoor table's --attacks name their columns (the backdoors shown), not a mix
        by_column = matrix or str(table).strip().lower() == "backdoor"
        columns = tuple(attacks.split(",")) if by_column and attacks and attacks != "any" else ()
        opts = tables.Options(trials=trials, paper=paper, diff=diff, ci=ci, wilson=wilson is not False, rho=rho,
                              paired=paired, poison_ratio=poison_ratio, attacks=columns, versus=versus)
        if missing:
            if packed:  # `defend --results FILE.jsonl.gz` would be refused: the commands name no workspace
                note(f"the records come from the packed file {store.root}: the commands below name no --results; "
                     "add --results DIR to complete a workspace")
            show_missing(table, records, opts, filters, dataset, per_trial, data_dir, None if packed else results)
        else:
            heatmap = (out or (None if packed else str(workspace_dir(store.root, "figures")))) if matrix else None
            mixed = show_table(table, records, store, opts, filters, fmt, heatmap_dir=heatmap)
            fail_if_mixed(mixed, strict)
    elif figure is not None:
        draw_figures(figure, records, store, filters, out=out, run=run, paper=paper, rho=rho, trial=trial,
                     data_dir=data_dir)
        shown = figure_runs(records, filters)
        if len(shown):
            note(f"Figure {figure}: {provenance.caption(shown)}")
        fail_if_mixed(provenance.mixed_crafts(shown), strict, notes=True)
    else:
        fail_if_mixed(show_plain(records, store, filters, fmt, attacks), strict)


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
        print(printable(command))
    note(f"Table {tables.ROMAN[number]}: {len(commands)} command(s) to complete it ({opts.trials} trials per cell)")


def fail_if_mixed(mixed: list[str], strict: bool, notes: bool = False) -> None:
    """`--strict`: exit 1 naming the cells that pool two crafts (each already noted under a table; a figure's are
    noted here, `notes`)."""
    if notes:
        for line in mixed:
            note(line)
    if strict and mixed:
        note(f"--strict: the runs shown trained on different crafts of one PoisonSet ({len(mixed)} finding(s), "
             "named above); exit 1")
        raise typer.Exit(1)


def figure_runs(records: list[dict], filters: dict):
    """The runs a figure draws from (the filters, one generation per mix, the newest run per trial), as the tables'
    frame: for its crafts and code versions (report.tables.provenance)."""
    from ..report import tables

    return tables.cell_records(tables.apply_filters(tables.frame(records), **filters))[0]


def show_table(table: str, records: list[dict], store: RecordReader, opts, filters: dict, fmt: str,
               heatmap_dir: str | None = None) -> list[str]:
    """`--table N`: the paper's table from the records, in `fmt`; `--table matrix` also writes its heatmap PNG(s)
    into `heatmap_dir` (their paths on stderr; none with a packed --results file and no --out). Returns the lines
    naming its cells that pool two crafts (`Table.mixed`)."""
    from ..report import tables

    number = tables.check_table(table)
    tables.assert_records(records, store.runs, len(store.skipped))
    result = tables.build(number, records, opts, **filters)
    if result.empty:
        note(f"{result.title}: no records match ({describe(filters)}); it needs {TABLE_NEEDS[number]}")
        if fmt == "json":  # stdout stays valid JSON for a pipeline
            emit(tables.render(result, fmt), fmt)
        return []
    if fmt == "rich":
        tables.render_rich(result)
    else:
        emit(tables.render(result, fmt), fmt)
    if number == tables.MATRIX:
        if heatmap_dir is None:
            note("no heatmap written: the records come from a packed file; pass --out DIR for the PNG")
            return result.mixed
        from ..report.figures.matrix import figure_matrix
        from ..report.figures.panels import confined_to

        with confined_to(Path(heatmap_dir)):
            for path in figure_matrix(result, Path(heatmap_dir)):
                note(f"heatmap: {path}")
    return result.mixed


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
    target = out or str(workspace_dir(store.root, "figures"))  # never a symbolic link in the workspace
    paths = figures.draw(number, records, target, paper=paper, rho=rho, trial=trial, data_dir=data_dir, **filters)
    if not paths:
        have = sorted({r["config"]["trial"] for r in records}) if trial is not None else []
        where = f" and trial {trial} (the records have trials {', '.join(map(str, have))})" if have else ""
        note(f"Figure {number}: nothing to draw from the records matching ({describe(filters)}){where}; "
             f"it needs {FIGURE_NEEDS[number]}")
        return
    for path in paths:
        print(printable(path))


def not_shown_note(count: int) -> str:
    """The plain report's note on the runs it leaves out (`api.report` gives the same line)."""
    return (f"not shown: {count} run(s) repeating the trial id or seed of another run of the same configuration "
            "(e.g. another --seed); each configuration keeps the newest run per trial and seed")


def show_plain(records: list[dict], store: RecordReader, filters: dict, fmt: str, attacks: str | None) -> list[str]:
    """No --table / --figure: test accuracy mean ± std per configuration; unlike the tables, every attack mix and
    PoisonSet choice unless --attacks / --poisons name one. Returns the lines naming the runs shown that trained on
    two crafts of one PoisonSet (noted here, as a table's are; what `--strict` fails on)."""
    from ..report import tables

    tables.assert_records(records, store.runs, len(store.skipped))
    summary = selection.plain_summary(records, filters, attacks)
    if summary.attrs.get("not_shown"):
        note(not_shown_note(summary.attrs["not_shown"]))
    for text in summary.attrs.get("craft_notes", []):
        note(text)
    mixed = summary.attrs.get("mixed", [])
    if summary.empty:
        note(f"no records match ({describe({**filters, 'mix': attacks})})")
        if fmt == "json":
            print("[]")
        return mixed
    if fmt != "rich":
        text = lib.render(summary, fmt)
        emit(text if text.endswith("\n") else text + "\n", fmt)
        return mixed
    rows = lib.display_rows(summary)
    rich_table = Table(title="poisonbench report")
    for col in rows[0]:
        rich_table.add_column(col)
    for r in rows:
        rich_table.add_row(*(escape(printable(v)) for v in r.values()))  # a record's text, shown: no markup
    stdout_console().print(rich_table)
    return mixed


def describe(filters: dict) -> str:
    from ..report.tables import PAPER_MIX

    given = [f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in filters.items()
             if v and not (k == "mix" and v == PAPER_MIX)]
    return ", ".join(given) or "no filters"


# --- the command line: the group (its callback is the flag form) and the subcommands -------------------------------

CHECK_ONLY = "check-only"  # ctx.obj of `check_report_args`: parse and check, read no record


def _option(default, *flags: str, help: str, hidden: bool = False, **kwargs):
    return typer.Option(default, *flags, help=help, hidden=hidden, show_default=default not in (None, False),
                        **kwargs)


# the filters: every form takes them
Dataset = _option(None, "--dataset", help="Only records of this dataset (a name, or the path of an .npz).")
Method = _option(None, "--method", help="Only records of these methods (comma-separated).")
Recipe = _option(None, "--recipe", help="Only records of this recipe (paper | quick | forest).")
Model = _option(None, "--model", help="Only records of this model.")
Epochs = _option(None, "--epochs", help="Only records trained for this many epochs.")
ATTACKS_HELP = ("Untargeted runs of this attack mix only (as given to `defend --attacks`); `any` pools every mix. "
                "Default: {}.")
POISONS_HELP = ("Untargeted runs trained on these PoisonSets (as given to `defend --poisons`); `any`: runs on any "
                "choice (of each mix, only the newest PoisonSet generation is shown). Default: {}.")
PAPER_MIX_TEXT = "the paper's four (pgd,dap,durp,deepconfuse)"
Attacks = _option(None, "--attacks", help=ATTACKS_HELP.format(PAPER_MIX_TEXT))
Poisons = _option(None, "--poisons", metavar="ATTACK=ID,...", help=POISONS_HELP.format("the mix's default PoisonSets"))
Format = _option("rich", "--format", help="rich | md | latex | csv | json.")
Strict = _option(False, "--strict", help="Exit 1 (after the output) when the runs shown trained on different crafts "
                                         "of one PoisonSet (same poison id, other tensors), in one cell or across "
                                         "cells; each finding is named in a note either way.")
# Tables
# N is checked by `report` (as `--table N` is), so that a missing one is refused with the choices, like a bad one
TableNumber = typer.Argument(None, metavar="N", show_default=False,
                             help="The table: 2 | 3 | 4 | 5 (or II–V) | matrix (every defense × every attack).")
TableTrials = _option(5, "--trials", help="Trials a cell should have; other counts are marked (n=k).")
Paper = _option(False, "--paper", help="Add the paper's published numbers beside ours, in its whole layout (every ρ "
                                       "row and method, empty where no run).")
Diff = _option(False, "--diff", help="Add ours − paper (percentage points; Table V: × none).")
Ci = _option(False, "--ci", help="Add 95% t-intervals of the mean.")
Paired = _option(False, "--paired", help="Table II: add each defense minus W/o Defense per trial (same seed and "
                                         "poisons), mean ± std in points. Table III: each defense's ASR minus W/o "
                                         "Defense's on the same targets (Newcombe interval, McNemar p).")
Versus = _option(None, "--versus", metavar="ROW",
                 help="Table III: pair every row with this row instead of W/o Defense (same targets; Newcombe "
                      "interval, McNemar p): a method (hint, friends, ...) or a row's label as shown ('HINT (β 0.3, "
                      "signed)'; β may be written beta). Implies --paired.")
Wilson = typer.Option(None, "--wilson/--no-wilson", show_default=False,
                      help="Table III: each k/n with its 95% Wilson interval (the default; --no-wilson: k/n alone).")
PoisonRatio = _option(None, "--poison-ratio", help="--table matrix: the ρ of the untargeted runs in its cells, in "
                                                   "(0, 1] (default 1.0); the clean column holds ρ = 0.")
TableOut = _option(None, "--out", help="--table matrix: directory for the heatmap PNG (default <results>/figures; "
                                       "needed with a packed --results file for a PNG).")
TableRho = _option(None, "--rho", help="Table II: only this ρ; Tables IV/V: runs at this ρ (default 0.6).")
# missing
MissingTrials = _option(5, "--trials", help="Trials each configuration should have: one with fewer gets a command "
                                            "(it runs trials 0..N-1 and skips the done ones).")
PerTrial = _option(False, "--per-trial", help="One command per missing trial (`--trial T`), so a scheduler can run one "
                                              "job per line.")
MissingRho = _option(None, "--rho", help="Table II: only the row of this ρ; Tables IV/V: the runs at this ρ (default "
                                         "0.6).")
MissingDataDir = _option(None, "--data-dir", help="Passed on to every command (`defend --data-dir`): where the "
                                                  "dataset files are.")
MissingResults = typer.Option(None, "--results", envvar="POISONBENCH_RESULTS", show_default=False,
                              help="Results workspace (default ./results), passed on to every command; or a packed "
                                   f"records file (FILE{SUFFIX}), read as is (the commands then name no --results). "
                                   "Env: POISONBENCH_RESULTS.")
# figures
FigureNumber = typer.Argument(None, metavar="N", show_default=False,
                              help="The figure: 1 | 2 | 3 | 4 | rho (test accuracy vs ρ).")
Out = _option(None, "--out", help="Directory for the PNGs (default <results>/figures; needed with a packed --results "
                                  "file).")
FigurePaper = _option(False, "--paper", help="Figure rho: add the paper's numbers as dashed curves.")
FigureRho = _option(None, "--rho", help="Figure 2: this ρ (default: the ρ with the most methods, then the largest).")
Trial = _option(None, "--trial", help="Figure 2: the trial to show (default the first).")
Run = _option(None, "--run", help="Figure 1: draw this HINT run (record id) instead of the one at the highest ρ.")
FigureDataDir = _option(None, "--data-dir", help="Directory holding the dataset files (the test images the figures "
                                                 "show; a grey placeholder where they cannot be loaded).")


def needs_number(kind: str, number: str | None) -> str:
    """The subcommand's N; none given is refused with the choices (a bad one, later, by `report`'s own checks)."""
    if number is None:
        from ..report.figures import FIGURES
        from ..report.tables import TABLES

        choices = FIGURES if kind == "figure" else TABLES
        raise PoisonbenchError(f"`report {kind}` needs N; valid choices: {', '.join(choices)}")
    return number


def _dispatch(ctx: typer.Context, **given) -> None:
    """Run the report, or (a sweep grid's `report = [...]` at plan time) only check its options; the options a form
    does not take keep `report`'s defaults."""
    kwargs = {name: p.default for name, p in inspect.signature(report).parameters.items()} | given
    if ctx.obj == CHECK_ONLY:
        check_arguments(**kwargs)
    else:
        report(**kwargs)


def flag_form(
    ctx: typer.Context,
    dataset: str = Dataset,
    method: str = Method,
    recipe: str = Recipe,
    model: str = Model,
    epochs: int = Epochs,
    attacks: str = _option(None, "--attacks", help=ATTACKS_HELP.format("every mix")),
    poisons: str = _option(None, "--poisons", metavar="ATTACK=ID,...", help=POISONS_HELP.format("every choice")),
    fmt: str = Format,
    results: str = Results,
    # the flag form of the subcommands: hidden from --help (the subcommands document them), working as before
    table: str = _option(None, "--table", hidden=True,
                         help="Paper table to rebuild: 2 | 3 | 4 | 5 (II–V), or matrix (every defense × attack)."),
    figure: str = _option(None, "--figure", hidden=True,
                          help="Paper figure to draw: 1 | 2 | 3 | 4 | rho (accuracy vs ρ)."),
    missing: bool = _option(False, "--missing", hidden=True,
                            help="Print one `poisonbench defend` command per configuration the table lacks."),
    out: str = _option(None, "--out", hidden=True, help="Directory for --figure PNGs and the --table matrix heatmap "
                                                        "(default <results>/figures)."),
    poison_ratio: float = _option(None, "--poison-ratio", hidden=True,
                                  help="--table matrix: the ρ of its untargeted runs (default 1.0)."),
    trials: int = _option(5, "--trials", hidden=True, help="Trials a cell should have; other counts are marked (n=k)."),
    paper: bool = _option(False, "--paper", hidden=True, help="Add the paper's published numbers beside ours."),
    diff: bool = _option(False, "--diff", hidden=True, help="Add ours − paper (percentage points; Table V: × none)."),
    ci: bool = _option(False, "--ci", hidden=True, help="Add 95% t-intervals of the mean."),
    paired: bool = _option(False, "--paired", hidden=True,
                           help="Tables II / III: add each defense minus W/o Defense (paired by trial)."),
    wilson: bool = typer.Option(None, "--wilson/--no-wilson", hidden=True, show_default=False,
                                help="Table III: each k/n with its 95% Wilson interval (the default)."),
    per_trial: bool = _option(False, "--per-trial", hidden=True,
                              help="With --missing: one command per missing trial (`--trial T`)."),
    rho: float = _option(None, "--rho", hidden=True, help="Table II: only this ρ; Tables IV/V: runs at this ρ "
                                                          "(default 0.6); Fig. 2: this ρ."),
    trial: int = _option(None, "--trial", hidden=True, help="Fig. 2: the trial to show (default the first)."),
    run: str = _option(None, "--run", hidden=True, help="Fig. 1: draw this HINT run (record id)."),
    data_dir: str = _option(None, "--data-dir", hidden=True,
                            help="Directory holding the dataset files (--missing, --figure)."),
    strict: bool = _option(False, "--strict", hidden=True, help="Exit 1 when the runs shown pool two crafts of one "
                                                               "PoisonSet."),
    versus: str = _option(None, "--versus", hidden=True, metavar="ROW",
                          help="Table III: pair every row with this row instead of W/o Defense."),
) -> None:
    """The group's callback: `report` alone (the plain summary) or the flag form; before a subcommand, nothing (its
    options go after the subcommand's name)."""
    if ctx.invoked_subcommand is not None:
        given = [p.opts[0] for p in ctx.command.params if given_on_command_line(ctx, p.name)]
        if given:
            raise PoisonbenchError(f"{given[0]} goes after the subcommand: `report {ctx.invoked_subcommand} N "
                                   f"{given[0]} ...`")
        return
    _dispatch(ctx, table=table, figure=figure, out=out, dataset=dataset, method=method, recipe=recipe, model=model,
              epochs=epochs, attacks=attacks, poisons=poisons, trials=trials, fmt=fmt, paper=paper, diff=diff, ci=ci,
              paired=paired, wilson=wilson, missing=missing, per_trial=per_trial, rho=rho, trial=trial, run=run,
              data_dir=data_dir, results=results, poison_ratio=poison_ratio, strict=strict, versus=versus)


def table_command(
    ctx: typer.Context,
    number: str = TableNumber,
    dataset: str = Dataset,
    method: str = Method,
    recipe: str = Recipe,
    model: str = Model,
    epochs: int = Epochs,
    attacks: str = Attacks,
    poisons: str = Poisons,
    trials: int = TableTrials,
    fmt: str = Format,
    paper: bool = Paper,
    diff: bool = Diff,
    ci: bool = Ci,
    paired: bool = Paired,
    versus: str = Versus,
    wilson: bool = Wilson,
    rho: float = TableRho,
    poison_ratio: float = PoisonRatio,
    out: str = TableOut,
    strict: bool = Strict,
    results: str = Results,
) -> None:
    _dispatch(ctx, table=needs_number("table", number), dataset=dataset, method=method, recipe=recipe, model=model,
              epochs=epochs, attacks=attacks, poisons=poisons, trials=trials, fmt=fmt, paper=paper, diff=diff, ci=ci,
              paired=paired, wilson=wilson, rho=rho, poison_ratio=poison_ratio, out=out, results=results,
              strict=strict, versus=versus)


def missing_command(
    ctx: typer.Context,
    number: str = TableNumber,
    dataset: str = Dataset,
    method: str = Method,
    recipe: str = Recipe,
    model: str = Model,
    epochs: int = Epochs,
    attacks: str = Attacks,
    poisons: str = Poisons,
    trials: int = MissingTrials,
    per_trial: bool = PerTrial,
    rho: float = MissingRho,
    data_dir: str = MissingDataDir,
    results: str = MissingResults,
) -> None:
    _dispatch(ctx, table=needs_number("missing", number), missing=True, dataset=dataset, method=method,
              recipe=recipe, model=model, epochs=epochs, attacks=attacks, poisons=poisons, trials=trials,
              per_trial=per_trial, rho=rho, data_dir=data_dir, results=results)


def figure_command(
    ctx: typer.Context,
    number: str = FigureNumber,
    out: str = Out,
    dataset: str = Dataset,
    method: str = Method,
    recipe: str = Recipe,
    model: str = Model,
    epochs: int = Epochs,
    attacks: str = Attacks,
    poisons: str = Poisons,
    paper: bool = FigurePaper,
    rho: float = FigureRho,
    trial: int = Trial,
    run: str = Run,
    data_dir: str = FigureDataDir,
    strict: bool = Strict,
    results: str = Results,
) -> None:
    _dispatch(ctx, figure=needs_number("figure", number), out=out, dataset=dataset, method=method, recipe=recipe,
              model=model, epochs=epochs, attacks=attacks, poisons=poisons, paper=paper, rho=rho, trial=trial, run=run,
              data_dir=data_dir, results=results, strict=strict)


HtmlOut = typer.Argument(..., metavar="OUT.html", show_default=False,
                         help="The page to write (atomically); an existing file only with --force.")
HtmlForce = _option(False, "--force", help="Replace OUT.html if it exists (never a file the page is made from: the "
                                           "--records file, a record or manifest of the workspace).")
HtmlRecords = _option(None, "--records", metavar="FILE",
                      help=f"A packed records file (FILE{SUFFIX} or .jsonl.xz, made by `poisonbench records pack`) "
                           "to read instead of --results.")
HtmlDataDir = _option(None, "--data-dir", help="Directory holding the dataset files (the test images Figures 2–4 "
                                               "show; a grey placeholder where they cannot be loaded).")
NoFigures = _option(False, "--no-figures", help="Leave out Figures 1–4 and accuracy vs ρ (the matrix's heatmap "
                                                "stays).")


def html_command(
    ctx: typer.Context,
    out: str = HtmlOut,
    results: str = Results,
    records_file: str = HtmlRecords,
    dataset: str = Dataset,
    method: str = Method,
    recipe: str = Recipe,
    model: str = Model,
    epochs: int = Epochs,
    trials: int = TableTrials,
    data_dir: str = HtmlDataDir,
    no_figures: bool = NoFigures,
    force: bool = HtmlForce,
) -> None:
    """`report html OUT.html`: one self-contained page (report.html) of every table the records fill, the matrix's
    heatmap and the figures, written atomically; its path on stdout. An existing OUT.html is replaced only with
    --force, and never a file the page is made from (core.io.check_output)."""
    from ..core.io import check_output, write_new_file
    from ..core.workspace import results_dir
    from ..report import html

    if ctx.obj == CHECK_ONLY:  # a sweep grid's `report = [...]`: its files go inside the workspace (issue 68), and
        # OUT.html is a path of its own
        raise PoisonbenchError("`report html` is no grid report (it would write OUT.html outside the workspace); "
                               "run `poisonbench report html OUT.html --results R` after the sweep")
    if records_file is not None and given_on_command_line(ctx, "results"):
        raise PoisonbenchError("pass either --results or --records, not both")
    if records_file is not None:  # $POISONBENCH_RESULTS is a default: --records, given, replaces it
        results = None
    if records_file is not None and not Path(records_file).is_file():
        raise PoisonbenchError(f"--records {records_file!r}: no such file (a packed records file, made by "
                               "`poisonbench records pack`)")
    target = Path(out)
    if target.is_dir():
        raise PoisonbenchError(f"{out!r} is a directory; name the HTML file to write")
    source = records_file or results
    if is_packed(source):
        inputs = [Path(source or os.environ["POISONBENCH_RESULTS"])]
    else:
        root = results_dir(source)
        inputs = [root / "runs", root / "poisons"]
    check_output(target, force, [*inputs, *([data_dir] if data_dir else [])], label="OUT.html ")
    check_trials(trials)
    methods, _, _ = selection.normal_selection(dataset=dataset, method=method, recipe=recipe, model=model,
                                               epochs=epochs, attacks=None, poisons=None)
    store = open_store(records_file or results)
    records = store.all()
    for line in store.skipped_lines():
        note(line)
    if store.skipped_note():
        note(store.skipped_note())
    from ..report import tables

    tables.assert_records(records, store.runs, len(store.skipped))
    from ..data import record_name

    filters = {"dataset": record_name(dataset) if dataset else None, "model": model, "recipe": recipe,
               "epochs": epochs, "methods": methods}
    source = records_file or results or str(store.root)
    skipped = [store.skipped_note()] if store.skipped_note() else []
    text = html.page(records, source, filters, trials=trials, data_dir=data_dir, notes=skipped,
                     with_figures=not no_figures)
    write_new_file(target, text.encode("utf-8"), "the HTML report")
    print(printable(str(target)))


def given_on_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was given on the command line (not its default, nor its environment variable's: an
    environment default never counts as an option the user gave)."""
    return getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"


def group() -> typer.Typer:
    """The `report` command group, built anew for every caller (the app, `sweep run`'s closing report, a grid's
    check)."""
    app = typer.Typer(name="report", help=HELP, add_completion=False, no_args_is_help=False,
                      pretty_exceptions_enable=False, context_settings=CONTEXT_SETTINGS)
    app.callback(invoke_without_command=True)(flag_form)
    app.command("table", help="The paper's Table II, III, IV or V from the run records (Table II: test accuracy "
                              "against the untargeted mix at each ρ; III: attack success and accuracy against the "
                              "targeted attacks; IV: HINT's sensitivity to r and β; V: execution time), or `matrix`: "
                              "every defense against every attack alone (accuracy, or k/n for targeted attacks), "
                              "with a heatmap PNG.")(table_command)
    app.command("missing", help="One `poisonbench defend` command per configuration table N still lacks (Tables II, "
                                "IV, V; Table III names the sweep that lists its runs), on stdout.")(missing_command)
    app.command("figure", help="The paper's Figure 1, 2, 3 or 4, or test accuracy vs ρ (rho), as PNGs; their paths "
                               "on stdout.")(figure_command)
    app.command("html", help="One self-contained HTML page (no network: inline style, images as data: URIs) of "
                             "every table the records fill (II–V with the paper's numbers and 95% intervals, the "
                             "matrix), the matrix's heatmap and the figures, each table with its provenance "
                             "(crafts, code, devices, recipes, trials); its path on stdout.")(html_command)
    return app


def check_report_args(args: list[str]) -> None:
    """Parse `args` as `poisonbench report`'s (either form) and make every check `report` makes before it reads a
    record; raises click's usage errors and PoisonbenchError. Reads nothing."""
    click_group().main(list(args), prog_name="poisonbench report", standalone_mode=False, obj=CHECK_ONLY)


def run_report(args: list[str]) -> int | None:
    """`poisonbench report ARGS` without the app (cli.main): `sweep run`'s closing report. Returns the exit code of
    a `typer.Exit` (`--strict`), raises what `report` raises."""
    return click_group().main(list(args), prog_name="poisonbench report", standalone_mode=False)


def click_group():
    """The `report` group as click runs it, refusing empty values as `poisonbench report` does
    (cli.options.refuse_empty_values)."""
    import typer.main

    from .options import refuse_empty_values

    return refuse_empty_values(typer.main.get_command(group()))


def takes_data_dir(args: list[str]) -> bool:
    """Whether the report `args` name a mode that reads --data-dir (all but `report table N`)."""
    return not args or args[0] != "table"
