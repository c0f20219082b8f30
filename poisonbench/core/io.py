"""Atomic file writes: a reader (or a killed writer) never leaves half a file behind."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import secrets
import shutil
import socket
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .errors import PoisonbenchError


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _host_id() -> str:
    """This host and its pid namespace where there is one (containers sharing a hostname and a results volume
    must not judge each other's pids), hashed to 12 hex digits so that a long host name cannot push a temporary
    file's name past the filesystem's limit."""
    try:
        host = f"{socket.gethostname()}~{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        host = socket.gethostname()
    return hashlib.sha256(host.encode()).hexdigest()[:12]


def writer_tag() -> str:
    """`<pid>@<host id>`: what a temporary file or directory carries in its name so that a later writer can tell a
    killed writer's leftover (`remove_dead_writers_temps`) from a live writer's."""
    return f"{os.getpid()}@{_host_id()}"


def remove_dead_writers_temps(directory: Path, prefix: str, suffix: str = "") -> list[Path]:
    """Delete the entries `<prefix><pid>@<host id>.<random><suffix>` of `directory` (files or directories) whose
    writer is a dead process of this host and pid namespace: a writer killed by SIGKILL, the OOM killer or a
    preempted job cannot clean up after itself. A live writer's, another host's and anything not named so are
    left alone; a failure to delete one is not an error (it is only cleanup). Returns the entries removed."""
    directory, removed, host = Path(directory), [], _host_id()
    if not directory.is_dir():
        return removed
    for entry in directory.glob(f"{glob.escape(prefix)}*{suffix}"):
        tag = entry.name[len(prefix):len(entry.name) - len(suffix)].rsplit(".", 1)[0]
        pid, _, entry_host = tag.partition("@")
        if entry_host != host or not (pid.isascii() and pid.isdigit()) or _alive(int(pid)):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def remove_stale_temps(path: Path) -> list[Path]:
    """The temporary files of `atomic_write_bytes(path)` calls whose writer was killed (see
    `remove_dead_writers_temps`). Returns them."""
    path = Path(path)
    return remove_dead_writers_temps(path.parent, _temp_prefix(path), ".tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # exists, owned by someone else / not a pid: leave it alone
        return True
    return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, rename over `path`, fsync the directory.

    A writer killed mid-write cannot delete its temporary file; the next write to `path` (and
    `remove_stale_temps`) does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_temp_prefix(path)}{writer_tag()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp creates 0600; results are shared (clusters): honour the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def check_output(path: str | Path, force: bool, inputs: Iterable[str | Path] = (), label: str = "") -> Path:
    """An output named on the command line (`report html OUT`, `poisons export --out`, `records pack OUT`, `sweep run
    --emit-sbatch FILE`), checked before anything is read or written: not a directory, no file where a directory of
    its path belongs; an existing file (or link) replaced only with `force`; and never, even with `force`, a file
    the command reads: one of `inputs` (a file it reads, or a directory whose files it reads: the workspace's
    runs/ and poisons/, a packed records file, a grid), links and hard links followed. Each refusal is one line
    naming the path (after `label`, e.g. "OUT ") and what to do."""
    path = Path(path)
    shown = f"{label}{str(path)!r}"
    if path.is_dir():
        raise PoisonbenchError(f"{shown} is a directory; name the file to write")
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise PoisonbenchError(f"cannot write {str(path)!r}: {str(blocking)!r} is a file, not a directory")
    if not os.path.lexists(path):
        return path
    read = _input_at(path, inputs)
    if read is not None:
        raise PoisonbenchError(f"{shown} is {read}: it is never replaced, even with --force; write to another file "
                               "name")
    if not force:
        raise PoisonbenchError(f"{shown} exists; pass --force to replace it, or another file name")
    return path


def _input_at(path: Path, inputs: Iterable[str | Path]) -> str | None:
    """How the existing `path` is one of `inputs` ("a file this command reads", "in 'DIR', which this command
    reads"), else None. `path` is taken both as it is (its directory resolved, a link at it not followed) and as
    what it leads to."""
    places = {path.parent.resolve() / path.name, path.resolve()}
    for given in map(Path, inputs):
        if given.is_dir():
            real = given.resolve()
            if any(real in place.parents for place in places):
                return f"in {str(given)!r}, which this command reads"
        elif given.exists() and (given.resolve() in places or _same_inode(path, given)):
            return "a file this command reads" + ("" if given == path else f" ({str(given)!r})")
    return None


def _same_inode(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# Whether directories can be held open and written into by descriptor (POSIX; not Windows, where `open_directory`
# and `write_file_at` are not used and writes go by path)
HOLDS_DIRECTORIES = {os.open, os.mkdir, os.rename, os.unlink, os.stat} <= os.supports_dir_fd


def open_directory(name: str | Path, parent: int | None, shown: str | Path, create: bool = True) -> int:
    """A descriptor of the directory `name` in the directory open as `parent` (None: `name` is a path), created if
    absent and `create`, opened with O_DIRECTORY | O_NOFOLLOW: a symbolic link there is refused in one line naming
    `shown` (workspace.linked_directory), and what is written through the descriptor (`write_file_at`) stays in
    that very directory, whatever is renamed or linked in its place later. The caller closes it."""
    from .workspace import linked_directory

    if create:
        try:
            os.mkdir(name, dir_fd=parent)
        except FileExistsError:
            pass
    try:
        return os.open(name, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
                       | getattr(os, "O_CLOEXEC", 0), dir_fd=parent)
    except OSError as e:
        try:
            is_link = stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
        except OSError:
            is_link = False
        if is_link:
            raise linked_directory(shown) from None
        raise e from None


def write_file_at(directory: int, name: str, data: bytes) -> None:
    """`atomic_write_bytes` inside the directory open as `directory` (`open_directory`): a new temporary file
    (O_CREAT | O_EXCL | O_NOFOLLOW, named as `atomic_write_bytes` names its, so `remove_stale_temps` knows it),
    written, fsynced and renamed to `name` in that directory, then the directory fsynced. No path is resolved: a link
    swapped in for the directory is never followed, and a link at `name` is replaced, never written through. The
    mode is 0666 less the umask, as `atomic_write_bytes` makes it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = f"{_temp_prefix(Path(name))}{writer_tag()}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666, dir_fd=directory)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free name for a temporary file", name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=directory)
        except OSError:
            pass
        raise
    try:
        os.fsync(directory)
    except OSError:  # some filesystems cannot fsync a directory: the rename is still atomic
        pass


def make_directories(directory: Path, created: list[Path]) -> None:
    """`mkdir -p directory`, appending each directory it makes to `created` (outermost first), so that a write that
    fails later can remove them (`remove_made`) and leave nothing half-made."""
    directory = Path(directory)
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for d in reversed(missing):
        d.mkdir()
        created.append(d)


def remove_made(created: list[Path]) -> None:
    """Remove the directories `make_directories` made (innermost first) where they are still empty."""
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:  # not empty (another process wrote into it meanwhile): leave it
            pass


def write_new_file(path: Path, data: bytes, what: str) -> None:
    """`atomic_write_bytes`, creating the missing directories of `path`; an OSError (a full disk, a read-only
    directory, a file where a directory belongs) is the one-line `PoisonbenchError` "cannot write WHAT to PATH:
    REASON", with the temporary file and every directory this call created removed: nothing half-made is left."""
    path, created = Path(path), []
    try:
        make_directories(path.parent, created)
        atomic_write_bytes(path, data)
    except OSError as e:
        remove_made(created)
        raise PoisonbenchError(f"cannot write {what} to {str(path)!r}: {why_not_written(e, path)}") from None


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


def umask() -> int:
    """The process's umask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_bytes(obj: Any) -> bytes:
    """The bytes `atomic_write_json` writes for `obj` (two-space indent, sorted keys, a final newline): one
    definition, so that a file rebuilt from its data (`records unpack`) can be compared with one on disk."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def _link_text(path: Path) -> str:
    try:
        return f" (to {os.readlink(path)!r})"
    except OSError:
        return ""


def _lock_is_a_link(lock_path: Path) -> PoisonbenchError:
    return PoisonbenchError(f"{str(lock_path)!r} is a symbolic link{_link_text(lock_path)}, not a lock file: "
                            "poisonbench opens its locks only as files of its own; remove the link")


def _open_lock_file(lock_path: Path) -> int:
    """A descriptor of `lock_path`, created if absent, never through a symbolic link (O_NOFOLLOW: a link at the lock
    path is refused, its target neither created nor truncated) and only a regular file (a FIFO or a device there is
    refused). The lock's directory is created if absent. Each refusal is one line naming the path."""
    lock_path = Path(lock_path)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_create(lock_path, e) from None
    if lock_path.is_symlink():  # also where the system has no O_NOFOLLOW
        raise _lock_is_a_link(lock_path)
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(lock_path, flags, 0o666)  # the umask applies, as to filelock's own
    except OSError as e:
        raise _cannot_create(lock_path, e) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PoisonbenchError(f"{str(lock_path)!r} is not a regular file, not a lock file poisonbench made; remove "
                               "it")
    return fd


def _same_file(fd: int, path: Path) -> bool:
    """Whether `path` (not following a link) is still the file `fd` is open on."""
    try:
        now = os.lstat(path)
    except OSError:
        return False
    held = os.fstat(fd)
    return stat.S_ISREG(now.st_mode) and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _cannot_create(lock_path: Path, e: OSError) -> PoisonbenchError:
    if Path(lock_path).is_symlink():  # O_NOFOLLOW's ELOOP, from our open or filelock's
        return _lock_is_a_link(Path(lock_path))
    return PoisonbenchError(f"cannot create the lock file {str(lock_path)!r}: {why_not_written(e, lock_path)}")


def _take(lock: FileLock, fd: int, timeout: float) -> bool:
    """Take `lock` (timeout 0: try once; -1: wait as long as it takes); False when another process holds it. Once
    taken, the lock path must still be the regular file `fd` (`_open_lock_file`) is open on: a link swapped in
    between (which a `filelock` without O_NOFOLLOW, 3.x, would have followed) releases the lock and is refused."""
    path = Path(lock.lock_file)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:  # a TimeoutError, so an OSError: caught first
        return False
    except OSError as e:
        raise _cannot_create(path, e) from None
    if not _same_file(fd, path):
        lock.release()
        if path.is_symlink():
            raise _lock_is_a_link(path)
        raise PoisonbenchError(f"the lock file {str(path)!r} was replaced while it was being taken; run the command "
                               "again")
    return True


@contextmanager
def _held(lock_path: Path, wait: bool, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """`try_exclusive` (`wait` False) and `exclusive`: the lock file opened by poisonbench (`_open_lock_file`) and
    held open while `filelock` takes and holds the lock, then checked (`_take`)."""
    fd = _open_lock_file(lock_path)
    try:
        lock = FileLock(lock_path)
        if not _take(lock, fd, timeout=0):
            if not wait:
                yield False
                return
            if on_wait is not None:
                on_wait()
            _take(lock, fd, timeout=-1)
        try:
            yield True
        finally:
            lock.release()
    finally:
        os.close(fd)


@contextmanager
def try_exclusive(lock_path: Path) -> Iterator[bool]:
    """`exclusive` without waiting: yields True holding the lock, or False at once when another process holds it
    (e.g. a `defend` that finds another process training the same run goes on with its other runs first)."""
    with _held(lock_path, wait=False) as claimed:
        yield claimed


@contextmanager
def exclusive(lock_path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (created if absent) for the block: `filelock`'s, an advisory flock on
    POSIX and a byte-range lock on Windows. Two holders in one process exclude each other too (each takes its own).

    Used so that concurrent sweep jobs sharing a results directory craft a PoisonSet or train a surrogate once:
    the others wait, then find the artifact. `on_wait` is called once if another process holds the lock.
    The lock dies with its holder (a killed craft never blocks the next one).

    A lock file is never opened through a symbolic link, whatever `filelock` version opens it: poisonbench creates
    it first (O_NOFOLLOW, a regular file only) and checks, once the lock is taken, that the path is still that file
    (`_open_lock_file`, `_take`); a link is one line naming it.
    """
    with _held(lock_path, wait=True, on_wait=on_wait):
        yield


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` when it is a file (a directory of the path cannot be made), else
    None."""
    for ancestor in Path(path).parents:
        if ancestor.exists():
            return None if ancestor.is_dir() else ancestor
    return None


def why_not_written(error: OSError, path: Path) -> str:
    """The reason an OSError gives for not writing `path`, naming the file that stands where a directory of its
    path belongs (mkdir's bare "File exists" / "Not a directory" does not say which)."""
    blocking = file_in_the_way(path)
    if blocking is not None:
        return f"{str(blocking)!r} is a file, not a directory"
    if isinstance(error, FileExistsError) and Path(path).exists() and not Path(path).is_dir():
        return f"{str(path)!r} is a file, not a directory"
    return error.strerror or str(error)


@contextmanager
def os_error_in_one_line(what: str, path: Path) -> Iterator[None]:
    """Within the block an OSError (a full disk, a read-only workspace) becomes the one-line `PoisonbenchError`
    "cannot write WHAT to PATH: REASON"; the atomic writers have already removed their temporary files."""
    try:
        yield
    except OSError as e:
        raise PoisonbenchError(f"cannot write {what} to {str(path)!r}: {why_not_written(e, Path(path))}") from None


def ensure_writable(directory: Path, what: str) -> None:
    """Create `directory` if it is missing, then create and remove a file in it: a read-only workspace, a
    directory without write permission or a file where the directory belongs fails here, in one line, before
    work whose result could not be saved. `what` names what the directory holds, for the message."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=f".write-probe.{writer_tag()}.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PoisonbenchError(f"cannot write {what} into {str(directory)!r}: {why_not_written(e, directory)}") \
            from None


def torch_load_tensors(path: Path):
    """`torch.load(path, weights_only=True)` on the CPU: tensors and plain containers only, no code runs. torch
    warns (two lines on stderr) about a pickle protocol other than its own before it loads or refuses a file;
    the caller's one-line error or result says what matters, so that warning is silenced. The file is opened
    through the bounded reader: a regular file of `MAX_PICKLE_BYTES` at most, else `Refused` unread."""
    import torch

    from . import bounded

    with bounded.open_regular(path) as f:
        bounded.check_size(f, bounded.MAX_PICKLE_BYTES, repr(str(path)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(f, map_location="cpu", weights_only=True)
