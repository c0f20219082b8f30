"""Issue 82, items 4 and 5 and part of 6 (a hostile or careless user's probe): plugins cannot take the CLI down (an
import that calls `sys.exit(0)` or raises `KeyboardInterrupt`, a `PARAMS` or `name` property that raises, a dataset
loader that raises or returns garbage: one warning line or one error line naming the plugin); the API raises only
`PoisonbenchError` for bad arguments; every empty value is refused where options are parsed
(cli.options.refuse_empty_values); a repeated `--attack-params` merges its pairs; an environment default is not an
option the user gave; `report --strict` fails in the plain form too; `report --trials` has an upper bound; unreadable
manifests are named, never dropped silently; `env` shows plugin names escaped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from poisonbench import api
from poisonbench.attacks import ATTACKS
from poisonbench.attacks.base import Attack
from poisonbench.core import registry as registry_module
from poisonbench.core.errors import PoisonbenchError, PoisonbenchWarning
from poisonbench.core.params import Param
from poisonbench.core.registry import PluginGroup, Registry
from poisonbench.data.types import DatasetSpec
from poisonbench.defenses import DEFENSES
from poisonbench.engine.hooks import Defense

from .conftest import one_line_error, write_npz
from .test_plugins import dist_info, points, poisonbench_in_child, without_torch_note

# --- 4. plugins ------------------------------------------------------------------------------------------------

IMPORT_TIME = {
    "exits": "import sys\nsys.exit(0)\n",
    "interrupts": "raise KeyboardInterrupt('at import')\n",
    "generator": "raise GeneratorExit\n",
}


@pytest.fixture
def import_site(tmp_path, monkeypatch):
    """A package `pb_hostile` on the path whose modules do what IMPORT_TIME says when imported (forgotten again
    afterwards)."""
    site = tmp_path / "hostile"
    package = site / "pb_hostile"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name, body in IMPORT_TIME.items():
        (package / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(site))
    yield site
    for key in [k for k in sys.modules if k.startswith("pb_hostile")]:
        del sys.modules[key]


def defense_registry(monkeypatch, found) -> Registry:
    """A registry of `none` alone that takes plugins as the CLI's DEFENSES does (its plugin group: the same checks)."""
    monkeypatch.setattr(registry_module, "entry_points_of", lambda group: found)
    return Registry.of("method", (Defense,), DEFENSES._group)


@pytest.mark.parametrize(("module", "why"), [
    ("exits", "failed to import: SystemExit: 0"),
    ("interrupts", "failed to import: KeyboardInterrupt: at import"),
    ("generator", "failed to import: GeneratorExit"),
])
def test_a_plugin_that_exits_or_interrupts_at_import_is_one_warning(import_site, tmp_path, monkeypatch, module,
                                                                    why):
    found = points(tmp_path / "meta", "pb-hostile", "6.6", {"bad": f"pb_hostile.{module}:Bad"})
    reg = defense_registry(monkeypatch, found)
    with pytest.warns(PoisonbenchWarning) as caught:
        assert reg.names() == ["none"]
    assert [str(w.message) for w in caught] == [
        f"plugin pb-hostile 6.6 (poisonbench.defenses: bad = pb_hostile.{module}:Bad) left out: {why}"]


class Raises(type):
    """A metaclass whose `PARAMS` or `name`, read on the class, raises."""

    @property
    def PARAMS(cls):
        if cls.__dict__.get("bad_params"):
            raise RuntimeError("PARAMS raised\nsecond line")
        return ()

    @property
    def name(cls):
        if cls.__dict__.get("bad_name"):
            raise ValueError("name raised")
        return cls.__dict__.get("entry", "x")


class RaisesInSummary(type):
    """A metaclass whose one-line summaries (a defense's `summary_text`, an attack's `summary`), read on the class
    when the CLI builds `--help-method` / `--help-attack`, raise."""

    @property
    def summary_text(cls):
        raise LookupError("summary_text raised")

    @property
    def summary(cls):
        raise LookupError("summary raised")


