"""`report table N`, `report missing N`, `report figure N` (issue 56 item 6): the subcommands print exactly what the
flag form (`report --table N`, `--table N --missing`, `--figure N`) prints, which keeps working; bad input is one
line and exit 2; a sweep grid's `report = [...]` may use either form."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import typer.main

from poisonbench.cli import report as report_cmd
from poisonbench.cli.sweep import check_report_args
from poisonbench.core.errors import PoisonbenchError
from poisonbench.report.figures import panels
from tests.report_records import synthetic_records, write_records


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return write_records(tmp_path_factory.mktemp("report-commands") / "res", synthetic_records())


@pytest.mark.parametrize("flags,command", [
    (["--table", "2"], ["table", "2"]),
    (["--table", "3", "--paper", "--diff", "--format", "md"], ["table", "3", "--paper", "--diff", "--format", "md"]),
    (["--table", "IV", "--format", "json", "--dataset", "mnist-5k"],
     ["table", "IV", "--format", "json", "--dataset", "mnist-5k"]),
    (["--table", "5", "--ci", "--format", "latex"], ["table", "5", "--ci", "--format", "latex"]),
    (["--table", "2", "--missing"], ["missing", "2"]),
    (["--table", "4", "--missing", "--per-trial", "--trials", "6"], ["missing", "4", "--per-trial", "--trials", "6"]),
    (["--table", "3", "--missing"], ["missing", "3"]),
])
def test_a_subcommand_prints_what_its_flags_print(cli, results, flags, command):
    code, out, err = cli("report", *flags, "--results", results)
    assert code == 0, err
    assert out or "Table III: `--missing` does not list targeted runs" in err  # something to compare
    assert cli("report", *command, "--results", results) == (code, out, err)


@pytest.mark.parametrize("flags,command", [
    (["--figure", "1"], ["figure", "1"]),
    (["--figure", "rho", "--paper"], ["figure", "rho", "--paper"]),
    (["--figure", "2", "--rho", "0.2"], ["figure", "2", "--rho", "0.2"]),
])
def test_a_figure_subcommand_draws_what_its_flags_draw(cli, results, tmp_path, monkeypatch, flags, command):
    monkeypatch.setattr(panels, "split_test_images", lambda *args: np.full((100, 1, 28, 28), 128, np.uint8))
    out_dir = tmp_path / "figures"
    drawn = []
    for args in (flags, command):
        shutil.rmtree(out_dir, ignore_errors=True)
        code, out, err = cli("report", *args, "--out", out_dir, "--results", results)
        assert code == 0 and out.strip(), err
        drawn.append((out, err, {p.name: p.read_bytes() for p in sorted(out_dir.glob("*.png"))}))
    assert drawn[0] == drawn[1] and drawn[0][2]


def test_the_plain_report_is_the_group_alone(cli, results):
    code, out, err = cli("report", "--format", "csv", "--results", results)
    assert code == 0 and out.startswith("dataset,model,recipe,"), err


@pytest.mark.parametrize("args,needle", [
    (["table", "9"], "unknown table '9'; valid choices: 2, 3, 4, 5"),
    (["--table", "9"], "unknown table '9'; valid choices: 2, 3, 4, 5"),
    (["missing", "VI"], "unknown table 'VI'; valid choices: 2, 3, 4, 5"),
    (["figure", "5"], "unknown figure '5'; valid choices: 1, 2, 3, 4, rho"),
    (["table"], "`report table` needs N; valid choices: 2, 3, 4, 5"),
    (["figure"], "`report figure` needs N; valid choices: 1, 2, 3, 4, rho"),
    (["tabel", "2"], "No such command 'tabel'"),
    (["table", "2", "--format", "xls"], "unknown format 'xls'; valid choices: rich, md, latex, csv, json"),
    (["missing", "2", "--format", "md"], "No such option: --format"),  # only the options that apply
    (["table", "2", "--per-trial"], "No such option: --per-trial"),
    (["figure", "2", "--trials", "3"], "No such option: --trials"),
    (["--dataset", "mnist-5k", "table", "2"], "--dataset goes after the subcommand"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, args, needle):
    code, out, err = cli("report", *args, "--results", tmp_path / "empty")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: ") and needle in err, err


def test_help_lists_the_subcommands_and_each_option_has_help(cli):
    code, out, _ = cli("report", "--help")
    assert code == 0 and all(name in out for name in ("table", "missing", "figure", "--table N"))
    command = typer.main.get_command(report_cmd.group())
    for sub in (command, *command.commands.values()):
        for param in sub.params:
            assert param.help, f"{sub.name}: {param.name} has no help"


@pytest.mark.parametrize("args", [["table", "2", "--paper"], ["missing", "4", "--per-trial"],
                                  ["figure", "rho", "--paper"], ["--table", "2", "--missing"]])
def test_a_grid_report_may_use_either_form(args):
    check_report_args(args, "grid")


@pytest.mark.parametrize("args,needle", [
    (["table", "9"], "unknown table '9'"),
    (["figure", "2", "--run", "x"], "--run selects the record of --figure 1 only"),
    (["missing", "2", "--format", "md"], "No such option: --format"),
    (["table", "2", "--results", "r"], "the sweep's own is used"),
])
def test_a_grid_report_is_checked_in_either_form(args, needle):
    with pytest.raises(PoisonbenchError, match="grid: ") as info:
        check_report_args(args, "grid")
    assert needle in str(info.value)


def test_the_sweep_gives_data_dir_only_to_the_forms_that_read_it():
    assert not report_cmd.takes_data_dir(["table", "2"])
    assert all(report_cmd.takes_data_dir(a) for a in (["missing", "2"], ["figure", "1"], ["--table", "2"], []))


def test_a_note_under_a_narrow_table_wraps_to_the_terminal_not_to_the_table(cli, results, monkeypatch):
    """Issue 69 item 4: a block's notes are lines of their own under the table, wrapped to the console's width
    (COLUMNS when stdout is no terminal), not the table's caption squeezed into its 28 columns."""
    monkeypatch.setenv("COLUMNS", "120")
    code, out, err = cli("report", "table", "2", "--method", "none", "--dataset", "mnist-5k", "--results", results)
    assert code == 0, err
    lines = out.splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    width = max(map(len, table))
    assert width < 40  # a narrow table: ρ and one method
    note = [line for line in lines[lines.index(table[-1]) + 1:] if line.strip()]
    assert note and note[0].startswith("reduced scale, not the paper's setting: mnist-5k")
    assert width < len(note[0]) <= 120 and len(note) == 1, out
    assert all(len(line) <= 120 for line in lines)


def test_a_long_note_wraps_at_the_width_columns_names(cli, results, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    code, out, err = cli("report", "table", "2", "--method", "none", "--dataset", "mnist-5k", "--results", results)
    assert code == 0, err
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("reduced scale"))
    assert len(lines) - start >= 2 and all(len(line) <= 60 for line in lines[start:])
