"""The workspace's locks (`core/io.py`: `exclusive`, `try_exclusive`, through `filelock`): a lock held by another
process is refused at once by `try_exclusive` and waited for by `exclusive`; it dies with its holder; two holders in
one process exclude each other too; the lock file stays where it was made (`locks/`), and one that cannot be made
is one line."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from poisonbench.core.errors import PoisonbenchError
from poisonbench.core.io import exclusive, try_exclusive

HOLD = """
import sys, time
from poisonbench.core.io import exclusive
with exclusive(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def holder(path, seconds: float) -> subprocess.Popen:
    """A child process holding the lock on `path` for `seconds` (returned once it holds it)."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_another_process_holds_it_until_it_dies(tmp_path):
    path = tmp_path / "locks" / "run-0123.lock"
    child = holder(path, 60)
    try:
        with try_exclusive(path) as claimed:
            assert claimed is False
    finally:
        child.kill()
        child.wait()
    with try_exclusive(path) as claimed:  # killed, not released: the lock died with it
        assert claimed is True
    assert [p.name for p in (tmp_path / "locks").iterdir()] == ["run-0123.lock"]  # the file stays


def test_exclusive_waits_for_the_holder_and_says_so_once(tmp_path):
    path = tmp_path / "locks" / "poison-x.lock"
    child = holder(path, 1.0)
    waits = []
    start = time.monotonic()
    try:
        with exclusive(path, on_wait=lambda: waits.append(1)):
            waited = time.monotonic() - start
    finally:
        child.kill()
        child.wait()
    assert waits == [1] and waited > 0.5  # the holder kept it for 1 s after saying so


def test_two_holders_in_one_process_exclude_each_other(tmp_path):
    path = tmp_path / "locks" / "x.lock"
    seen = []

    def attempt():
        with try_exclusive(path) as claimed:
            seen.append(claimed)

    with exclusive(path):
        attempt()  # same thread
        thread = threading.Thread(target=attempt)
        thread.start()
        thread.join()
    attempt()
    assert seen == [False, False, True]


def test_a_lock_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "locks").write_text("")  # a file where the directory belongs
    with pytest.raises(PoisonbenchError, match="cannot create the lock file") as caught:
        with try_exclusive(tmp_path / "locks" / "x.lock"):
            pass
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("take", [try_exclusive, exclusive], ids=["try_exclusive", "exclusive"])
def test_a_lock_file_that_cannot_be_created_is_one_line(tmp_path, read_only, take):
    locks = read_only(tmp_path / "locks")
    with pytest.raises(PoisonbenchError, match="cannot create the lock file") as caught:
        with take(locks / "x.lock"):
            pass
    assert str(locks / "x.lock") in str(caught.value) and "\n" not in str(caught.value)