class RaisingSummary(Defense, metaclass=RaisesInSummary):
    name = "raising-summary"
    PARAMS = ()


class SummaryNotText(Defense):
    name = "summary-not-text"
    PARAMS = ()
    summary_text = ("a", "tuple")


class RaisingAttackSummary(Attack, metaclass=RaisesInSummary):
    name = "raising-summary"
    PARAMS = ()


class RaisingParams(Defense, metaclass=Raises):
    bad_params = True
    entry = "raising-params"


class RaisingName(Defense, metaclass=Raises):
    bad_name = True


class NameNotText(Defense):
    name = 7
    PARAMS = ()


class Fine(Defense):
    name = "fine"
    PARAMS = (Param("strength", float, 1.0, "How strong."),)


@pytest.mark.parametrize(("entry", "attr", "why"), [
    ("raising-params", "RaisingParams", "its entry raised when checked: RuntimeError: PARAMS raised"),
    ("raising-name", "RaisingName", "its entry raised when checked: ValueError: name raised"),
    ("seven", "NameNotText", "its method names itself 7, not 'seven' as its entry point"),
    ("raising-summary", "RaisingSummary", "its entry raised when checked: LookupError: summary_text raised"),
    ("summary-not-text", "SummaryNotText",
     f"<class '{__name__}.SummaryNotText'> is not a subclass of poisonbench.engine.hooks.Defense with PARAMS (a "
     "tuple of Param) and summary_text (a str)"),
])
def test_a_plugin_whose_attributes_raise_when_read_is_one_warning(tmp_path, monkeypatch, entry, attr, why):
    found = points(tmp_path / "meta", "pb-test", "1.0", {entry: f"{__name__}:{attr}", "fine": f"{__name__}:Fine"})
    reg = defense_registry(monkeypatch, found)
    with pytest.warns(PoisonbenchWarning) as caught:
        assert reg.names() == ["none", "fine"]  # the fit plugin after it is still taken
    assert [str(w.message) for w in caught] == [
        f"plugin pb-test 1.0 (poisonbench.defenses: {entry} = {__name__}:{attr}) left out: {why}"]


def test_an_attack_plugin_whose_summary_raises_is_one_warning(tmp_path, monkeypatch):
    """`--help-attack` reads every attack's `summary` when the CLI is built: one that raises is left out at load."""
    found = points(tmp_path / "meta", "pb-test", "1.0", {"raising-summary": f"{__name__}:RaisingAttackSummary"},
                   group="poisonbench.attacks")
    monkeypatch.setattr(registry_module, "entry_points_of", lambda group: found)
    reg = Registry.of("attack", (), ATTACKS._group)
    with pytest.warns(PoisonbenchWarning) as caught:
        assert reg.names() == []
    assert [str(w.message) for w in caught] == [
        f"plugin pb-test 1.0 (poisonbench.attacks: raising-summary = {__name__}:RaisingAttackSummary) left out: "
        "its entry raised when checked: LookupError: summary raised"]


def test_the_cli_survives_plugins_that_exit_or_interrupt_at_import(tmp_path):
    """Before: `sys.exit(0)` at a plugin's import made every command exit 0 with no output; KeyboardInterrupt, a
    traceback. Now: each is one warning, and the command does its work."""
    site = tmp_path / "site"
    dist_info(site, "pb-hostile", "6.6", {"poisonbench.defenses": {"exits": "pb_hostile.exits:Bad",
                                                                   "interrupts": "pb_hostile.interrupts:Bad"}})
    package = site / "pb_hostile"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("exits", "interrupts"):
        (package / f"{name}.py").write_text(IMPORT_TIME[name])
    done = poisonbench_in_child(tmp_path, "env", path=[site])
    assert done.returncode == 0 and "poisonbench environment" in done.stdout, done.stderr
    assert without_torch_note(done.stderr) == [
        "Warning: plugin pb-hostile 6.6 (poisonbench.defenses: exits = pb_hostile.exits:Bad) left out: failed to "
        "import: SystemExit: 0",
        "Warning: plugin pb-hostile 6.6 (poisonbench.defenses: interrupts = pb_hostile.interrupts:Bad) left out: "
        "failed to import: KeyboardInterrupt: at import"]
    done = poisonbench_in_child(tmp_path, "defend", "--method", "exits", "--results", "r", path=[site])
    assert done.returncode == 2 and "Error: unknown method 'exits'; valid choices: none, hint" in done.stderr
    assert not (tmp_path / "r").exists()


