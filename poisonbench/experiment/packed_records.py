"""Packed run records: a workspace's run records and PoisonSet manifests in one shareable file (`poisonbench records
pack | unpack`), which `poisonbench report --results FILE.jsonl.gz` reads as it reads the workspace.

The format (version 1; docs/commands.md): JSON lines, each one compact object (sorted keys, no spaces, ASCII),
compressed by the file's suffix: `.jsonl.gz` gzip (mtime 0, no file name in its header), `.jsonl.xz` xz (about half
the size; what `experiments/` keeps). A reader tells them by their first bytes.

    {"format":"poisonbench-records","kind":"header","poison_manifests":M,"runs":N,"version":1}   the first line
    {"kind":"run","record":{...}}                  N lines, one per run record, by run id (their file names' order)
    {"kind":"poison_manifest","manifest":{...}}    M lines, one per PoisonSet manifest, by poison id

Packing the same records twice gives the same bytes. Unpacking writes each record as `RunStore` does (and each
manifest as the PoisonSet store does), so a workspace written by poisonbench comes back byte for byte. With a grid
(`records pack --grid GRID`), only the records of that sweep grid's runs are packed, with the manifests of the
PoisonSets they trained on: one experiment's records out of a workspace that holds several.

Reading is bounded (core/bounded.py: a regular file, 16 MB a line, 256 MB uncompressed) and so is the memory the
parsed lines take per byte of text: tiny JSON containers (`[[],[],…]`, `{}`) take 24-36 bytes of Python per byte
against 4.5-5.4 for genuine records (tracemalloc, every pack in experiments/records/), so 256 MB of them would take
9 GB. Before a line is parsed, `json_memory_estimate` counts its tokens (`bytes.count`, at C speed): 88 bytes a
`[` or `{`, 24 a `,`, 48 a `:`, 28 a `"`, 4 a byte; an upper bound on what `json.loads` builds (measured: genuine
packs estimate 8.4-11.1 per byte, containers 38-46, short strings 20, small ints 16). Once the lines so far
estimate more than `PACKED_MEMORY_FLOOR`, they may estimate `MAX_PACKED_MEMORY_PER_BYTE` × their text at most,
and no more than the memory available; else the file is refused at that line (docs/commands.md, "Limits").
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import lzma
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..core import bounded
from ..core.bounded import Refused, check_memory, iter_bounded_lines, loads_json, open_regular, size_text
from ..core.errors import PoisonbenchError
from ..core.io import (
    HOLDS_DIRECTORIES,
    atomic_write_bytes,
    file_in_the_way,
    json_bytes,
    open_directory,
    os_error_in_one_line,
    write_file_at,
)
from ..core.io import check_output as check_output_file
from ..core.workspace import results_dir
from .records import RecordReader, RunStore, file_stem
from .run_inputs import poison_ids_of

FORMAT = "poisonbench-records"
VERSION = 1
SUFFIX = ".jsonl.gz"
SUFFIXES = (SUFFIX, ".jsonl.xz")  # gzip, xz
XZ_MAGIC = b"\xfd7zXZ\x00"
KINDS = ("header", "run", "poison_manifest")
PAYLOAD = {"run": "record", "poison_manifest": "manifest"}  # a body line's kind → the key of its object


# what parsed JSON lines may take (json_memory_estimate) per byte of their text, once above the floor
MAX_PACKED_MEMORY_PER_BYTE = 20
PACKED_MEMORY_FLOOR = 16 * 1_000_000


def json_memory_estimate(line: bytes) -> int:
    """An upper bound on the bytes `json.loads(line)` builds, from counting its tokens (module docstring)."""
    count = line.count
    return (88 * (count(b"[") + count(b"{")) + 24 * count(b",") + 48 * count(b":") + 28 * count(b'"')
            + 4 * len(line))


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()


def compressed(data: bytes, path: Path) -> bytes:
    """`data` compressed as `path`'s suffix says, reproducibly (the same input, the same bytes)."""
    if str(path).endswith(".xz"):
        return lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    return gzip_bytes(data)


