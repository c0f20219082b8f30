"""docs/plugins.md's plugin package, executed: its code blocks are written out as the package `pb_mine`, its
`pyproject.toml`'s entry points as the distribution's metadata (no pip: importlib.metadata reads a `.dist-info`
folder, as tests/test_plugins.py does), and the real registries load them through their own loading path, the
lookup of installed entry points stubbed. Then each part is listed with its plugin, its options parse, and a real
`craft` and `defend` use the attack, the defense, the dataset and the scenario: a page that drifts from the code
fails here."""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

import poisonbench
from poisonbench import api
from poisonbench.attacks import ATTACKS
from poisonbench.core import registry as registry_module
from poisonbench.core.errors import PoisonbenchError, PoisonbenchWarning
from poisonbench.data.catalog import DATASETS
from poisonbench.defenses import DEFENSES
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.experiment.craft import attack_options
from poisonbench.experiment.options import method_options
from poisonbench.experiment.scenarios import SCENARIOS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PACKAGE_ROOT = Path(poisonbench.__file__).parent
DOC = PACKAGE_ROOT.parent / "docs" / "plugins.md"
BLOCK = re.compile(r"```(?:python|toml)\n# poisonbench plugin: (\S+)\n(.*?)```", re.S)
REGISTRIES = {"poisonbench.attacks": ATTACKS, "poisonbench.defenses": DEFENSES,
              "poisonbench.scenarios": SCENARIOS, "poisonbench.datasets": DATASETS}
DIST = {"name": "pb-mine", "version": "0.1.0"}
FAST = {"recipe": "quick", "epochs": 1, "batch_size": 64, "compile": "off", "device": "cpu"}


def page_files() -> dict[str, str]:
    """{path in the package: text} of the page's complete example blocks."""
    return dict(BLOCK.findall(DOC.read_text()))