# a dataset plugin's loader: what each returns (or raises)

def arrays(n: int = 40) -> dict:
    rng = np.random.default_rng(0)
    return {"x": rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), "y": np.arange(n) % 4}


def loader_of(result):
    def load(data_dir, download):
        if isinstance(result, BaseException):
            raise result
        return result
    return load


def spec(name: str, result) -> DatasetSpec:
    return DatasetSpec(name, "a plugin's dataset", "mnist", 4, (0.0,), (1.0,), (30, 2, 8), loader_of(result),
                       val_size=2, test_size=8, reads_folder=False)


LOADERS = {
    "good": spec("good", (arrays(), "the plugin's own")),
    "raises": spec("raises", RuntimeError("disk on fire\nmore")),
    "exits": spec("exits", SystemExit(3)),
    "refuses": spec("refuses", PoisonbenchError("its own one line")),
    "none": spec("none", None),
    "no-source": spec("no-source", (arrays(), 5)),
    "list-x": spec("list-x", ({"x": [[1]], "y": np.zeros(1, int)}, "s")),
    "float-x": spec("float-x", ({"x": np.zeros((40, 8, 8)), "y": np.arange(40) % 4}, "s")),
    "short-y": spec("short-y", ({"x": arrays()["x"], "y": np.arange(39) % 4}, "s")),
    "negative-y": spec("negative-y", ({"x": arrays()["x"], "y": np.arange(40) % 4 - 1}, "s")),
    "no-test-x": spec("no-test-x", ({"train_x": arrays()["x"], "train_y": arrays()["y"], "test_x": None}, "s")),
}


@pytest.fixture
def loader_plugins(tmp_path, monkeypatch):
    """`poisonbench.data.load`'s registry, replaced by one whose plugins (pb-data 2.0) are LOADERS."""
    import poisonbench.data.load as load_module

    found = points(tmp_path / "meta", "pb-data", "2.0", {k: f"{__name__}:LOADERS_{k.replace('-', '_')}"
                                                         for k in LOADERS}, group="poisonbench.datasets")
    for key, value in LOADERS.items():
        monkeypatch.setitem(globals(), f"LOADERS_{key.replace('-', '_')}", value)
    monkeypatch.setattr(registry_module, "entry_points_of", lambda group: found)
    reg = Registry.of("dataset", (), PluginGroup("poisonbench.datasets", lambda e: isinstance(e, DatasetSpec),
                                                 "a DatasetSpec"))
    monkeypatch.setattr(load_module, "DATASETS", reg)
    return reg


@pytest.mark.parametrize(("name", "why"), [
    ("raises", "its loader failed: RuntimeError: disk on fire"),
    ("exits", "its loader failed: SystemExit: 3"),
    ("refuses", "its own one line"),
    ("none", "its loader returned NoneType, not (arrays, source): a dict of numpy arrays and a str"),
    ("no-source", "its loader returned tuple, not (arrays, source): a dict of numpy arrays and a str"),
    ("list-x", "its loader returned no numpy array 'x'; it returns 'x' and 'y', or 'train_x', 'train_y', "
               "'test_x' and 'test_y'"),
    ("float-x", "'x': it must be uint8 N×H×W or N×H×W×C with C 1 or 3 and H, W >= 1, got float64 (40, 8, 8)"),
    ("short-y", "'y' must hold one int label >= 0 per image of 'x' (40), got int64 (39,)"),
    ("negative-y", "'y' must hold one int label >= 0 per image of 'x' (40), got int64 (40,)"),
    ("no-test-x", "its loader returned no numpy array 'test_x'"),
])
def test_a_dataset_plugins_bad_loader_is_one_line_naming_the_plugin(loader_plugins, name, why):
    from poisonbench.data import load_dataset

    with pytest.raises(PoisonbenchError) as raised:
        load_dataset(name)
    message = str(raised.value)
    assert message.startswith(f"dataset {name!r} of plugin pb-data 2.0: {why}") and "\n" not in message, message


