"""The CLI's help (issue 84): `poisonbench --help`, `-h` and `--version` answer without importing torch (the root
group lists the commands from poisonbench.cli.summaries and imports a command's module only when it is chosen);
`defend --help` is short (the shared options in panels, ≤ 200 lines at 100 columns) and `defend --help-method NAME`
/ `craft --help-attack NAME` show exactly one entry's generated options, in a panel of their own."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import typer

from poisonbench.attacks import ATTACKS
from poisonbench.cli import main as cli_main
from poisonbench.cli.summaries import COMMAND_HELP
from poisonbench.defenses import DEFENSES
from poisonbench.experiment.craft import attack_options
from poisonbench.experiment.options import DEFEND_OPTIONS, method_options

PANEL = re.compile(r"^╭─ (.+?) ─+╮$")
ROW = re.compile(r"^│ (--[a-z0-9][a-z0-9-]*)")


@pytest.fixture
def wide(monkeypatch):
    """Rich lays the help out at 100 columns, whatever the terminal running the tests."""
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("TERMINAL_WIDTH", "100")


def panels(help_text: str) -> dict[str, list[str]]:
    """{panel title: the first flag of each of its rows} of a rich help page."""
    out: dict[str, list[str]] = {}
    title = None
    for line in help_text.splitlines():
        if (found := PANEL.match(line.strip())) is not None:
            title = found.group(1)
            out[title] = []
        elif title is not None and (row := ROW.match(line.strip())) is not None:
            out[title].append(row.group(1))
    return out


def flags(help_text: str) -> set[str]:
    return {flag for rows in panels(help_text).values() for flag in rows}


@pytest.mark.parametrize("args", [["--help"], ["-h"], [], ["--version"], ["nope"]],
                         ids=lambda a: " ".join(a) or "bare")
def test_the_root_answers_without_torch(args):
    """In a fresh interpreter: no torch (nor a command module) imported by the root's help, version or a bad name."""
    code = ("import sys; from poisonbench.cli.main import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('poisonbench.cli.') and m not in "
            "('poisonbench.cli.main', 'poisonbench.cli.summaries'))\n"
            "print('HEAVY', heavy, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stderr.splitlines()[-1] == "HEAVY []", done.stderr


def test_the_root_lists_every_command_with_its_own_help(cli, wide):
    """The listing (stand-ins) and the loaded commands agree: same names, in order, the same help text."""
    code, out, err = cli("--help")
    assert (code, err) == (0, "")
    listed = [line.strip("│ ").split()[0] for line in out.split("─ Commands ─")[1].splitlines()[1:]
              if line.startswith("│ ") and not line.startswith("│  ")]
    assert listed == list(cli_main.COMMANDS) == list(COMMAND_HELP)
    root = typer.main.get_command(cli_main.build_app())
    for name in COMMAND_HELP:
        loaded = root.get_command(None, name)
        assert loaded.name == name and loaded.help == COMMAND_HELP[name]
    assert root.get_command(None, "nope") is None


def test_an_unknown_command_is_one_line_naming_the_commands(cli):
    code, out, err = cli("nope")
    assert (code, out) == (2, "")
    assert err == f"Error: No such command 'nope'. Valid choices: {', '.join(COMMAND_HELP)}.\n"


def test_defend_help_is_short_and_has_every_shared_option(cli, wide):
    code, out, err = cli("defend", "--help")
    assert (code, err) == (0, "")
    assert len(out.splitlines()) <= 200
    shown = flags(out)
    shared = {option.flags[0] if isinstance(option.flags, (list, tuple)) else option.flags
              for option in DEFEND_OPTIONS}
    shared = {flag.split("/")[0] for flag in shared}
    assert shared <= shown
    generated = {option.flag for option in method_options()}
    assert not generated & shown  # a method's own options are under --help-method
    assert {"--help-method", "--prepare-only", "--json", "--help"} <= shown
    assert list(panels(out)) == ["Options", "Data", "Training recipe", "Untargeted poisons", "Targeted attack",
                                 "Trials", "Execution and output"]


@pytest.mark.parametrize("command, flag, registry, collect", [
    ("defend", "--help-method", DEFENSES, method_options),
    ("craft", "--help-attack", ATTACKS, attack_options),
], ids=["defend", "craft"])
def test_each_entry_help_shows_exactly_its_own_options(cli, wide, command, flag, registry, collect):
    options = collect()
    for name in registry:
        code, out, err = cli(command, flag, name)
        assert (code, err) == (0, ""), name
        own = {option.flag for option in options if name in option.owners}
        assert flags(out) == own | {flag, "--help"}, name
        for title, rows in panels(out).items():
            if title != "Options":
                assert title.endswith(" options") and name in title[:-len(" options")].split(", "), title
                assert all(name in next(o for o in options if o.flag == row).owners for row in rows)
        summary = registry.get(name)
        summary = getattr(summary, "summary_text", None) or summary.summary
        tail = "" if own else " (no options of its own)"
        kind = flag.removeprefix("--help-")
        assert out.endswith(f"{name}: {summary}{tail}\nThe options every {kind} shares: poisonbench {command} "
                            "--help.\n"), name


@pytest.mark.parametrize("command, flag, collect", [("defend", "--help-method", method_options),
                                                    ("craft", "--help-attack", attack_options)])
def test_all_shows_every_option_in_the_panel_of_its_owners(cli, wide, command, flag, collect):
    code, out, _ = cli(command, flag, "all")
    assert code == 0
    found = panels(out)
    for option in collect():
        title = f"{', '.join(option.owners)} options"
        assert option.flag in found[title], (option.flag, title)


@pytest.mark.parametrize("command, flag, kind, registry", [("defend", "--help-method", "method", DEFENSES),
                                                           ("craft", "--help-attack", "attack", ATTACKS)])
def test_an_unknown_entry_is_one_line_naming_the_choices(cli, command, flag, kind, registry):
    code, out, err = cli(command, flag, "nope")
    assert (code, out) == (2, "")
    assert err == (f"Error: Invalid value for '{flag}': unknown {kind} 'nope'; valid choices: "
                   f"{', '.join([*registry, 'all'])}\n")


def test_a_hidden_option_still_works(cli, tiny_npz, tmp_path):
    """Hidden from the short help, a method's option is parsed as before (a refusal names it, the run takes it)."""
    code, _, err = cli("defend", "--ratio", "0.5", "--dataset", tiny_npz, "--results", tmp_path / "x")
    assert code == 2 and "option --ratio does not apply to method 'none'" in err


@pytest.mark.parametrize("args", [[], ["data"], ["sweep"]], ids=lambda a: " ".join(a) or "bare")
def test_a_bare_group_prints_its_help_and_no_empty_error_line(cli, args):
    """click's convention for a group given no command: its help on stdout, exit 2; nothing on stderr."""
    code, out, err = cli(*args)
    assert (code, err) == (2, "")
    assert out.lstrip().startswith(f"Usage: {' '.join(['poisonbench', *args])}")