def gzip_bytes(data: bytes) -> bytes:
    """`data` gzipped reproducibly: mtime 0 and no file name in the header (the same input, the same bytes)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as f:
        f.write(data)
    return buffer.getvalue()


def _file_name(record: dict) -> str:
    return f"{record['run_id']}.json"


# ----------------------------------------------------------------------------------------------- pack

@dataclass
class Contents:
    """What `collect` found: the records and manifests to pack, and the files left out, each with why."""
    records: list[dict] = field(default_factory=list)
    manifests: list[dict] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    grid: dict | None = None  # with a grid: {"name", "runs" (its run count), "missing" (its run ids without record)}


@dataclass
class GridSelection:
    """The runs of a sweep grid, as `poisonbench sweep plan` resolves them (the same run ids;
    `sweeps.plan.grid_selection`)."""
    name: str
    run_ids: list[str]


def check_workspace(directory: str | Path) -> Path:
    """`pack`'s DIR: a directory holding runs/ or poisons/."""
    root = Path(directory)
    if not root.is_dir():
        raise PoisonbenchError(f"{str(root)!r} is not a directory; pass a results workspace (a directory holding "
                               "runs/)")
    if not (root / "runs").is_dir() and not (root / "poisons").is_dir():
        raise PoisonbenchError(f"{str(root)!r} holds neither runs/ nor poisons/: not a results workspace")
    return root


def collect(directory: str | Path, grid: GridSelection | None = None) -> Contents:
    """The run records of `directory/runs/` that a report reads (`RunStore.all()`: a record whose run id is not its
    file name or its config's hash, of another schema, incomplete or untrustworthy is skipped, with why) and the
    PoisonSet manifests of `directory/poisons/*/manifest.json` whose poison id is their directory's and their
    crafting inputs' hash (`poisons.spec_of`). With `grid`, only the records of its runs, and only the manifests of
    the PoisonSets those records trained on (`poison_ids_of`)."""
    from ..poisons.store import MANIFEST_FILE, spec_of

    root = check_workspace(directory)
    store = RunStore(root)
    poisons = root / "poisons"
    out = Contents()
    if store.runs.is_dir():
        out.records = sorted(store.all(), key=_file_name)
        out.skipped += store.skipped
    used = None
    if grid is not None:
        wanted = set(grid.run_ids)
        out.records = [r for r in out.records if r["run_id"] in wanted]
        found = {r["run_id"] for r in out.records}
        out.grid = {"name": grid.name, "runs": len(grid.run_ids),
                    "missing": [rid for rid in grid.run_ids if rid not in found]}
        used = set().union(*map(poison_ids_of, out.records))
    if poisons.is_dir():
        for entry in sorted(poisons.iterdir()):
            # a writer's temporary directory, or no PoisonSet at all; a manifest.json that is there but no regular
            # file (a directory, a link to nowhere) is read, refused and named with the rest
            if entry.name.startswith(".") or not os.path.lexists(entry / MANIFEST_FILE):
                continue
            if used is not None and entry.name not in used:  # a PoisonSet no packed run trained on
                continue
            try:
                out.manifests.append(spec_of(root, entry.name)[1])
            except PoisonbenchError as e:
                out.skipped.append((entry / MANIFEST_FILE, str(e)))
    return out


def check_output(out: str | Path, force: bool, directory: str | Path | None = None) -> Path:
    """`pack`'s OUT: a name ending in .jsonl.gz or .jsonl.xz, not a directory, not an existing file unless `force`,
    and never a file of the workspace `directory` packs (its runs/ and poisons/), even with `force`
    (`core.io.check_output`)."""
    path = Path(out)
    if not str(out).endswith(SUFFIXES) or path.name in SUFFIXES:
        raise PoisonbenchError(f"OUT {str(out)!r} must be a file name ending in {' or '.join(SUFFIXES)} (e.g. "
                               f"records{SUFFIX})")
    if path.is_dir():
        raise PoisonbenchError(f"OUT {str(out)!r} is a directory; pass a file name ending in {SUFFIX}")
    inputs = () if directory is None else (Path(directory) / "runs", Path(directory) / "poisons")
    return check_output_file(path, force, inputs, label="OUT ")


