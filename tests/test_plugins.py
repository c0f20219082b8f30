"""Plugins through entry points (poisonbench.core.registry, "Plugins"; docs/extending.md, "A plugin package").

No pip: each test writes a distribution's metadata (`<name>-<version>.dist-info/METADATA` and `entry_points.txt`)
into a temporary folder, which importlib.metadata finds on the path. The CLI runs in a child process with that
folder on its PYTHONPATH, so that a plugin's entries never reach this process's registries (which the
registry-driven tests read); the registry's own behaviour is tested on fresh registries, the lookup stubbed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import poisonbench
from poisonbench.core import registry as registry_module
from poisonbench.core.errors import PoisonbenchError, PoisonbenchWarning
from poisonbench.core.params import Param, collect_options, subclass_with_params
from poisonbench.core.registry import PluginGroup, Registry, plugins_used
from poisonbench.engine.hooks import Defense

ROOT = Path(poisonbench.__file__).parent.parent
EXAMPLE = ROOT / "examples" / "poisonbench-plugin-example"
FAST = ["--recipe", "quick", "--epochs", "1", "--batch-size", "64", "--compile", "off", "--device", "cpu"]


def dist_info(site: Path, name: str, version: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """The metadata of distribution `name` under `site`: {group: {entry name: "module:attr"}}."""
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    sections = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items())
                for group, entries in entry_points.items()]
    (folder / "entry_points.txt").write_text("".join(sections))
    return folder


def poisonbench_in_child(cwd: Path, *args: str, path: list[Path]) -> subprocess.CompletedProcess:
    """`poisonbench ARGS` in a child process whose path starts with `path` (then this checkout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in [*path, ROOT])}
    return subprocess.run([sys.executable, "-m", "poisonbench.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def example_site(tmp_path: Path) -> list[Path]:
    """The example plugin as if pip-installed: its metadata under a site folder, its package on the path."""
    site = tmp_path / "site"
    dist_info(site, "poisonbench-plugin-example", "0.1.0",
              {"poisonbench.defenses": {"median-filter": "pb_example.median:MedianFilter"}})
    return [site, EXAMPLE]


def test_the_example_plugins_declaration_is_the_one_the_tests_install():
    """The example's pyproject.toml declares what `example_site` writes (name, version, entry point)."""
    import tomllib

    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    assert (project["name"], project["version"]) == ("poisonbench-plugin-example", "0.1.0")
    assert project["entry-points"] == {"poisonbench.defenses": {"median-filter": "pb_example.median:MedianFilter"}}


def test_the_example_plugins_defense_runs_end_to_end_and_its_record_names_the_plugin(example_site, tiny_npz,
                                                                                      tmp_path):
    done = poisonbench_in_child(tmp_path, "defend", "--dataset", str(tiny_npz), *FAST, "--method", "median-filter",
                                "--radius", "2", "--results", "r", "--json", path=example_site)
    assert done.returncode == 0, done.stderr
    assert not [line for line in without_torch_note(done.stderr) if "Warning" in line]
    record = json.loads((tmp_path / "r" / "runs" / f"{json.loads(done.stdout)['run_id']}.json").read_text())
    assert record["config"]["defense"] == {"method": "median-filter", "radius": 2}
    assert record["env"]["plugins"] == {"poisonbench-plugin-example": "0.1.0"}
    assert record["defense"] == {"radius": 2}


def test_the_example_plugins_defense_and_its_option_are_in_the_help_and_env(example_site, tmp_path):
    done = poisonbench_in_child(tmp_path, "defend", "--help-method", "median-filter", path=example_site)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.replace("│", " ").split())
    assert "median-filter: median filter of every training batch" in text
    assert "--radius <int> median-filter: Radius r of the median window" in text
    env = poisonbench_in_child(tmp_path, "env", "--json", path=example_site)
    assert env.returncode == 0, env.stderr
    assert json.loads(env.stdout)["plugins"] == [
        {"kind": "method", "name": "median-filter", "plugin": "poisonbench-plugin-example", "version": "0.1.0"}]


def test_a_run_of_built_in_parts_has_no_plugins_field_and_keeps_its_run_id(cli, example_site, tiny_npz, tmp_path):
    """With a plugin installed, a run of built-in parts is the run it is without one: same run id (the child finds
    the record this process wrote and skips the run), no `plugins` field."""
    args = ["defend", "--dataset", str(tiny_npz), *FAST, "--method", "none", "--results", str(tmp_path / "r"),
            "--json"]
    code, out, err = cli(*args)
    assert code == 0, err
    rid = json.loads(out)["run_id"]
    assert "plugins" not in json.loads((tmp_path / "r" / "runs" / f"{rid}.json").read_text())["env"]
    with_plugin = poisonbench_in_child(tmp_path, *args, path=example_site)
    assert with_plugin.returncode == 0, with_plugin.stderr
    assert json.loads(with_plugin.stdout)["run_id"] == rid
    assert json.loads(with_plugin.stdout)["status"] != "ran"


BROKEN = {
    "poisonbench.defenses": {"exploding": "pb_broken.boom:Exploding", "hint": "pb_broken.parts:Hint"},
    "poisonbench.attacks": {"three": "pb_broken.parts:THREE"},
    "poisonbench.datasets": {"other-name": "pb_broken.parts:SPEC"},
}


@pytest.fixture
def broken_site(tmp_path: Path) -> list[Path]:
    """A distribution `pb-broken` whose every entry is unfit: one raises on import, one takes a built-in's name,
    one is not a class, one names itself otherwise than its entry point."""
    site = tmp_path / "site"
    dist_info(site, "pb-broken", "0.2", BROKEN)
    package = site / "pb_broken"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "boom.py").write_text('raise RuntimeError("boom at import\\nand a second line")\n')
    (package / "parts.py").write_text(
        "from poisonbench.data.catalog import DATASETS\nfrom poisonbench.engine.hooks import Defense\n\n\n"
        "class Hint(Defense):\n    name = 'hint'\n\n\nTHREE = 3\nSPEC = DATASETS.builtins()['mnist-5k']\n")
    return [site]


