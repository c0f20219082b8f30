"""The torch version check (issue 55): an environment often keeps its own torch (pyproject.toml declares a range;
docs/install.md), so a torch older than the tested one is named once, in one line, where the CLI starts and where a
run records its environment; one older than 2.4, the oldest supported, is named as such. The tested version the
check compares with is constraints/tested.txt's, and the range's lower bound is the oldest supported."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from poisonbench.core import provenance
from poisonbench.core.errors import PoisonbenchWarning
from poisonbench.core.provenance import OLDEST_TORCH, TESTED_TORCH, torch_version_note, version_tuple

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
TESTED = ROOT / "constraints" / "tested.txt"


@pytest.fixture
def torch_version(monkeypatch):
    """`set(v)`: torch reports version `v` (a plain string, as a test can make it), and the once-per-process
    warning is due again."""
    monkeypatch.setattr(provenance, "_torch_checked", False)

    def set_version(version: str) -> None:
        monkeypatch.setattr(torch, "__version__", version)

    return set_version


def test_the_tested_version_is_the_constraints_files_and_pyproject_declares_the_range():
    pin = re.search(r"^torch==(\S+)$", TESTED.read_text(), re.M)
    assert pin is not None and pin[1] == TESTED_TORCH
    declared = re.search(r'"torch>=([^,"]+),<(\d+)"', PYPROJECT.read_text())  # a range, never an exact pin
    assert declared is not None and declared[1] == OLDEST_TORCH
    assert version_tuple(OLDEST_TORCH) <= version_tuple(TESTED_TORCH) < (int(declared[2]), 0, 0)
    assert '"torch==' not in PYPROJECT.read_text() and '"torchvision==' not in PYPROJECT.read_text()


def test_version_tuple_reads_local_and_prerelease_versions():
    assert version_tuple("2.11.0+cu130") == (2, 11, 0)
    assert version_tuple("2.5.0a0+git1234abc") == (2, 5, 0)
    assert version_tuple("2.4") == (2, 4, 0)
    assert version_tuple("not a version") == (0, 0, 0)


@pytest.mark.parametrize("version, expected", [
    ("2.3.1", f"older than {OLDEST_TORCH}, the oldest"),
    ("1.13.1+cpu", f"older than {OLDEST_TORCH}, the oldest"),
    ("2.4.1+cu121", f"older than the tested {TESTED_TORCH}"),
    ("2.11.0+cu130", f"older than the tested {TESTED_TORCH}"),
    (f"{TESTED_TORCH}+cu130", None),
    ("99.0.0", None),
])
def test_the_note_names_what_is_older(torch_version, version, expected):
    torch_version(version)
    note = torch_version_note()
    if expected is None:
        assert note is None
    else:
        assert expected in note and version in note and "\n" not in note


def test_it_warns_once_per_process_in_one_line(torch_version):
    torch_version("2.11.0")
    with pytest.warns(PoisonbenchWarning) as caught:
        assert provenance.check_torch_version() is not None
        assert provenance.check_torch_version() is not None  # still the note, but no second warning
    assert len(caught) == 1 and "\n" not in str(caught[0].message)


def test_the_pinned_version_does_not_warn(torch_version):
    torch_version(TESTED_TORCH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert provenance.check_torch_version() is None


def test_a_runs_environment_records_the_version_and_warns(torch_version):
    torch_version("2.4.1")
    with pytest.warns(PoisonbenchWarning, match="torch 2.4.1 is older than the tested"):
        env = provenance.environment(torch.device("cpu"))
    assert env["torch"] == "2.4.1"


def test_the_cli_says_it_in_one_line(torch_version, cli):
    torch_version("2.4.1")
    code, out, err = cli("data", "list")
    assert code == 0 and "mnist-5k" in out
    warned = [line for line in err.splitlines() if "torch 2.4.1" in line]
    assert len(warned) == 1 and warned[0].startswith("Warning: torch 2.4.1 is older than the tested"), err


@pytest.mark.parametrize("older", [False, True], ids=["this torch", "torch 2.4's API"])
def test_a_torch_file_holding_numpy_objects_reads_on_older_torch_too(tmp_path, monkeypatch, older):
    """forest's `torch.save` files hold numpy arrays and scalars, admitted by `torch.serialization.safe_globals`;
    torch 2.4 has only the process-wide `add_safe_globals` (and no (object, name) entries), so the same admission is
    made by hand and undone afterwards (torch 2.4's API simulated on this torch: the context manager removed)."""
    import numpy as np

    from poisonbench.poisons.interchange.unpickle import load_torch_or_pickle

    path = tmp_path / "forest.pth"
    torch.save({"ids": np.arange(3), "poison_class": np.int64(4), "delta": torch.ones(2)}, path)
    if older:
        monkeypatch.setattr(torch, "__version__", "2.4.1")
        monkeypatch.delattr(torch.serialization, "safe_globals", raising=False)
    before = set(torch.serialization.get_safe_globals())
    out = load_torch_or_pickle(path)
    assert out["ids"].tolist() == [0, 1, 2] and int(out["poison_class"]) == 4 and out["delta"].sum() == 2
    assert set(torch.serialization.get_safe_globals()) == before  # nothing left admitted process-wide