def pack(directory: str | Path, out: str | Path, force: bool = False, grid: GridSelection | None = None) -> dict:
    """Write the records and manifests of `directory` (`collect`; with `grid`, only that sweep grid's runs and
    their PoisonSets: `sweeps.plan.grid_selection` resolves it) to `out` atomically; returns a summary: counts,
    bytes, the files skipped (each with why) and, with a grid, its name, run count and the run ids it has no record
    of."""
    path = check_output(out, force, directory)
    check_workspace(directory)
    contents = collect(directory, grid)
    header = {"kind": "header", "format": FORMAT, "version": VERSION, "runs": len(contents.records),
              "poison_manifests": len(contents.manifests)}
    lines = [_line(header)]
    lines += [_line({"kind": "run", "record": r}) for r in contents.records]
    lines += [_line({"kind": "poison_manifest", "manifest": m})
              for m in sorted(contents.manifests, key=lambda m: m["poison_id"])]
    raw = b"".join(lines)
    data = compressed(raw, path)
    with os_error_in_one_line("packed records", path):
        atomic_write_bytes(path, data)
    return {"out": str(path), "runs": len(contents.records), "poison_manifests": len(contents.manifests),
            "skipped": [{"file": str(p), "why": why} for p, why in contents.skipped],
            "bytes": len(data), "uncompressed_bytes": len(raw), **({"grid": contents.grid} if contents.grid else {})}


# ----------------------------------------------------------------------------------------------- read

@dataclass
class Pack:
    """A packed file, checked line by line: its run records and manifests, each with its line number."""
    path: Path
    runs: list[tuple[int, dict]] = field(default_factory=list)
    manifests: list[tuple[int, dict]] = field(default_factory=list)


def _lines(path: Path):
    """(line number, bytes) of the gzip or xz file `path`; a file that is neither, or is cut short, fails in one
    line, as does one that is not a regular file (a FIFO would block), a line longer than `MAX_PACKED_LINE_BYTES`
    or more than `MAX_PACKED_BYTES` uncompressed in all (core/bounded.py: read line by line, never more)."""
    if not path.exists():
        raise PoisonbenchError(f"no packed records file {str(path)!r} (make one with `poisonbench records pack`)")
    if path.is_dir():
        raise PoisonbenchError(f"{str(path)!r} is a directory, not a packed records file ({SUFFIX})")
    number = 0
    try:
        with open_regular(path) as raw:
            xz = raw.read(len(XZ_MAGIC)) == XZ_MAGIC
            raw.seek(0)
            with (lzma.LZMAFile(raw) if xz else gzip.GzipFile(fileobj=raw, mode="rb")) as f:
                for number, line in iter_bounded_lines(f, repr(str(path))):  # `number`: where a damage is met
                    yield number, line
    except EOFError:
        raise PoisonbenchError(f"{str(path)!r} is cut short after line {number} (the compressed stream ends "
                               "early): pack it again") from None
    except (OSError, zlib.error, lzma.LZMAError) as e:
        if isinstance(e, OSError) and e.strerror:  # permission denied, ...
            raise PoisonbenchError(f"cannot read {str(path)!r}: {e.strerror}") from None
        what = "neither gzip nor xz" if number == 0 else f"damaged after line {number} ({e})"
        raise PoisonbenchError(f"{str(path)!r} is not a packed records file: {what}") from None


