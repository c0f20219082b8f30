"""The suite's own schedule (tests/conftest.py, `SLOWEST_FILES`): the slowest files go to the workers first."""

from __future__ import annotations

import sys
from pathlib import Path

from .conftest import SLOWEST_FILES

TESTS = Path(__file__).resolve().parent


def test_every_slowest_file_exists_once_and_xdist_keeps_the_collection_order():
    """A renamed file would silently lose its early start; xdist's default order (most tests first) would undo the
    list, so pyproject.toml turns it off."""
    assert len(set(SLOWEST_FILES)) == len(SLOWEST_FILES)
    assert [name for name in SLOWEST_FILES if not (TESTS / name).is_file()] == []
    toml = __import__("tomllib" if sys.version_info >= (3, 11) else "tomli")  # tomli: the dependency on 3.10
    pyproject = toml.loads((TESTS.parent / "pyproject.toml").read_text())
    assert pyproject["tool"]["pytest"]["ini_options"]["addopts"].split() == [
        "-n", "auto", "--maxprocesses", "4", "--dist", "loadfile", "--no-loadscope-reorder"]


def test_the_collected_tests_start_with_the_slowest_files_in_their_order(request):
    """The session's own collection: the files of `SLOWEST_FILES` first, in its order, each file's tests together."""
    files = []
    for item in request.session.items:
        if not files or files[-1] != item.path.name:
            files.append(item.path.name)
    assert len(files) == len(set(files)), "a file's tests are split"
    if len(files) > len(SLOWEST_FILES):  # the whole suite (a single file's run collects only that file)
        assert files[:len(SLOWEST_FILES)] == list(SLOWEST_FILES)
