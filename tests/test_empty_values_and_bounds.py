"""Issue 68, item 4: an empty value never stands for the default, `--attack-params` refuses empty entries and
repeated keys, and every count that sizes memory or time has an upper bound (docs/commands.md, "Limits")."""

from __future__ import annotations

from pathlib import Path

import pytest

from poisonbench.core.errors import PoisonbenchError

from .conftest import defend_refused, one_line_error, write_npz


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    return write_npz(tmp_path_factory.mktemp("empty"), n=60)


# 1. empty values, on the CLI and in a grid (both through options.convert)


@pytest.mark.parametrize(("flag", "choice"), [
    ("--method", "ueraser"), ("--recipe", "quick"), ("--dataset", "mnist-5k"), ("--scenario", "untargeted"),
    ("--model", "convnet"), ("--attacks", "pgd"), ("--attack", "gm"), ("--augment", "crop-flip"),
    ("--precision", "bf16"), ("--npz-split", "VAL,TEST"), ("--poison-set", "ID"), ("--setup", "FILE"),
])
def test_an_empty_value_is_refused_on_the_cli(cli, npz, tmp_path, monkeypatch, flag, choice):
    monkeypatch.chdir(tmp_path)
    defend_refused(cli, npz, tmp_path, [flag, ""], flag)
    defend_refused(cli, npz, tmp_path, [flag, "  "], choice)


def write_grid(path: Path, npz: Path, line: str) -> Path:
    path.write_text(f'[defaults]\ndataset = "{npz}"\nrecipe = "quick"\nepochs = 1\n\n[[runs]]\n{line}\n')
    return path


@pytest.mark.parametrize(("line", "needles"), [
    ('method = ""', ("--method", "ueraser")),
    ("method = [[]]", ("--method", "ueraser")),
    ('method = ["none", ""]', ("--method", "ueraser")),
    ('recipe = ""', ("--recipe", "quick")),
    ('scenario = ""', ("--scenario", "untargeted")),
    ("attacks = [[]]", ("--attacks", "pgd")),
])
def test_an_empty_value_in_a_grid_is_refused_at_plan_time(cli, npz, tmp_path, line, needles):
    grid = write_grid(tmp_path / "g.toml", npz, line)
    results = tmp_path / "res"
    code, _, err = cli("sweep", "plan", grid, "--results", results)
    one_line_error(code, err, *needles)
    assert not results.exists()


def test_an_empty_milestones_list_still_means_no_decay():
    from poisonbench.experiment.options import spec_from_values

    assert spec_from_values({"milestones": ""}).recipe_overrides["milestones"] == []
    assert spec_from_values({"milestones": []}).recipe_overrides["milestones"] == []


def test_an_empty_string_for_a_parameter_is_refused_with_what_it_takes():
    from poisonbench.attacks import ATTACKS

    param = next(p for p in ATTACKS.get("gm").PARAMS if p.name == "surrogate_model")
    with pytest.raises(PoisonbenchError, match="--surrogate-model of attack 'gm' needs a value"):
        param.coerce("", "attack 'gm'")


# 2. --attack-params: empty entries, repeated keys


@pytest.mark.parametrize(("text", "needle"), [
    (",,,", "empty entry"),
    ("iterations=1,,restarts=1", "empty entry"),
    ("iterations=1,", "empty entry"),
    ("=3", "'=3'"),
    ("iterations=", "'iterations='"),
    ("surrogate_model=", "'surrogate_model='"),
    ("bases=random,bases=nearest", "bases"),
    ("restarts=1,restarts=1", "restarts"),
])
def test_attack_params_refuses_empty_entries_and_repeated_keys(text, needle):
    from poisonbench.experiment.options import parse_attack_params

    with pytest.raises(PoisonbenchError, match="--attack-params") as raised:
        parse_attack_params("gm", text)
    assert needle in str(raised.value) and "\n" not in str(raised.value)
    if "bases=random" in text or "restarts=1,restarts" in text:
        assert "twice" in str(raised.value)