def read_pack(path: str | Path) -> Pack:
    """Read and check every line of a packed file: JSON objects, a header of this format and version first, known
    kinds, run ids that are plain file names, poison ids, no id twice, as many lines as the header announces.
    Anything else is one `PoisonbenchError` naming the file and the line."""
    from ..poisons.store import check_poison_id

    path = Path(path)
    pack, header, seen = Pack(path), None, {}
    text = estimate = 0
    memory = bounded.available_memory()
    for number, raw in _lines(path):
        where = f"{str(path)!r} line {number}"
        text, estimate = text + len(raw), estimate + json_memory_estimate(raw)
        if estimate > PACKED_MEMORY_FLOOR and estimate > MAX_PACKED_MEMORY_PER_BYTE * text:
            raise Refused(repr(str(path)), f"its JSON up to line {number} would take about {size_text(estimate)}, "
                          f"{estimate / text:.0f} bytes per byte of text; above {size_text(PACKED_MEMORY_FLOOR)} "
                          f"the limit is {MAX_PACKED_MEMORY_PER_BYTE} (genuine records take 9-11); refused")
        if memory is not None and estimate > memory:  # the memory available, read once before the first line
            check_memory(estimate, repr(str(path)), f"parsing it up to line {number}")
        # not UTF-8, not JSON, nested too deep, an integer of too many digits; a column counted in the line itself
        obj = loads_json(raw.rstrip(b"\n"), where)
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if kind not in KINDS:
            raise PoisonbenchError(f"{where}: unknown kind {kind!r}; valid choices: {', '.join(KINDS)}")
        if number == 1:
            if kind != "header" or obj.get("format") != FORMAT:
                raise PoisonbenchError(f"{where}: not a {FORMAT} header (a file made by `poisonbench records pack` "
                                       "starts with one)")
            if obj.get("version") != VERSION:
                raise PoisonbenchError(f"{where}: unknown format version {obj.get('version')!r}; valid choices: "
                                       f"{VERSION}")
            header = obj
            continue
        if kind == "header":
            raise PoisonbenchError(f"{where}: a second header (two packed files joined?)")
        payload = obj.get(PAYLOAD[kind])
        if not isinstance(payload, dict):
            raise PoisonbenchError(f"{where}: a {kind} line without its {PAYLOAD[kind]!r} object")
        if kind == "run":
            try:
                key = file_stem(payload.get("run_id"))
            except PoisonbenchError as e:
                raise PoisonbenchError(f"{where}: {e}") from None
            pack.runs.append((number, payload))
        else:
            key = payload.get("poison_id")
            check_poison_id(key, f"{where}: ")
            pack.manifests.append((number, payload))
        if (kind, key) in seen:
            raise PoisonbenchError(f"{where}: {kind} {key!r} again (first at line {seen[kind, key]})")
        seen[kind, key] = number
    if header is None:
        raise PoisonbenchError(f"{str(path)!r} is empty: not a packed records file")
    if (header.get("runs"), header.get("poison_manifests")) != (len(pack.runs), len(pack.manifests)):
        raise PoisonbenchError(f"{str(path)!r}: its header announces {header.get('runs')!r} run(s) and "
                               f"{header.get('poison_manifests')!r} manifest(s), it holds {len(pack.runs)} and "
                               f"{len(pack.manifests)}: cut short or edited")
    return pack


# ----------------------------------------------------------------------------------------------- unpack