def without_torch_note(stderr: str) -> list[str]:
    """The lines of a child's stderr but its own once-per-process torch-version line (on a torch other than the
    tested one: core/provenance.py), which is not the plugin's doing."""
    from poisonbench.core.provenance import torch_version_note

    note = torch_version_note()
    return [line for line in stderr.splitlines() if note is None or line != f"Warning: {note}"]


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Warning: plugin pb-broken 0.2 (")]


def test_broken_plugins_are_one_line_each_and_the_cli_still_works(broken_site, tmp_path):
    done = poisonbench_in_child(tmp_path, "--help", path=broken_site)  # lists the commands: loads no plugin
    assert (done.returncode, done.stderr) == (0, "") and "defend" in done.stdout
    done = poisonbench_in_child(tmp_path, "env", path=broken_site)  # loads every registry
    assert done.returncode == 0, done.stderr
    assert "poisonbench environment" in done.stdout
    lines = without_torch_note(done.stderr)
    assert lines == warning_lines("\n".join(lines))  # nothing else: no traceback
    assert sorted(lines) == sorted([  # each registry warns as it loads; `env` loads them in its own order
        "Warning: plugin pb-broken 0.2 (poisonbench.defenses: exploding = pb_broken.boom:Exploding) left out: "
        "failed to import: RuntimeError: boom at import",
        "Warning: plugin pb-broken 0.2 (poisonbench.defenses: hint = pb_broken.parts:Hint) left out: method 'hint' "
        "is built in; refused",
        "Warning: plugin pb-broken 0.2 (poisonbench.attacks: three = pb_broken.parts:THREE) left out: 3 is not a "
        "subclass of poisonbench.attacks.base.Attack with PARAMS (a tuple of Param) and summary (a str)",
        "Warning: plugin pb-broken 0.2 (poisonbench.datasets: other-name = pb_broken.parts:SPEC) left out: its "
        "dataset names itself 'mnist-5k', not 'other-name' as its entry point",
    ])


def test_a_dataset_plugin_under_another_name_is_refused_and_the_datasets_are_listed(broken_site, tmp_path):
    done = poisonbench_in_child(tmp_path, "data", "list", path=broken_site)
    assert done.returncode == 0, done.stderr
    assert "mnist-5k" in done.stdout and "other-name" not in done.stdout
    assert ("Warning: plugin pb-broken 0.2 (poisonbench.datasets: other-name = pb_broken.parts:SPEC) left out: its "
            "dataset names itself 'mnist-5k', not 'other-name' as its entry point") in warning_lines(done.stderr)


def test_a_clashing_plugin_does_not_replace_the_built_in(broken_site, tmp_path):
    """`--method hint` still runs the built-in HINT's options: the plugin's `hint` was refused."""
    done = poisonbench_in_child(tmp_path, "defend", "--help-method", "hint", path=broken_site)
    assert done.returncode == 0 and "--ratio" in done.stdout


# --- the registry itself, in this process: fresh registries, the lookup stubbed -------------------------------


class Fine(Defense):
    name = "fine"
    summary_text = "a fine plugin defense"
    PARAMS = (Param("strength", float, 1.0, "How strong.", positive=True),)


class OtherType(Defense):
    name = "other-type"
    PARAMS = (Param("strength", int, 1, "How strong, as an integer."),)


THREE = 3


class OwnFlag(Defense):
    name = "own-flag"
    PARAMS = (Param("method", str, "x", "Collides with the command's --method."),)


def points(site: Path, name: str, version: str, entries: dict[str, str], group: str = "poisonbench.defenses"):
    """The entry points of a distribution written under `site` (importlib.metadata's own objects: with their
    distribution)."""
    folder = dist_info(site, name, version, {group: entries})
    return list(importlib.metadata.PathDistribution(folder).entry_points)


@pytest.fixture
def plugin_registry(tmp_path, monkeypatch):
    """make(entries) -> a fresh defense registry (`none` built in) whose plugins are `entries` of `pb-test` 1.0,
    which name attributes of this module; and the count of lookups made."""
    lookups = []

    def make(entries: dict[str, str]) -> Registry:
        found = points(tmp_path / f"site{len(lookups)}", "pb-test", "1.0",
                       {k: f"{__name__}:{v}" for k, v in entries.items()})
        monkeypatch.setattr(registry_module, "entry_points_of", lambda group: lookups.append(group) or found)
        return Registry.of("method", (Defense,), PluginGroup("poisonbench.defenses", subclass_with_params(Defense),
                                                             "a defense"))

    make.lookups = lookups
    return make


def test_plugins_are_looked_up_on_the_first_read_and_only_once(plugin_registry):
    reg = plugin_registry({"fine": "Fine"})
    assert plugin_registry.lookups == []  # building the registry reads no metadata
    assert reg.builtins() == {"none": Defense} and plugin_registry.lookups == []
    assert reg.names() == ["none", "fine"]  # after the built-in entries
    assert reg.get("fine") is Fine and "fine" in reg and list(reg) == ["none", "fine"]
    assert plugin_registry.lookups == ["poisonbench.defenses"]
    assert reg.plugin("fine").ref() == {"name": "pb-test", "version": "1.0"}
    assert reg.plugin("none") is None and reg.plugin("absent") is None
    assert plugins_used([(reg, "none"), (reg, "fine"), (reg, None)]) == {"pb-test": "1.0"}
    assert plugins_used([(reg, "none")]) == {}


@pytest.mark.parametrize(("entries", "why"), [
    ({"none": "Defense"}, "method 'none' is built in; refused"),
    ({"fine": "OtherType"}, "its method names itself 'other-type', not 'fine' as its entry point"),
    ({"three": "THREE"}, "3 is not a defense"),
    ({"missing": "NoSuchName"}, "failed to import: AttributeError: module 'tests.test_plugins' has no attribute"),
], ids=["clash", "other-name", "not-a-class", "no-attribute"])
def test_an_unfit_plugin_is_one_warning_naming_it_and_is_left_out(plugin_registry, entries, why):
    reg = plugin_registry(entries)
    with pytest.warns(PoisonbenchWarning) as caught:
        assert reg.names() == ["none"]
    (entry,) = entries.items()
    (message,) = [str(w.message) for w in caught]
    assert message.startswith(f"plugin pb-test 1.0 (poisonbench.defenses: {entry[0]} = {__name__}:{entry[1]}) "
                              f"left out: {why}")
    assert "\n" not in message


def test_a_second_plugin_of_a_taken_name_is_refused(plugin_registry, tmp_path, monkeypatch):
    reg = plugin_registry({})
    twice = [*points(tmp_path / "a", "pb-one", "1", {"fine": f"{__name__}:Fine"}),
             *points(tmp_path / "b", "pb-two", "2", {"fine": f"{__name__}:Fine"})]
    monkeypatch.setattr(registry_module, "entry_points_of", lambda group: twice)
    with pytest.warns(PoisonbenchWarning, match=r"^plugin pb-two 2 .* method 'fine' is plugin pb-one's; refused$"):
        assert reg.names() == ["none", "fine"]
    assert reg.plugin("fine").dist == "pb-one"


def test_unreadable_metadata_is_one_warning_not_a_crash(plugin_registry, monkeypatch):
    reg = plugin_registry({})

    def broken(group):
        raise OSError("metadata unreadable")

    monkeypatch.setattr(registry_module, "entry_points_of", broken)
    with pytest.warns(PoisonbenchWarning, match="poisonbench.defenses plugins not loaded: OSError: metadata"):
        assert reg.names() == ["none"]


def test_a_plugin_whose_option_clashes_is_taken_out_when_the_options_are_built(plugin_registry):
    """A flag of another type than a built-in's, or one of the command's own: the plugin goes (one warning), the
    command is built; between built-in entries the same clash stays a programming error."""
    reg = plugin_registry({"fine": "Fine", "other-type": "OtherType", "own-flag": "OwnFlag"})
    with pytest.warns(PoisonbenchWarning) as caught:
        options = collect_options(reg, ["method"])
    assert [o.flag for o in options] == ["--strength"] and reg.names() == ["none", "fine"]
    assert [str(w.message).split(" left out: ")[1] for w in caught] == [
        "methods fine, other-type declare --strength with different types",
        "method option --method (own-flag) collides with an option of the command itself; give the Param a "
        "cli_flag"]
    builtin = Registry.of("method", (Fine, OtherType))
    with pytest.raises(RuntimeError, match="declare --strength with different types"):
        collect_options(builtin, [])


def test_an_unknown_name_still_lists_the_plugins(plugin_registry):
    reg = plugin_registry({"fine": "Fine"})
    with pytest.raises(PoisonbenchError, match="none, fine"):
        reg.get("absent")