def test_a_dataset_plugins_good_loader_still_loads(loader_plugins):
    from poisonbench.data import load_dataset

    data = load_dataset("good")
    assert (len(data.train), len(data.val), len(data.test)) == (30, 2, 8) and data.source == "the plugin's own"


def test_data_info_on_a_bad_loader_is_one_line(cli, loader_plugins):
    code, _, err = cli("data", "info", "raises")
    one_line_error(code, err, "Error: dataset 'raises' of plugin pb-data 2.0: its loader failed: RuntimeError: "
                              "disk on fire")


# --- 4. the API: only PoisonbenchError for bad arguments --------------------------------------------------------

@pytest.mark.parametrize(("call", "message"), [
    (lambda: api.craft("pgd", dataset=5), "craft(): dataset takes str | None, got 5 (int)"),
    (lambda: api.report(5), "report(): results takes str | None, got 5 (int)"),
    (lambda: api.plan(None), "plan(): grid takes str, got None (NoneType)"),
    (lambda: api.report(bogus=1), "report(): got an unexpected keyword argument 'bogus'; its arguments: results, "
                                  "table, dataset, method, recipe, model, epochs, attacks, poisons, trials, paper, "
                                  "diff, ci, paired, wilson, rho, poison_ratio"),
    (lambda: api.report("a", "b"), "report(): too many positional arguments; its arguments: results,"),
    (lambda: api.plan(), "plan(): missing a required argument: 'grid'; its arguments: grid,"),
    (lambda: api.defend(trials="3"), "defend(): trials takes int, got '3' (str)"),
    (lambda: api.defend(trials=True), "defend(): trials takes int, got True (bool)"),
    (lambda: api.defend(milestones=[30, "x"]), "defend(): milestones takes str | list[int] | None, got [30, 'x']"),
    (lambda: api.defend(npz_split=(0.1,)), "defend(): npz_split takes str | tuple[float, float] | None, got (0.1,)"),
    (lambda: api.defend(poisons={"pgd": 5}), "defend(): poisons takes str | dict[str, str] | None, got {'pgd': 5}"),
    (lambda: api.craft("pgd", progress=3), "craft(): progress takes bool | a callable, got 3 (int)"),
    (lambda: api.report(table=2.0), "report(): table takes str | int | None, got 2.0 (float)"),
], ids=["craft-dataset-5", "report-5", "plan-None", "report-bogus", "report-two-positional", "plan-no-grid",
        "defend-trials-text", "defend-trials-bool", "defend-milestones", "defend-npz-split", "defend-poisons",
        "craft-progress", "report-table-float"])
def test_the_api_raises_only_poisonbench_errors_for_bad_arguments(call, message):
    with pytest.raises(PoisonbenchError) as raised:
        call()
    assert str(raised.value).startswith(message), str(raised.value)


def test_the_api_still_takes_paths_numbers_and_lists(tmp_path):
    """A pathlib.Path for a str, an int for a float, a list for comma-separated text: as before."""
    with pytest.raises(PoisonbenchError, match="no run records found"):
        api.report(tmp_path / "empty")  # a Path: past the check, refused for what it holds
    with pytest.raises(PoisonbenchError, match="nope"):  # an int rho, a list of methods: past the check
        api.report(tmp_path, table=2, method=["nope"], rho=1)


# --- 5. --strict in the plain form ------------------------------------------------------------------------------

