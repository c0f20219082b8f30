"""`poisonbench records pack DIR OUT.jsonl.gz | unpack IN.jsonl.gz DIR` (poisonbench.experiment.packed_records)."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from ..core.errors import PoisonbenchError
from ..core.printable import printable
from . import options
from .summaries import COMMAND_HELP

HELP = COMMAND_HELP["records"]  # poisonbench.cli.summaries: read by `poisonbench --help` without this module
app = typer.Typer(no_args_is_help=True, help=HELP, context_settings=options.CONTEXT_SETTINGS)


def _note(text: str) -> None:
    """A line on stderr naming a file or a record's field: control characters shown escaped (core.printable)."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(printable(text), markup=False)


@app.command("pack", help="Write every run record of DIR/runs/ (and each DIR/poisons/*/manifest.json) to OUT, one "
                          "JSON line each, gzipped; the same records give the same bytes. Records a report would skip "
                          "(run id not its file name, ...) are left out and named on stderr. --grid packs only one "
                          "sweep grid's runs and the PoisonSets they trained on.")
def pack(
    directory: str = typer.Argument(..., metavar="DIR", help="The results workspace (a directory holding runs/)."),
    out: str = typer.Argument(..., metavar="OUT", help="The file to write, ending in .jsonl.gz."),
    grid: str = typer.Option(None, "--grid", metavar="GRID",
                             help="Pack only the records of this sweep grid's runs (a builtin grid or a TOML file; "
                                  "run ids as `sweep plan GRID --results DIR` resolves them) and the manifests of "
                                  "the PoisonSets those runs trained on."),
    data_dir: str = typer.Option(None, "--data-dir",
                                 help="With --grid: the directory holding the grid's dataset files (a run id hashes "
                                      "the data's fingerprint), as given to `sweep run`."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists (never a file of DIR's "
                                                       "runs/ or poisons/)."),
    as_json: bool = options.Json,
) -> None:
    from ..experiment import packed_records

    if data_dir is not None and grid is None:
        raise PoisonbenchError("--data-dir is read only with --grid (to resolve the grid's run ids)")
    packed_records.check_output(out, force, directory)
    packed_records.check_workspace(directory)  # both before the grid's datasets are loaded
    selection = None
    if grid is not None:
        from ..sweeps.plan import grid_selection

        selection = grid_selection(grid, directory, data_dir)
    summary = packed_records.pack(directory, out, force=force, grid=selection)
    for skipped in summary["skipped"]:
        _note(f"skipped {skipped['file']}: {skipped['why']}")
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    of_grid = ""
    if "grid" in summary:
        g = summary["grid"]
        of_grid = f" of grid {g['name']}'s {g['runs']} run(s) ({len(g['missing'])} without a record in {directory})"
    print(printable(f"packed {summary['runs']} run record(s){of_grid} and {summary['poison_manifests']} PoisonSet "
                    f"manifest(s) into {summary['out']} ({summary['bytes']} bytes; {len(summary['skipped'])} file(s) "
                    "skipped)"))


@app.command("unpack", help="Recreate DIR/runs/<run_id>.json (and DIR/poisons/<id>/manifest.json) from a packed "
                            "file, as poisonbench writes them. The whole file is checked first; an existing file "
                            "with other contents (a run record of the same id trained on another craft: both "
                            "named) is refused and nothing is written; --skip-conflicts writes the rest.")
def unpack(
    source: str = typer.Argument(..., metavar="IN", help="The packed file (made by `records pack`)."),
    directory: str = typer.Argument(..., metavar="DIR", help="The results workspace to write into (created if "
                                                             "missing)."),
    skip_conflicts: bool = typer.Option(False, "--skip-conflicts",
                                        help="Write what does not conflict and leave each conflicting file as it "
                                             "is (each named on stderr, exit 0); never overwrites."),
    as_json: bool = options.Json,
) -> None:
    from ..experiment import packed_records

    pack = packed_records.read_pack(source)  # read once; a bad file is named before the workspace is looked at
    summary = packed_records.unpack(pack, directory, skip_conflicts=skip_conflicts)
    for conflict in summary["refused"]:
        _note(f"not unpacked: {conflict}")
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(printable(f"unpacked {summary['runs']} run record(s) and {summary['poison_manifests']} PoisonSet "
                    f"manifest(s) into {summary['directory']}: {summary['written']} file(s) written, "
                    f"{summary['unchanged']} already there"
                    + (f", {len(summary['refused'])} refused (conflicts, named above)" if summary["refused"] else "")
                    + ("; the PoisonSets are manifests alone: a run that needs one crafts its tensors again and "
                       "keeps them if the manifest pins them" if summary["poison_manifests"] else "")))