def unpack(source: str | Path | Pack, directory: str | Path, skip_conflicts: bool = False) -> dict:
    """Recreate `directory/runs/<run_id>.json` and `directory/poisons/<poison_id>/manifest.json` from a packed file
    (a path, or the `Pack` `read_pack` made of it: the file is then not read again), each written atomically in the
    store's formatting. The whole file is checked first (`read_pack`), then every destination: an existing file
    that differs (or a directory or a link in its place) is a conflict, named in one line (a run record of the same
    id trained on another craft names both crafts: docs/engine.md, "One run id, one craft"); an identical one is
    left as it is. Conflicts refuse the whole unpack before anything is written, or with `skip_conflicts` only the
    conflicting files (the rest is written; each one refused is listed). Nothing is ever overwritten.

    The writes go into the directories opened once and held (`core.io.open_directory`: runs/, poisons/ and each
    poisons/<id>/, never through a symbolic link; a link swapped in for one midway is not followed), each file
    under the lock its writer takes (a run's `locks/run-<id>.lock`, as `defend`; a PoisonSet's
    `locks/poison-<id>.lock`, as crafting), where it is looked at again: a file another process (another unpack, a
    `defend`) wrote meanwhile is a conflict too, never replaced. Returns counts and the conflicts."""
    from ..core.io import exclusive
    from ..core.workspace import refuse_links
    from ..poisons.store import MANIFEST_FILE, craft_lock

    pack = source if isinstance(source, Pack) else read_pack(source)
    root = results_dir(directory)
    store = RunStore(root)
    plan = [(store.path(r["run_id"]), json_bytes(r), r, store.lock_path(r["run_id"])) for _, r in pack.runs]
    plan += [(root / "poisons" / m["poison_id"] / MANIFEST_FILE, json_bytes(m), None,
              craft_lock(root, m["poison_id"])) for _, m in pack.manifests]
    for path in dict.fromkeys(path.parent for path, *_ in plan):  # runs/ first, then each poisons/<id>/
        refuse_links(root, path)  # in one line, naming the link, before anything is written
    todo, unchanged, conflicts = [], 0, []
    for path, data, record, lock in plan:
        blocking = file_in_the_way(path)
        existing = None if blocking is not None else _existing(path, None, path)
        if blocking is not None:
            conflicts.append(f"{str(blocking)!r} is a file, not a directory")
        elif existing is None:
            todo.append((path, data, record, lock))
        elif existing == data:
            unchanged += 1
        else:
            conflicts.append(_conflict(path, existing, record))
    if conflicts and not skip_conflicts:
        raise PoisonbenchError(f"unpacking would overwrite {len(conflicts)} file(s) ({conflicts[0]}); nothing was "
                               "written: move them away, unpack into another directory, or pass --skip-conflicts "
                               "to write only the rest")
    written = 0
    with os_error_in_one_line("unpacked records", root), _HeldDirectories(root) as held:
        for path, data, record, lock in todo:
            with exclusive(lock):
                where = held.directory(path)
                name = path.name if where is not None else path  # by path only where nothing can be held open
                existing = _existing(name, where, path)  # again, under the lock its other writers take
                if existing is None:
                    if where is None:
                        atomic_write_bytes(path, data)
                    else:
                        write_file_at(where, name, data)
                    written += 1
                    continue
                unchanged += existing == data
                if existing != data:
                    conflict = _conflict(path, existing, record)
                    if not skip_conflicts:
                        raise PoisonbenchError(_meanwhile(conflict, written))
                    conflicts.append(conflict)
    return {"directory": str(root), "runs": len(pack.runs), "poison_manifests": len(pack.manifests),
            "written": written, "unchanged": unchanged, "refused": conflicts}


def _meanwhile(conflict: str, written: int) -> str:
    """The refusal of a file another process wrote while this unpack ran (checked again under its lock)."""
    if not written:
        return (f"unpacking would overwrite 1 file(s) ({conflict}; written meanwhile by another process); nothing "
                "was written: move it away, unpack into another directory, or pass --skip-conflicts to write only "
                "the rest")
    return (f"unpacking stopped: {conflict} (written meanwhile by another process); {written} file(s) written "
            "before it, nothing replaced: unpack again with --skip-conflicts to write the rest")


NOT_A_FILE = object()  # what `_existing` returns for a directory, a link or a device where a file belongs