def test_strict_fails_the_plain_report_when_the_runs_shown_pool_two_crafts(cli, tmp_path):
    from .test_run_identity import IDS, craft, mix_record, workspace

    mixed, single = tmp_path / "mixed", tmp_path / "single"
    workspace(mixed, [mix_record(t, craft("a")) for t in range(3)] + [mix_record(t, craft("b")) for t in (3, 4)])
    workspace(single, [mix_record(t, craft("a")) for t in range(3)])
    code, out, err = cli("report", "--results", mixed, "--strict")
    assert code == 1 and "poisonbench report" in out  # the output first, then the exit
    assert f"PoisonSet {IDS['pgd'][:8]} in 2 crafts among the runs shown" in err
    assert err.strip().endswith("named above); exit 1")
    code, _, err = cli("report", "--results", mixed)  # without --strict: the note, exit 0
    assert code == 0 and f"PoisonSet {IDS['pgd'][:8]} in 2 crafts" in err
    code, _, err = cli("report", "--results", single, "--strict", "--format", "json")
    assert code == 0 and "crafts" not in err


def test_the_api_tables_notes_are_the_ones_the_cli_prints(cli, tmp_path):
    """`api.report(table=…)` keeps the notes the CLI prints under the table: DP-SGD's ε and the mixed crafts."""
    from .helpers import dpsgd_mix_workspace
    from .report_records import make_record
    from .test_run_identity import IDS

    root = tmp_path / "res"
    dpsgd_mix_workspace(root)
    assert make_record  # the records' shape: tests/report_records.py
    frame = api.report(str(root), table=2)
    notes = frame.attrs["notes"]
    epsilon = [n for n in notes if "ε" in n and "2.5" in n]
    crafts = [n for n in notes if f"PoisonSet {IDS['pgd'][:8]} in 2 crafts among the runs shown" in n]
    assert epsilon and crafts and frame.attrs["mixed"]
    code, out, err = cli("report", "table", "2", "--results", root, "--format", "md")
    assert code == 0, err
    for note in notes:
        assert note in out + err, note


# --- 5. empty values, refused where options are parsed ----------------------------------------------------------

@pytest.fixture
def tiny_grid(tmp_path) -> Path:
    """A grid that trains one quick run (were it run): what an empty `--emit-sbatch` ran locally before."""
    npz = write_npz(tmp_path, n=60)
    grid = tmp_path / "g.toml"
    grid.write_text(f'[defaults]\ndataset = "{npz}"\nrecipe = "quick"\nepochs = 1\n\n[[runs]]\nmethod = "none"\n')
    return grid


LEAVE_OUT = " (leave the option out for its default)"


@pytest.mark.parametrize(("args", "message"), [
    (["report", "figure", "1", "--out", ""], "--out needs a value, got an empty one (''); a directory" + LEAVE_OUT),
    (["report", "table", "matrix", "--out", " "], "--out needs a value, got an empty one (' '); a directory"
                                                  + LEAVE_OUT),
    (["report", "figure", "1", "--data-dir", ""], "--data-dir needs a value, got an empty one (''); a directory"
                                                  + LEAVE_OUT),
    (["data", "info", "mnist-5k", "--data-dir", ""], "--data-dir needs a value, got an empty one (''); a directory"
                                                     + LEAVE_OUT),
    (["craft", "--attack", "pgd", "--data-dir", ""], "--data-dir needs a value, got an empty one (''); a directory"
                                                     + LEAVE_OUT),
    (["env", "--device", ""], "--device needs a value, got an empty one (''); valid choices: auto, cpu, cuda, "
                              "cuda:N" + LEAVE_OUT),
    (["records", "pack", "", "OUT.jsonl.gz"], "DIR needs a value, got an empty one (''); give DIR"),
    (["report", "table", "  "], "N needs a value, got an empty one ('  '); give N"),
    (["report", "html", "x.html", "--records", ""], "--records needs a value, got an empty one (''); give FILE"
                                                    + LEAVE_OUT),
    (["poisons", "show", ""], "POISON_ID needs a value, got an empty one (''); give a value"),
])
def test_an_empty_value_is_refused_in_one_line(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*args)
    one_line_error(code, err)
    assert err.strip() == f"Error: {message}"
    assert list(tmp_path.iterdir()) == []  # nothing written: no OUT, no workspace