def entry_points() -> dict[str, dict[str, str]]:
    return tomllib.loads(page_files()["pyproject.toml"])["project"]["entry-points"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The page's package as if pip-installed: its modules and metadata under a site folder on the path, and its
    entries in the registries (loaded as an installed plugin's are); everything taken back afterwards."""
    import importlib.metadata

    site = tmp_path_factory.mktemp("site")
    for path, text in page_files().items():
        if path.endswith(".py"):
            (site / path).parent.mkdir(parents=True, exist_ok=True)
            (site / path).write_text(text)
    (site / "pb_mine" / "__init__.py").write_text("")
    project = tomllib.loads(page_files()["pyproject.toml"])["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items())
        for group, entries in project["entry-points"].items()))
    points = list(importlib.metadata.PathDistribution(info).entry_points)

    saved = {group: (dict(r._entries), dict(r._plugins), r._loaded) for group, r in REGISTRIES.items()}
    real_lookup = registry_module.entry_points_of
    for registry in REGISTRIES.values():
        registry.names()  # whatever this environment installed, loaded as usual first (before the site is on the path)
    sys.path.insert(0, str(site))
    try:
        for registry in REGISTRIES.values():
            registry_module.entry_points_of = lambda g: [ep for ep in points if ep.group == g]
            registry._loaded = False
            with warnings.catch_warnings():
                warnings.simplefilter("error", PoisonbenchWarning)  # an example left out fails here, naming why
                registry.names()
            registry_module.entry_points_of = real_lookup
        yield project
    finally:
        registry_module.entry_points_of = real_lookup
        for group, registry in REGISTRIES.items():
            registry._entries, registry._plugins, registry._loaded = saved[group]
        sys.path.remove(str(site))
        for module in [m for m in sys.modules if m == "pb_mine" or m.startswith("pb_mine.")]:
            del sys.modules[module]


def test_the_page_has_a_module_for_every_entry_point_and_an_example_for_every_group():
    """One example per entry-point group the package's registries read (found in the sources, so that a new group
    without an example fails), each group in the page's table, each entry point's module on the page."""
    groups = {m for path in PACKAGE_ROOT.rglob("*.py")
              for m in re.findall(r'PluginGroup\(\s*"([\w.]+)"', path.read_text())}
    assert groups == set(REGISTRIES)
    assert set(entry_points()) == groups
    text = DOC.read_text()
    for group in groups:
        assert f"| `{group}` |" in text, group
    modules = {value.split(":")[0].replace(".", "/") + ".py" for entries in entry_points().values()
               for value in entries.values()}
    assert modules <= set(page_files())


def test_the_registries_list_each_example_as_the_plugins_part(installed):
    for group, entries in entry_points().items():
        registry = REGISTRIES[group]
        for name in entries:
            assert name in registry.names(), (group, name)
            assert registry.plugin(name).ref() == DIST
            assert registry.names().index(name) > 0  # after the built-in entries


def test_the_examples_params_parse_for_every_family_and_become_options(installed):
    attack, defense = ATTACKS.get("class-noise"), DEFENSES.get("bit-depth")
    assert attack("mnist").params == {"strength": 1.0} and attack("cifar10").params == {"strength": 0.5}
    assert attack("mnist", strength=1).params == {"strength": 1.0}  # an int given: the float option's value
    for family, bits in (("mnist", 1), ("cifar10", 4)):
        assert defense.defaults(family, resolve_recipe(family, "quick")) == {"bits": bits}
    with warnings.catch_warnings():
        warnings.simplefilter("error", PoisonbenchWarning)  # no clash with a built-in's flag
        craft_flags = {o.flag: o for o in attack_options()}
        defend_flags = {o.flag: o for o in method_options()}
    assert "class-noise" in craft_flags["--strength"].owners and craft_flags["--strength"].cli_type is float
    assert "bit-depth" in defend_flags["--bits"].owners and defend_flags["--bits"].cli_type is int
    # the messages the page quotes
    with pytest.raises(PoisonbenchError, match=re.escape("--strength of attack 'class-noise' must be in (0, 1], "
                                                         "got 2")):
        attack("mnist", strength=2)
    with pytest.raises(PoisonbenchError, match=re.escape("option --ratio does not apply to method 'bit-depth'; "
                                                         "its options: --bits")):
        api.defend("bit-depth", ratio=0.2)


def test_the_attack_example_crafts_within_eps_and_its_manifest_names_the_plugin(installed, tiny_npz, tmp_path,
                                                                               one_thread):
    crafted = api.craft("class-noise", dataset=str(tiny_npz), results=str(tmp_path / "r"), strength=0.5,
                        compile="off", device="cpu")
    assert crafted.status == "crafted"
    manifest = json.loads((Path(crafted.path) / "manifest.json").read_text())
    assert manifest["attack"] == "class-noise" and manifest["params"] == {"strength": 0.5}
    assert manifest["env"]["plugins"] == {DIST["name"]: DIST["version"]}
    delta = crafted.poison_set.delta
    assert len(delta) == 400 and 0 < delta.abs().max() <= 0.5 * manifest["eps"] + 1e-6


def test_the_defense_example_trains_on_the_dataset_example_against_the_attack_example(installed, tmp_path,
                                                                                      one_thread):
    (record,) = api.defend("bit-depth", dataset="bands-16", results=str(tmp_path / "r"), bits=2, poison_ratio=0.5,
                           attacks=["class-noise"], **FAST).records
    assert record["config"]["dataset"] == "bands-16"
    assert record["config"]["defense"] == {"method": "bit-depth", "bits": 2}
    assert record["defense"] == {"bits": 2}
    assert record["config"]["poison"]["attacks"] == ["class-noise"]
    assert record["config"]["poison"]["poisoned"] == 450  # half of the dataset's 900 train rows
    assert record["env"]["plugins"] == {DIST["name"]: DIST["version"]}


def test_the_scenario_example_adds_each_classs_accuracy(installed, tiny_npz, tmp_path, one_thread):
    (record,) = api.defend("none", dataset=str(tiny_npz), results=str(tmp_path / "r"), scenario="per-class",
                           **FAST).records
    assert record["config"]["scenario"] == "per-class"
    per_class = record["metrics"]["per_class_acc"]
    assert set(per_class) == {str(c) for c in range(10)} and all(0 <= a <= 1 for a in per_class.values())
    assert record["env"]["plugins"] == {DIST["name"]: DIST["version"]}
    with pytest.raises(PoisonbenchError, match="scenario 'per-class' trains without poisons"):
        api.defend("none", dataset=str(tiny_npz), results=str(tmp_path / "r"), scenario="per-class",
                   poison_ratio=0.5, **FAST)


def test_the_dataset_example_loads_its_split(installed):
    from poisonbench.data import load_dataset

    data = load_dataset("bands-16")
    assert (len(data.train), len(data.val), len(data.test)) == DATASETS.get("bands-16").split_sizes
    assert data.family == "mnist" and data.shape == (1, 16, 16) and data.train.x.dtype == torch.uint8