def _existing(name: str | Path, directory: int | None, path: Path) -> bytes | object | None:
    """What is at `name` in the directory open as `directory` (None: `name` is a path), never through a link at
    `name`: None for nothing, the bytes of a regular file (`MAX_JSON_FILE_BYTES` + 1 at most: a larger one differs
    from any record anyway), `NOT_A_FILE` for anything else. Unreadable: one line naming `path`."""
    from ..core.bounded import MAX_JSON_FILE_BYTES

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags, dir_fd=directory)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symbolic link where the file belongs
            return NOT_A_FILE
        raise PoisonbenchError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return NOT_A_FILE
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read(MAX_JSON_FILE_BYTES + 1)
        except OSError as e:
            raise PoisonbenchError(f"cannot read {str(path)!r}: {e.strerror or e}") from None


class _HeldDirectories:
    """The directories `unpack` writes into, each opened once (`core.io.open_directory`, created if missing) and
    held until the end: `directory(path)` is the descriptor of `path`'s directory (runs/, poisons/<id>/)."""

    def __init__(self, root: Path):
        self.root, self.fds = root, {}

    def __enter__(self) -> _HeldDirectories:
        return self

    def __exit__(self, *exc) -> None:
        for fd in self.fds.values():
            os.close(fd)

    def directory(self, path: Path) -> int | None:
        if not HOLDS_DIRECTORIES:  # Windows: written by path
            return None
        parts = path.parent.relative_to(self.root).parts
        if () not in self.fds:
            self.root.mkdir(parents=True, exist_ok=True)  # the workspace itself may be a link (a scratch disk)
            self.fds[()] = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        for depth in range(1, len(parts) + 1):
            if parts[:depth] not in self.fds:
                self.fds[parts[:depth]] = open_directory(parts[depth - 1], self.fds[parts[:depth - 1]],
                                                         self.root.joinpath(*parts[:depth]))
        return self.fds[parts]


def _conflict(path: Path, existing: bytes | object, record: dict | None) -> str:
    """Why the packed `record` (None: a manifest) may not replace the file `path` holding `existing`
    (`NOT_A_FILE`: something else is there): for a run record trained on another craft of the same PoisonSets,
    both crafts."""
    from .run_inputs import crafts_text, differing_crafts, record_crafts_or_unknown

    if existing is NOT_A_FILE:
        return f"{str(path)!r} is not a file"
    if record is not None:
        try:
            theirs = loads_json(existing, str(path))
        except Refused:
            theirs = None
        theirs = record_crafts_or_unknown(theirs) if isinstance(theirs, dict) else {}
        clash = differing_crafts(record_crafts_or_unknown(record), theirs)
        if clash:
            ours = crafts_text({pid: pair[0] for pid, pair in clash.items()})
            stored = crafts_text({pid: pair[1] for pid, pair in clash.items()})
            return (f"run {record['run_id']}: {str(path)!r} trained on craft {stored}, the packed record on craft "
                    f"{ours}")
    return f"{str(path)!r} exists with other contents"


# ----------------------------------------------------------------------------------------------- report

class PackedRunStore(RecordReader):
    """A packed file read as `RunStore` reads `runs/`: `all()` applies the same checks to each record (those a
    report cannot use are skipped and named with their line), in the same order. Read-only."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.root = self.runs = Path(path)
        self.pack = read_pack(self.root)

    def all(self) -> list[dict]:
        self._forget_skipped()
        records = []
        for number, record in sorted(self.pack.runs, key=lambda entry: _file_name(entry[1])):
            if self._admit(Path(f"{self.root} line {number}"), record, Path(_file_name(record))):
                records.append(record)
        return records


def is_packed(results: str | None) -> bool:
    """Whether `--results` (else $POISONBENCH_RESULTS) names a packed file: an existing file, or a name ending in
    .jsonl.gz or .jsonl.xz."""
    name = results or os.environ.get("POISONBENCH_RESULTS")
    return bool(name and name.strip()) and (Path(name).is_file() or str(name).endswith(SUFFIXES))


def open_store(results: str | None) -> RunStore | PackedRunStore:
    """The records `report --results` names: a packed file (`is_packed`) or a workspace directory."""
    if is_packed(results):
        return PackedRunStore(results or os.environ["POISONBENCH_RESULTS"])
    return RunStore(results)
