"""Canonical JSON and short content hashes (run ids, poison ids, fingerprints)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal configs give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def in_number_type_of(value: Any, reference: Any) -> Any:
    """`value` in the number type of `reference` (a recipe field's default), so that 1 and 1.0 (or 10.0 and 10
    epochs) hash as one config. Attack and defense parameters get theirs from `Param.type` (poisonbench.core.params)."""
    if isinstance(value, bool) or isinstance(reference, bool):
        return value
    if isinstance(reference, float) and isinstance(value, int):
        return float(value)
    if isinstance(reference, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def short_hash(obj: Any, length: int = 16) -> str:
    """First `length` hex digits of the sha256 of the canonical JSON of `obj`."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def derived_seed(seed: int, stream: str) -> int:
    """A seed for the named random `stream` of a run, derived from the run's `seed` (63 bits of a sha256).

    Two draws made with the same algorithm from the same seed are the same sequence: the poisoned rows of a
    trial drawn as `randperm(n)` from the trial seed were exactly the engine's first-epoch order, so epoch 1
    trained on every poisoned row first. Each stream other than the engine's own takes a derived seed instead.
    (HINT's LiSSA sampler predates this and keeps its own `seed * 1_000_003 + 4`, so that recorded `--ihvp lissa`
    runs reproduce under their run ids; a new stream should use this function.)
    """
    digest = hashlib.sha256(f"{stream}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sha256_file(path) -> str:
    """sha256 of the file `path` (an imported file: `poisons import`, `--generator-weights`), read in chunks through
    the bounded reader: a regular file of `MAX_PICKLE_BYTES` at most, else `Refused` unread; a missing or unreadable
    file raises its OSError."""
    from . import bounded

    os.stat(path)  # a missing file: FileNotFoundError, as before
    h = hashlib.sha256()
    with bounded.open_regular(path) as f:
        bounded.check_size(f, bounded.MAX_PICKLE_BYTES, repr(str(path)))
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# modules that only read records (tables, figures, the report command, packed records): editing them cannot change
# a run's numbers, so it does not discard the checkpoints and half-done crafts of a sweep that is running; a name
# ending in "/" is a package (all of its modules)
REPORT_ONLY = frozenset({"report/", "cli/report.py", "experiment/packed_records.py", "cli/records.py"})


def can_change_runs(name: str) -> bool:
    """Whether the package module `name` (a path relative to the package, e.g. `report/tables/builders.py`) counts for
    `code_fingerprint`: every module but the report-only ones."""
    return name not in REPORT_ONLY and not any(name.startswith(p) for p in REPORT_ONLY if p.endswith("/"))


@functools.cache
def code_fingerprint() -> str:
    """sha256 (16 hex digits) of the package's Python sources that can change a run's numbers (all but
    `REPORT_ONLY`): saved state (a checkpoint, a half-done craft) is resumed only by the code that wrote it. The
    version string cannot tell, it stays 0.1.0 across commits that change numbers; a git commit would also change
    with every edit of the docs, and installed copies have none."""
    root = Path(__file__).parent.parent  # the package (this module is core/hashing.py)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root).as_posix()
        if can_change_runs(name):
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