def test_attack_params_refusal_on_the_cli(cli, npz, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    defend_refused(cli, npz, tmp_path, ["--attack", "gm", "--attack-params", "bases=random,bases=nearest"],
                   "bases")
    defend_refused(cli, npz, tmp_path, ["--attack", "gm", "--attack-params", ",,,"], "empty entry")


def test_valid_attack_params_are_parsed_as_before():
    from poisonbench.experiment.options import parse_attack_params

    assert parse_attack_params("gm", " restarts=1 , iterations=50 ") == {"restarts": 1, "iterations": 50}
    assert parse_attack_params("gm", "bases=nearest") == {"bases": "nearest"}


# 3. upper bounds on what sizes memory or time

# (kind, entry, parameter, its largest accepted value): one per parameter with a bound
BOUNDS = [
    ("method", "ueraser", "repeats", 100),
    ("method", "atda", "steps", 1000),
    ("method", "friends", "friendly_steps", 1000),
    ("attack", "gm", "restarts", 100),
    ("attack", "gm", "iterations", 40_000),
    ("attack", "gm", "ensemble", 100),
    ("attack", "gm", "pbatch", 10_000),
    ("attack", "gm", "surrogate_epochs", 1000),
    ("attack", "gm", "surrogate_batch_size", 10_000),
    ("attack", "bp", "iterations", 40_000),
    ("attack", "bp", "restarts", 100),
    ("attack", "fc", "iterations", 40_000),
    ("attack", "pgd", "steps", 1000),
    ("attack", "pgd", "batch_size", 10_000),
    ("attack", "dap", "steps", 1000),
    ("attack", "dap", "batch_size", 10_000),
    ("attack", "em", "steps", 1000),
    ("attack", "em", "train_batches", 1000),
    ("attack", "em", "max_iterations", 1000),
    ("attack", "em", "batch_size", 10_000),
    ("attack", "rem", "train_steps", 50_000),
    ("attack", "rem", "u_steps", 1000),
    ("attack", "rem", "a_steps", 1000),
    ("attack", "rem", "samples", 100),
    ("attack", "rem", "batch_size", 10_000),
    ("attack", "deepconfuse", "outer_epochs", 10_000),
    ("attack", "deepconfuse", "inner_epochs", 1000),
    ("attack", "deepconfuse", "batch_size", 10_000),
]


@pytest.mark.parametrize(("kind", "entry", "name", "largest"), BOUNDS)
def test_a_count_that_sizes_memory_or_time_has_a_stated_upper_bound(kind, entry, name, largest):
    from poisonbench.attacks import ATTACKS
    from poisonbench.cli.generated import option_help
    from poisonbench.core.params import GeneratedOption
    from poisonbench.defenses import DEFENSES

    param = next(p for p in (ATTACKS if kind == "attack" else DEFENSES).get(entry).PARAMS if p.name == name)
    assert param.coerce(largest, f"{kind} {entry!r}") == largest
    with pytest.raises(PoisonbenchError, match=f"{param.flag} of {kind} '{entry}' must be .*{largest:g}"):
        param.coerce(largest + 1, f"{kind} {entry!r}")
    shown = option_help(GeneratedOption(param.flag, name, {entry: param}))
    assert f"at most {largest:,}" in shown.lower(), shown


def test_defend_refuses_a_million_ueraser_repeats_in_one_line(cli, npz, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    defend_refused(cli, npz, tmp_path, ["--method", "ueraser", "--repeats", "1000000"], "--repeats")


@pytest.mark.parametrize(("args", "needle"), [
    (["--epochs", "1001"], "--epochs"),
    (["--batch-size", "10001"], "--batch-size"),
    (["--attack", "gm", "--budget", "0.1", "--attack-params", "restarts=101"], "restarts"),
])
def test_defend_bounds_the_recipe_and_the_attack(cli, npz, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    defend_refused(cli, npz, tmp_path, args, needle)


def test_the_recipe_bounds_accept_their_largest_value():
    from poisonbench.engine.recipes import MAX_BATCH_SIZE, MAX_EPOCHS, resolve_recipe

    assert (MAX_EPOCHS, MAX_BATCH_SIZE) == (1000, 10_000)
    recipe = resolve_recipe("mnist", "quick", epochs=MAX_EPOCHS, batch_size=MAX_BATCH_SIZE)
    assert (recipe.epochs, recipe.batch_size) == (MAX_EPOCHS, MAX_BATCH_SIZE)


def test_a_grid_value_beyond_a_bound_is_refused_at_plan_time(cli, npz, tmp_path):
    grid = write_grid(tmp_path / "g.toml", npz, 'method = "ueraser"\nrepeats = [5, 1000000]')
    code, _, err = cli("sweep", "plan", grid, "--results", tmp_path / "res")
    one_line_error(code, err, "--repeats", "100")


def test_craft_refuses_a_count_beyond_its_bound(cli, npz, tmp_path):
    results = tmp_path / "res"
    code, _, err = cli("craft", "--attack", "pgd", "--dataset", npz, "--steps", "5000", "--results", results)
    one_line_error(code, err, "--steps", "1000")
    assert not results.exists()


def test_the_help_states_the_bounds(cli):
    code, out, _ = cli("defend", "--help")
    flat = " ".join(out.replace("│", " ").split())
    assert code == 0
    for text in ("at most 1,000 epochs", "at most 10,000", "at most 1,000 trials"):
        assert text in flat, text
