"""What a release needs (issue 84): one version, printed by `poisonbench --version`; `-h` for `--help` on every
command; every third-party package the code imports declared; the release files (LICENSE, CITATION.cff,
CHANGELOG.md, py.typed) present and consistent with the package. CI also builds the wheel and the sdist and checks
them (`.ci/run`)."""

from __future__ import annotations

import ast
import datetime
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml

import poisonbench

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "poisonbench"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_prints_the_installed_version_exactly(cli):
    code, out, err = cli("--version")
    assert code == 0 and err == ""
    assert out == importlib.metadata.version("poisonbench") + "\n"


def test_the_version_is_written_once():
    """pyproject.toml takes it from `poisonbench.__version__` (setuptools reads the file without importing it)."""
    project = PYPROJECT["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "poisonbench.__version__"}
    assert importlib.metadata.version("poisonbench") == poisonbench.__version__


@pytest.mark.parametrize("command", [[], ["data"], ["data", "list"], ["report"], ["sweep", "run"], ["env"]],
                         ids=lambda c: " ".join(c) or "poisonbench")
def test_h_is_help(cli, command):
    code, out, err = cli(*command, "-h")
    assert code == 0 and err == "" and out.lstrip().startswith(f"Usage: {' '.join(['poisonbench', *command])}")
    assert (code, out, err) == cli(*command, "--help")


def imported_top_level(package: Path) -> set[str]:
    """Every top-level module name an `import` or `from ... import` statement of `package` names (not relative
    imports, not `importlib.import_module` strings, which name optional packages: core/optional.py)."""
    names = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_declared():
    third_party = imported_top_level(PACKAGE) - set(sys.stdlib_module_names) - {"poisonbench", "__future__"}
    distributions = importlib.metadata.packages_distributions()
    declared = {normalized(re.match(r"[A-Za-z0-9_.-]+", req)[0]) for req in PYPROJECT["project"]["dependencies"]}
    missing = {name: distributions.get(name, [name]) for name in third_party
               if not any(normalized(dist) in declared for dist in distributions.get(name, [name]))}
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"
    assert {"torch", "scipy", "PIL", "filelock"} <= third_party  # the scan sees imports at all


def test_torch_is_a_range_not_a_pin():
    deps = {normalized(re.match(r"[A-Za-z0-9_.-]+", d)[0]): d for d in PYPROJECT["project"]["dependencies"]}
    for name in ("torch", "torchvision"):
        assert ">=" in deps[name] and "<" in deps[name].replace("<=", "") and "==" not in deps[name], deps[name]


def test_the_license_is_mit_as_the_metadata_says():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 poisonbench contributors" in text
    assert PYPROJECT["project"]["license"] == {"text": "MIT"}


def test_citation_cff_is_valid_and_names_this_version_and_the_hint_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):  # the keys CFF 1.2.0 requires
        assert cff[key]
    assert all("name" in a or "family-names" in a for a in cff["authors"])
    assert cff["version"] == poisonbench.__version__ and cff["license"] == "MIT"
    assert isinstance(cff["date-released"], datetime.date)
    (hint,) = [r for r in cff["references"] if r["title"].startswith("HINT:")]
    assert hint["title"] == ("HINT: Healthy Influential-Noise based Training to Defend against Data Poisoning "
                             "Attacks")
    assert [a["family-names"] for a in hint["authors"]] == ["Van", "Carey", "Wu"] and hint["year"] == 2023
    assert {"type", "authors", "title"} <= set(hint)


def test_the_changelog_has_an_unreleased_section():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog") and "\n## [Unreleased]\n" in text


def test_the_package_ships_its_type_hints():
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["poisonbench"]
