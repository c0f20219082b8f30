"""Atomic file writes: a reader (or a killed writer) never leaves half a file behind."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _writer_tag() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete the temporary files of writes to `path` whose writer was killed (SIGKILL, OOM killer, a preempted
    job): a temporary file names its writer's pid and host, so only those of dead processes on this host are
    removed; a live writer's, and any from another host sharing the directory, are left alone. Returns them."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix, host = _temp_prefix(path), socket.gethostname()
    for tmp in path.parent.glob(f"{prefix}*.tmp"):
        tag = tmp.name[len(prefix):-len(".tmp")].rsplit(".", 1)[0]  # "<pid>@<host>" (mkstemp adds ".<random>")
        pid, _, tmp_host = tag.partition("@")
        if tmp_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, rename over `path`, fsync the directory.

    A writer killed mid-write cannot delete its temporary file; the next write to `path` (and
    `remove_stale_temps`) does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_temp_prefix(path)}{_writer_tag()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; results are shared (clusters): honour the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable: without it a power loss can undo the rename (the run is then redone,
    never half-written)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and platforms) cannot fsync a directory: the rename is still atomic
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextmanager
def exclusive(lock_path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock (flock) on `lock_path` (created if absent) for the block.

    Used so that concurrent sweep jobs sharing a results directory craft a PoisonSet or train a surrogate once:
    the others wait, then find the artifact. `on_wait` is called once if another process holds the lock.
    The lock dies with its holder (a killed craft never blocks the next one).
    """
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
