"""No file replaced or created where it should not be (issue 82, failure class 1): an output named on the command line
(`report html OUT`, `poisons export --out`, `records pack OUT`, `sweep run --emit-sbatch FILE`) never replaces an
existing file without `--force`, and never, even with it, a file the command reads (its pack, a record or manifest of
the workspace, its grid); a lock file is never opened through a symbolic link, whichever `filelock` opens it;
`records unpack` reads its pack once, writes only into the directories it opened (a `runs/` swapped for a link
midway is not followed) and takes each run's lock, so two unpacks of conflicting packs never replace each other."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from poisonbench.core import io as core_io
from poisonbench.core.errors import PoisonbenchError
from poisonbench.core.io import exclusive, try_exclusive
from poisonbench.data import load_dataset
from poisonbench.experiment import packed_records
from poisonbench.experiment.records import RunStore
from tests.conftest import class_images, files_under, one_line_error
from tests.report_records import make_record, write_records
from tests.test_interop_targeted import toy_set

PACK_BYTES = b"\x1f\x8b a packed records file of another workspace"


def records() -> list[dict]:
    """Enough for `report html --no-figures`: clean and ρ = 0.5 runs of one configuration, two trials."""
    return [make_record(rho=rho, trial=t) for rho in (0.0, 0.5) for t in (0, 1)]


# ----------------------------------------------------------------------------------------------- (a) outputs

def test_report_html_replaces_an_existing_file_only_with_force(cli, tmp_path):
    root = write_records(tmp_path / "res", records())
    out = tmp_path / "other.jsonl.gz"  # whatever its name: someone's packed records
    out.write_bytes(PACK_BYTES)
    code, stdout, err = cli("report", "html", out, "--results", root, "--no-figures")
    one_line_error(code, err, f"{str(out)!r} exists", "--force")
    assert out.read_bytes() == PACK_BYTES and stdout == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file either
    code, stdout, err = cli("report", "html", out, "--results", root, "--no-figures", "--force")
    assert code == 0 and stdout.strip() == str(out), err
    assert out.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html>")


def test_report_html_never_replaces_the_pack_it_reads_even_with_force(cli, tmp_path):
    root = write_records(tmp_path / "res", records())
    packed = tmp_path / "r.jsonl.gz"
    assert cli("records", "pack", root, packed)[0] == 0
    before = packed.read_bytes()
    code, _, err = cli("report", "html", packed, "--records", packed, "--no-figures", "--force")
    one_line_error(code, err, f"{str(packed)!r}", "reads", "another file name")
    assert packed.read_bytes() == before


def test_report_html_never_replaces_a_record_it_reads_even_with_force(cli, tmp_path):
    root = write_records(tmp_path / "res", records())
    record = sorted((root / "runs").iterdir())[0]
    before = record.read_bytes()
    code, _, err = cli("report", "html", record, "--results", root, "--no-figures", "--force")
    one_line_error(code, err, f"{str(record)!r}", "reads")
    assert record.read_bytes() == before


def test_poisons_export_of_a_mix_refuses_an_existing_file_before_anything_is_crafted(cli, tiny_npz, tmp_path):
    out = tmp_path / "run.json"  # a run record, say
    out.write_bytes(b"{}\n")
    res = tmp_path / "res"
    code, _, err = cli("poisons", "export", "--dataset", tiny_npz, "--poison-ratio", "1", "--order", "train",
                       "--attacks", "durp", "--out", out, "--results", res)
    one_line_error(code, err, f"{str(out)!r} exists", "--force")
    assert out.read_bytes() == b"{}\n" and not res.exists()


def test_poisons_export_of_a_mix_never_replaces_a_workspace_record_even_with_force(cli, tiny_npz, tmp_path):
    root = write_records(tmp_path / "res", records())
    record = sorted((root / "runs").iterdir())[0]
    before = record.read_bytes()
    code, _, err = cli("poisons", "export", "--dataset", tiny_npz, "--poison-ratio", "1", "--order", "train",
                       "--attacks", "durp", "--out", record, "--results", root, "--force")
    one_line_error(code, err, f"{str(record)!r}", "reads")
    assert record.read_bytes() == before


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    """400 learnable 8×8 grey images, 4 classes, as an .npz dataset: (the dataset, its path)."""
    path = tmp_path_factory.mktemp("grey") / "grey.npz"
    x, y = class_images(400, 8, channels=1, classes=4, seed=4)
    np.savez(path, x=x, y=y)
    return load_dataset(str(path)), path


@pytest.mark.parametrize("fmt,name", [("npz", "ours.npz"), ("forest", "ours.pt"), ("toxic", "submission")])
def test_poisons_export_of_a_poison_set_replaces_an_existing_file_only_with_force(cli, tmp_path, one_thread, grey,
                                                                                  fmt, name):
    data, path = grey
    res = tmp_path / "res"
    spec, _ = toy_set(data, res)
    out = tmp_path / name
    existing = out / "poisons.pickle" if fmt == "toxic" else out
    existing.parent.mkdir(parents=True, exist_ok=True)
    existing.write_bytes(PACK_BYTES)
    args = ("poisons", "export", "--poison-set", spec.poison_id, "--format", fmt, "--out", out, "--dataset", path,
            "--results", res)
    code, _, err = cli(*args)
    one_line_error(code, err, f"{str(existing)!r} exists", "--force")
    assert existing.read_bytes() == PACK_BYTES
    assert files_under(tmp_path / "submission") == ([existing] if fmt == "toxic" else [])
    code, _, err = cli(*args, "--force")
    assert code == 0, err
    assert existing.read_bytes() != PACK_BYTES
    manifest = res / "poisons" / spec.poison_id / "manifest.json"
    before = manifest.read_bytes()
    if fmt != "toxic":  # a file the command reads (the PoisonSet's own manifest): never, even with --force
        args = args[:args.index("--out") + 1] + (manifest,) + args[args.index("--out") + 2:]
        code, _, err = cli(*args, "--force")
        one_line_error(code, err, f"{str(manifest)!r}", "reads")
        assert manifest.read_bytes() == before


def test_emit_sbatch_replaces_an_existing_file_only_with_force_and_never_its_grid(cli, tiny_npz, tmp_path):
    from tests.test_probe_grid_slurm import write_grid

    grid = write_grid(tmp_path / "g.toml", tiny_npz)
    grid_text = grid.read_bytes()
    script = tmp_path / "job.sbatch"
    script.write_bytes(PACK_BYTES)
    args = ("sweep", "run", grid, "--results", tmp_path / "res", "--emit-sbatch")
    code, _, err = cli(*args, script)
    one_line_error(code, err, f"{str(script)!r} exists", "--force")
    assert script.read_bytes() == PACK_BYTES
    code, _, err = cli(*args, script, "--force")
    assert code == 0 and script.read_text().startswith("#!/bin/bash\n"), err
    code, _, err = cli(*args, grid, "--force")
    one_line_error(code, err, f"{str(grid)!r}", "reads")
    assert grid.read_bytes() == grid_text


def test_force_without_emit_sbatch_is_refused(cli, tiny_npz, tmp_path):
    from tests.test_probe_grid_slurm import write_grid

    grid = write_grid(tmp_path / "g.toml", tiny_npz)
    code, _, err = cli("sweep", "run", grid, "--results", tmp_path / "res", "--force")
    one_line_error(code, err, "--force", "--emit-sbatch")


def test_records_pack_never_replaces_its_own_input_even_with_force(cli, tmp_path):
    """A pack's OUT ends in .jsonl.gz / .jsonl.xz, so it is never a record; inside the workspace's runs/ it is
    refused all the same (the directory the command reads)."""
    root = write_records(tmp_path / "res", records())
    out = root / "runs" / "r.jsonl.gz"
    out.write_bytes(PACK_BYTES)
    code, _, err = cli("records", "pack", root, out, "--force")
    one_line_error(code, err, f"{str(out)!r}", "reads")
    assert out.read_bytes() == PACK_BYTES


def test_check_output_contract(tmp_path):
    from poisonbench.core.io import check_output

    new, old = tmp_path / "new.html", tmp_path / "old.html"
    old.write_bytes(b"keep")
    assert check_output(new, force=False) == new
    with pytest.raises(PoisonbenchError, match=r"exists; pass --force to replace it, or another file name$"):
        check_output(old, force=False)
    assert check_output(old, force=True) == old
    with pytest.raises(PoisonbenchError, match="is a directory"):
        check_output(tmp_path, force=True)
    link = tmp_path / "link.html"
    link.symlink_to(old)
    for inputs in ([old], [tmp_path]):  # the input itself, or a file in an input directory; through a link too
        for path in (old, link):
            with pytest.raises(PoisonbenchError, match="never replaced, even with --force") as caught:
                check_output(path, force=True, inputs=inputs)
            assert "\n" not in str(caught.value)
    assert check_output(new, force=True, inputs=[tmp_path]) == new  # nothing to replace


# ----------------------------------------------------------------------------------------------- (b) locks

class FollowingLock:
    """filelock 3.x's Unix lock, as `pyproject.toml`'s `filelock>=3.10` allows: `os.open(path, O_RDWR | O_TRUNC
    [| O_CREAT])`, which follows a symbolic link at the lock path and creates (or truncates) its target."""

    def __init__(self, lock_file):
        self.lock_file, self.fd = str(lock_file), None

    def acquire(self, timeout=-1):
        from filelock import Timeout

        flags = os.O_RDWR | os.O_TRUNC | (0 if Path(self.lock_file).exists() else os.O_CREAT)
        fd = os.open(self.lock_file, flags, 0o644)
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.fd = fd
                return self
            except BlockingIOError:
                if 0 <= timeout <= time.monotonic() - start:
                    os.close(fd)
                    raise Timeout(self.lock_file) from None
                time.sleep(0.05)

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    @property
    def is_locked(self):
        return self.fd is not None


@pytest.fixture(params=["installed", "follows-links"])
def lock_class(request, monkeypatch):
    """The `filelock` installed here, and one that follows links (filelock 3.x): the guard must not depend on it."""
    if request.param == "follows-links":
        monkeypatch.setattr(core_io, "FileLock", FollowingLock)
    return request.param


@pytest.mark.parametrize("take", [try_exclusive, exclusive], ids=["try_exclusive", "exclusive"])
@pytest.mark.parametrize("target_exists", [False, True], ids=["dangling", "to-a-file"])
def test_a_link_at_a_lock_path_is_refused_and_its_target_left_alone(tmp_path, lock_class, take, target_exists):
    outside = tmp_path / "outside" / "victim.txt"
    outside.parent.mkdir()
    if target_exists:
        outside.write_bytes(b"keep me")
    link = tmp_path / "res" / "locks" / "run-0123.lock"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    with pytest.raises(PoisonbenchError) as caught:
        with take(link):
            pytest.fail("the lock was taken through a link")
    message = str(caught.value)
    assert f"{str(link)!r} is a symbolic link" in message and "\n" not in message, message
    assert (outside.read_bytes() == b"keep me") if target_exists else not outside.exists()
    assert link.is_symlink()


def test_a_lock_path_swapped_for_a_link_before_filelock_opens_it_is_refused(tmp_path, monkeypatch, lock_class):
    """The race a check-then-open leaves: the lock file is replaced by a link after poisonbench made it and before
    `filelock` opens it. Caught after taking the lock (the path is no longer the file poisonbench opened); the lock
    is released. The installed filelock opens with O_NOFOLLOW: nothing is created at the target either."""
    outside = tmp_path / "outside.txt"
    path = tmp_path / "locks" / "run-0123.lock"
    inner = core_io.FileLock

    class Swapping:
        def __init__(self, lock_file):
            self.inner = inner(lock_file)
            self.lock_file = lock_file

        def acquire(self, timeout=-1):
            if Path(path).exists() and not Path(path).is_symlink():
                os.unlink(path)
                os.symlink(outside, path)
            return self.inner.acquire(timeout=timeout)

        def release(self):
            self.inner.release()

        @property
        def is_locked(self):
            return self.inner.is_locked

    monkeypatch.setattr(core_io, "FileLock", Swapping)
    with pytest.raises(PoisonbenchError, match="is a symbolic link") as caught:
        with try_exclusive(path):
            pytest.fail("the lock was taken through a link")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    if lock_class == "installed":
        assert not outside.exists()


def test_defend_refuses_a_link_at_its_run_lock_and_creates_nothing_at_its_target(cli, tiny_npz, tmp_path,
                                                                                 lock_class):
    res = tmp_path / "res"
    args = ("defend", "--dataset", tiny_npz, "--recipe", "quick", "--epochs", "1", "--results", res, "--json")
    code, out, err = cli(*args)
    assert code == 0, err
    run_id = json.loads(out.splitlines()[-1])["run_id"]
    (res / "runs" / f"{run_id}.json").unlink()  # the run is to do again
    lock = res / "locks" / f"run-{run_id}.lock"
    lock.unlink()
    outside = tmp_path / "outside" / "created-by-the-lock"
    outside.parent.mkdir()
    lock.symlink_to(outside)
    code, out, err = cli(*args)
    one_line_error(code, err, f"{str(lock)!r} is a symbolic link")
    assert not outside.exists() and files_under(outside.parent) == []
    assert not (res / "runs" / f"{run_id}.json").exists()


# ----------------------------------------------------------------------------------------------- (c) unpack

def packed(tmp_path: Path, recs: list[dict], name: str = "p.jsonl.gz") -> Path:
    source = write_records(tmp_path / f"src-{name}", recs)
    path = tmp_path / name
    packed_records.pack(source, path)
    return path


def test_unpack_never_follows_a_runs_directory_swapped_for_a_link_midway(cli, tmp_path, monkeypatch):
    """After the first record is in place, `runs/` is moved aside and a link to a directory outside the workspace
    put in its place: the rest still goes into the directory unpack opened, nothing lands outside."""
    recs = [make_record(trial=t, rho=rho) for t in range(3) for rho in (0.0, 0.5)]
    path = packed(tmp_path, recs)
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    outside.mkdir()
    runs = ws / "runs"
    real_fsync, swapped = os.fsync, []

    def fsync(fd):  # between records: after each file (and its directory) is made durable
        real_fsync(fd)
        if not swapped and runs.is_dir() and not runs.is_symlink() and any(runs.glob("*.json")):
            os.rename(runs, ws / "runs.moved")
            runs.symlink_to(outside, target_is_directory=True)
            swapped.append(True)

    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = cli("records", "unpack", path, ws)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert swapped, "the swap did not happen"
    assert files_under(outside) == [], err
    assert code in (0, 2), err
    if code == 2:
        one_line_error(code, err, str(runs))


def test_unpack_reads_its_pack_once(cli, tmp_path, monkeypatch):
    path = packed(tmp_path, records())
    opened = []
    real_open = os.open

    def counting(file, *args, **kwargs):
        if kwargs.get("dir_fd") is None and os.path.abspath(os.fspath(file)) == str(path):
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting)
    code, _, err = cli("records", "unpack", path, tmp_path / "ws")
    assert code == 0, err
    assert len(opened) == 1, opened
    assert len(files_under(tmp_path / "ws" / "runs")) == 4


def test_two_concurrent_unpacks_of_conflicting_packs_never_replace_each_other(tmp_path, monkeypatch):
    """Unpack A has checked that run r is absent and is writing it; meanwhile unpack B (another craft of r) runs.
    B must wait for r's lock, then find A's file and refuse; never both succeed with one file replacing the other."""
    ours = make_record(trial=0, rho=0.5)
    theirs = {**ours, "finished_at": "another time"}
    a, b = packed(tmp_path, [ours], "a.jsonl.gz"), packed(tmp_path, [theirs], "b.jsonl.gz")
    ws = tmp_path / "ws"
    outcome: dict[str, object] = {}

    def unpack(name, source):
        try:
            outcome[name] = packed_records.unpack(source, ws)
        except PoisonbenchError as e:
            outcome[name] = e

    real_fsync, started = os.fsync, []

    def fsync(fd):  # A's first write: its record's temporary file is complete, not yet in place
        if not started and threading.current_thread() is threading.main_thread():
            started.append(threading.Thread(target=unpack, args=("b", b)))
            started[0].start()
            started[0].join(timeout=2.0)  # B runs to its end, or waits for the lock A holds
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    unpack("a", a)
    started[0].join(timeout=30)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not started[0].is_alive()
    failed = [name for name, result in outcome.items() if isinstance(result, PoisonbenchError)]
    assert len(failed) == 1, outcome  # B waited for A's lock (or, had B come first, A for B's): one refused
    (loser,), (winner,) = failed, {"a", "b"} - set(failed)
    message = str(outcome[loser])
    assert "other contents" in message and ours["run_id"] in message and "\n" not in message
    on_disk = json.loads(RunStore(ws).path(ours["run_id"]).read_text())
    assert on_disk == {"a": ours, "b": theirs}[winner]  # the refused one replaced nothing


def test_unpack_waits_for_a_run_lock_held_by_another_process(tmp_path):
    """The lock it takes is the one `defend` takes (`locks/run-<id>.lock`): a defend training that run makes
    unpack wait, then find the run's record."""
    from tests.test_locks import holder

    rec = make_record(trial=0)
    path = packed(tmp_path, [rec])
    ws = tmp_path / "ws"
    from poisonbench.experiment.defend import run_lock

    child = holder(run_lock(RunStore(ws), rec["run_id"]), 1.5)
    try:
        start = time.monotonic()
        summary = packed_records.unpack(path, ws)
        waited = time.monotonic() - start
    finally:
        child.kill()
        child.wait()
    assert summary["written"] == 1 and waited > 1.0


def test_unpack_leaves_no_temporary_file_and_writes_what_poisonbench_writes(tmp_path):
    recs = records()
    path = packed(tmp_path, recs)
    summary = packed_records.unpack(path, tmp_path / "ws")
    assert summary["written"] == 4
    runs = tmp_path / "ws" / "runs"
    assert sorted(p.name for p in runs.iterdir()) == sorted(f"{r['run_id']}.json" for r in recs)
    assert RunStore(tmp_path / "ws").all() == RunStore(tmp_path / "src-p.jsonl.gz").all()
    shutil.rmtree(tmp_path / "ws")