@pytest.mark.parametrize(("flag", "message"), [
    ("--emit-sbatch", "--emit-sbatch needs a value, got an empty one (''); give FILE" + LEAVE_OUT),
    ("--partition", "--partition needs a value, got an empty one (''); a SLURM partition" + LEAVE_OUT),
])
def test_an_empty_sweep_option_is_refused_and_nothing_trains(cli, tmp_path, tiny_grid, flag, message):
    """Before: `--emit-sbatch ''` trained the whole grid locally."""
    results = tmp_path / "res"
    code, _, err = cli("sweep", "run", tiny_grid, flag, "", "--results", results)
    one_line_error(code, err)
    assert err.strip() == f"Error: {message}" and not results.exists()


def test_an_empty_value_from_the_environment_names_its_variable(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("POISONBENCH_DATASET", "   ")
    code, _, err = cli("craft", "--attack", "pgd", "--results", tmp_path / "r")
    one_line_error(code, err, "--dataset (from $POISONBENCH_DATASET) needs a value, got an empty one ('   ')")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["", "  "])
def test_blank_results_is_refused(cli, tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("poisons", "list", "--results", value)
    one_line_error(code, err, f"--results is empty ({value!r}); pass a directory")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", [",", " , ", "30,,60", "30,", ",30"])
def test_milestones_with_an_empty_entry_are_refused(text):
    from poisonbench.experiment.options import spec_from_values

    with pytest.raises(PoisonbenchError) as raised:
        spec_from_values({"milestones": text})
    assert str(raised.value) == (f"--milestones: an empty entry in {text!r}; give comma-separated integers (epochs), "
                                 "or '' for no decay")


def test_milestones_still_parse_and_empty_still_means_no_decay(cli, tmp_path):
    from poisonbench.experiment.options import spec_from_values

    assert spec_from_values({"milestones": " 30, 60 "}).recipe_overrides["milestones"] == [30, 60]
    assert spec_from_values({"milestones": ""}).recipe_overrides["milestones"] == []
    code, _, err = cli("defend", "--milestones", ",", "--results", tmp_path / "r")
    one_line_error(code, err, "--milestones: an empty entry in ','")


def test_an_empty_value_on_the_report_a_sweep_runs_is_refused():
    from poisonbench.cli.report import check_report_args

    with pytest.raises(PoisonbenchError, match=r"^--out needs a value, got an empty one \(''\)"):
        check_report_args(["table", "matrix", "--out", ""])


# --- 5. repeated options ----------------------------------------------------------------------------------------

@pytest.fixture
def defend_values(monkeypatch):
    """The values `defend`'s command hands to the spec (captured; nothing runs)."""
    import poisonbench.cli.defend as defend_module

    seen = {}

    def capture(values):
        seen.update(values)
        raise PoisonbenchError("captured")

    monkeypatch.setattr(defend_module, "spec_from_values", capture)
    return seen


def test_repeated_attack_params_merge_their_pairs(cli, defend_values):
    """Before: the last `--attack-params` replaced the first, silently."""
    from poisonbench.experiment.options import spec_from_values

    code, _, err = cli("defend", "--attack", "gm", "--attack-params", "restarts=1", "--attack-params",
                       "iterations=50,bases=nearest")
    assert code == 2 and "captured" in err
    spec = spec_from_values({k: v for k, v in defend_values.items() if k in ("attack", "attack_params")})
    assert spec.attack_params == {"restarts": 1, "iterations": 50, "bases": "nearest"}


def test_an_attack_param_given_in_two_attack_params_is_refused(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("defend", "--attack", "gm", "--attack-params", "restarts=1", "--attack-params", "restarts=2",
                       "--results", tmp_path / "r")
    one_line_error(code, err)
    assert err.strip() == ("Error: --attack-params: restarts given twice in 'restarts=1,restarts=2'; give each "
                           "option once")
    assert list(tmp_path.iterdir()) == []


def test_attack_params_left_out_is_none(cli, defend_values):
    cli("defend", "--attack", "gm")
    assert not defend_values["attack_params"]


# --- 5. an environment default is not an option the user gave ---------------------------------------------------

def test_report_html_records_with_results_in_the_environment(cli, tmp_path, monkeypatch):
    from poisonbench.experiment.packed_records import pack

    from .report_records import synthetic_records, write_records

    packed = tmp_path / "records.jsonl.gz"
    pack(write_records(tmp_path / "res", synthetic_records()), packed)
    monkeypatch.setenv("POISONBENCH_RESULTS", str(tmp_path / "elsewhere"))
    code, out, err = cli("report", "html", tmp_path / "page.html", "--records", packed, "--no-figures")
    assert code == 0, err
    assert out.strip() == str(tmp_path / "page.html") and (tmp_path / "page.html").is_file()
    assert not (tmp_path / "elsewhere").exists()
    code, _, err = cli("report", "html", tmp_path / "two.html", "--records", packed, "--results", tmp_path / "res")
    one_line_error(code, err, "pass either --results or --records, not both")


# --- 5. report --trials has an upper bound ----------------------------------------------------------------------

def test_report_trials_is_bounded_at_the_defend_limit(cli, tmp_path):
    from poisonbench.cli.report import check_trials
    from poisonbench.experiment.spec import MAX_TRIALS

    assert MAX_TRIALS == 1000
    check_trials(1) is None and check_trials(MAX_TRIALS) is None  # noqa: B015 (they raise nothing)
    for bad in (0, MAX_TRIALS + 1, 10**6):
        with pytest.raises(PoisonbenchError) as raised:
            check_trials(bad)
        assert str(raised.value) == ("--trials must be a positive integer, at most 1,000 (the most `defend --trials` "
                                     f"runs in one call), got {bad}")
    empty = tmp_path / "res"
    code, _, err = cli("report", "missing", "2", "--per-trial", "--trials", "1000001", "--results", empty)
    one_line_error(code, err, "--trials must be a positive integer, at most 1,000")
    code, _, err = cli("report", "html", tmp_path / "p.html", "--trials", "1001", "--results", empty)
    one_line_error(code, err, "at most 1,000")
    from .report_records import synthetic_records, write_records

    root = write_records(tmp_path / "ok", synthetic_records())
    code, out, err = cli("report", "table", "2", "--trials", "1000", "--results", root, "--format", "md")
    assert code == 0 and "(n=" in out, err


# --- 6. unreadable manifests are named; env escapes plugin names ------------------------------------------------

@pytest.fixture
def broken_manifests(tmp_path) -> Path:
    root = tmp_path / "ws"
    (root / "runs").mkdir(parents=True)
    for pid, how in (("0" * 16, "not json"), ("1" * 16, "a directory"), ("2" * 16, "a link to nowhere")):
        folder = root / "poisons" / pid
        folder.mkdir(parents=True)
        if how == "not json":
            (folder / "manifest.json").write_text("{bad")
        elif how == "a directory":
            (folder / "manifest.json").mkdir()
        else:
            (folder / "manifest.json").symlink_to(tmp_path / "nowhere")
    return root


def test_poisons_list_names_each_unreadable_manifest(cli, broken_manifests):
    code, out, err = cli("poisons", "list", "--results", broken_manifests, "--json")
    assert code == 0 and json.loads(out) == []
    assert err.splitlines() == [
        "Warning: left out: poison set 0000000000000000: manifest.json: not valid JSON (Expecting property name "
        "enclosed in double quotes at column 2)",
        "Warning: left out: poison set 1111111111111111: manifest.json: unreadable (Is a directory)",
        "Warning: left out: poison set 2222222222222222: manifest.json: unreadable (No such file or directory)"]


def test_records_pack_names_each_unreadable_manifest(cli, broken_manifests, tmp_path):
    code, out, err = cli("records", "pack", broken_manifests, tmp_path / "out.jsonl.gz", "--json")
    assert code == 0 and json.loads(out)["poison_manifests"] == 0
    skipped = [line.split(":")[0] for line in err.splitlines()]
    assert skipped == [f"skipped {broken_manifests}/poisons/{c * 16}/manifest.json" for c in "012"]
    assert len(json.loads(out)["skipped"]) == 3


def test_env_shows_a_plugins_names_escaped(cli, monkeypatch):
    import poisonbench.cli.env as env

    monkeypatch.setattr(env, "plugin_parts", lambda: [{"kind": "method", "name": "evil\x1b]0;owned\x07",
                                                       "plugin": "pb-\x1b[2Jx", "version": "1\x9b"}])
    code, out, _ = cli("env")
    assert code == 0 and "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    flat = "".join(out.split())
    assert "evil\\x1b]0;owned\\x07" in flat and "pb-\\x1b[2Jx" in flat and "1\\x9b" in flat


# --- pins: an optional package that raises on import; --setup-index at the number of setups --------------------

@pytest.mark.parametrize(("body", "why"), [
    ("raise RuntimeError('built for another torch')\n", "RuntimeError: built for another torch"),
    ("import sys\nsys.exit(0)\n", "SystemExit"),
])
def test_an_optional_package_that_raises_on_import_is_one_line(cli, tmp_path, monkeypatch, body, why):
    site = tmp_path / "broken"
    (site / "pylatexenc").mkdir(parents=True)
    (site / "pylatexenc" / "__init__.py").write_text(body)
    for key in [k for k in sys.modules if k == "pylatexenc" or k.startswith("pylatexenc.")]:
        monkeypatch.delitem(sys.modules, key)
    monkeypatch.syspath_prepend(str(site))
    import importlib

    render = importlib.import_module("poisonbench.report.tables.render")  # the module (the package has a render())
    render.latex_encoder.cache_clear()  # an earlier test of this process may have built the encoder (cached)
    from .report_records import synthetic_records, write_records

    root = write_records(tmp_path / "res", synthetic_records())
    code, out, err = cli("report", "table", "2", "--results", root, "--format", "latex")
    one_line_error(code, err, "the LaTeX format of the reports (report --format latex) needs the package "
                              f"'pylatexenc', which is installed but fails to import: {why}")
    assert out == ""
    for key in [k for k in sys.modules if k == "pylatexenc" or k.startswith("pylatexenc.")]:
        del sys.modules[key]
    render.latex_encoder.cache_clear()


def test_setup_index_at_the_number_of_setups_is_one_line(cli, tmp_path):
    from poisonbench.attacks.targets import setup_target
    from poisonbench.data import load_dataset

    npz = write_npz(tmp_path, n=200)
    data = load_dataset(str(npz))
    true = int(data.test.y[5])
    intended = (true + 1) % 4
    bases = [int(data.train.indices[r]) for r in np.flatnonzero(data.train.y.numpy() == intended)[:2]]
    one = {"target_class": true, "target_index": int(data.test.indices[5]), "base_class": intended,
           "base_indices": bases}
    setups = tmp_path / "setups.json"
    setups.write_text(json.dumps({"setups": [one, one]}))
    assert setup_target(data, setups, 1) is not None  # the last setup: taken
    with pytest.raises(PoisonbenchError) as raised:
        setup_target(data, setups, 2)
    assert str(raised.value) == "--setup-index 2 is outside the setup file's [0, 2)"
    results = tmp_path / "res"
    code, _, err = cli("craft", "--attack", "bp", "--dataset", npz, "--setup", setups, "--setup-index", "2",
                       "--results", results)
    one_line_error(code, err, "--setup-index 2 is outside the setup file's [0, 2)")
    assert not results.exists()
