"""Run records (docs/engine.md, "Run records and resume"; fields: docs/metrics.md): one schema-versioned JSON file per
run, written atomically.

`run_id` is the short hash of the run's canonical config, so the same run always lands in the same file,
and an existing record means the run is done.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

from ..core.bounded import Refused, read_json_file
from ..core.errors import PoisonbenchError, PoisonbenchWarning
from ..core.hashing import short_hash
from ..core.io import atomic_write_json, ensure_writable
from ..core.workspace import results_dir, workspace_dir

SCHEMA_VERSION = 1


def run_id(config: dict) -> str:
    return short_hash(config)


def missing_fields(record: dict) -> list[str]:
    """The fields every reader relies on that `record` lacks (run id, the configuration's identifying fields,
    metrics, cost), in the schema's order; empty for a complete record."""
    config, metrics, cost = record.get("config"), record.get("metrics"), record.get("cost")
    lacks = [] if isinstance(record.get("run_id"), str) else ["run_id"]
    if not isinstance(config, dict):
        lacks.append("config")
    else:
        lacks += [f"config.{k}" for k in ("dataset", "model", "scenario", "trial", "seed") if k not in config]
        recipe, defense = config.get("recipe"), config.get("defense")
        lacks += [f"config.recipe.{k}" for k in ("name", "epochs") if not isinstance(recipe, dict) or k not in recipe]
        lacks += [] if isinstance(defense, dict) and "method" in defense else ["config.defense.method"]
    lacks += [] if isinstance(metrics, dict) and "test_acc" in metrics else ["metrics.test_acc"]
    lacks += [] if isinstance(cost, dict) and "seconds" in cost else ["cost.seconds"]
    return lacks


def is_complete(record: dict) -> bool:
    """A record has what every reader relies on: run id, the configuration's identifying fields, metrics, cost."""
    return not missing_fields(record)


def identity_problem(path: Path, record: dict) -> str | None:
    """Why `record`, read from `path`, is not the record of the run it names, or None: a run id is the hash of its
    config (`run_id`), and a record lives in `<run_id>.json`. A config edited after the run keeps the old id (its
    numbers are not of that config); a copy under another name (a later `finished_at`, say) would otherwise stand
    in for the genuine record."""
    rid = record["run_id"]
    try:
        hashed = run_id(record["config"])
    except (TypeError, ValueError):  # a config that is not JSON data (NaN keys, ...) has no run id
        hashed = None
    problems = [] if hashed == rid else [f"run_id {rid!r} does not match its config's hash ({hashed}): the config "
                                         "was edited after the run"]
    problems += [] if path.stem == rid else [f"file name is not its run_id ({rid!r}): a copy or a renamed file"]
    return "; ".join(problems) or None


def _json_kind(value) -> str:
    if value is None or isinstance(value, bool):
        return "null" if value is None else "boolean"
    return {list: "array", str: "string", int: "number", float: "number"}.get(type(value), type(value).__name__)


def file_stem(rid: str) -> str:
    """`rid` (a run id, or a failure record's key) as the stem of its file: a string that is not a plain file name
    (`../x`, `a/b`, `/abs`, a leading dot) is refused in one line, so no field of a record ever makes a path outside
    `runs/` or `failures/`."""
    if not (isinstance(rid, str) and re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", rid) and ".." not in rid):
        raise PoisonbenchError(f"{rid!r} is not a run id (16 hex digits)")
    return rid


class RecordReader:
    """What every source of run records shares (`RunStore` reads `runs/`; `packed_records.PackedRunStore` a packed
    file): the checks a record must pass to be read, and the list of those skipped, with why (`skipped_lines`),
    counted by kind (`skipped_note`). `runs` names the source in messages."""

    runs: Path

    def __init__(self):
        self._forget_skipped()

    def _forget_skipped(self) -> None:
        # the entries the last `all()` skipped, each with why (`skipped_lines`); counted by kind in `skipped_note`:
        self.skipped: list[tuple[Path, str]] = []
        self.unreadable = 0  # not JSON, not readable, or not a complete record ...
        self.other_schema = 0  # ... or a record of another schema_version
        self.untrusted: list[tuple[Path, str]] = []  # ... or one with a field a report cannot trust: (file, why)
        self.mismatched: list[tuple[Path, str]] = []  # ... or not the record of the run it names: (file, why)

    def _skip_unreadable(self, where: Path, why: str) -> None:
        self.unreadable += 1
        self.skipped.append((where, why))

    def _admit(self, where: Path, record, path: Path | None = None) -> bool:
        """True when the parsed `record` is one `all()` returns: complete, trustworthy, of this schema version and
        the record of the run it names (`identity_problem`, read from `path`, default `where`); else it is counted
        and listed as skipped, under `where`, with why."""
        from .record_schema import record_problem

        if not isinstance(record, dict) or record.get("schema_version") != SCHEMA_VERSION:
            self.other_schema += 1
            self.skipped.append((where, f"schema_version {record.get('schema_version')!r}, not {SCHEMA_VERSION} "
                                        "(another poisonbench version's record?)" if isinstance(record, dict)
                                 else f"not a run record (a JSON {_json_kind(record)}, not an object)"))
        elif lacks := missing_fields(record):
            self._skip_unreadable(where, f"incomplete: lacks {', '.join(lacks[:4])}")
        elif (problem := record_problem(record)) is not None:
            self.untrusted.append((where, problem))
            self.skipped.append((where, problem))
        elif (problem := identity_problem(path or where, record)) is not None:
            self.mismatched.append((where, problem))
            self.skipped.append((where, problem))
        else:
            return True
        return False

    def skipped_note(self) -> str | None:
        """One line summing up the files the last `all()` skipped (named in `skipped_lines`), or None."""
        parts = [f"{self.unreadable} unreadable or incomplete"] if self.unreadable else []
        parts += [f"{self.other_schema} not of schema_version {SCHEMA_VERSION}"] if self.other_schema else []
        parts += [f"{len(self.untrusted)} with a field that cannot be trusted"] if self.untrusted else []
        parts += [f"{len(self.mismatched)} not the record of the run it names"] if self.mismatched else []
        skipped = self.unreadable + self.other_schema + len(self.untrusted) + len(self.mismatched)
        return f"skipped {skipped} record file(s) in {self.runs}: {', '.join(parts)}" if parts else None

    def skipped_lines(self) -> list[str]:
        """One warning line per file the last `all()` skipped, naming the file and why."""
        return [f"skipped {path}: {why}" for path, why in self.skipped]

    def untrusted_lines(self) -> list[str]:
        """One warning line per record the last `all()` skipped as untrustworthy, naming the file and the field."""
        return [f"skipped {path}: {problem}" for path, problem in self.untrusted]


class RunStore(RecordReader):
    """The results store: `<results>/runs/<run_id>.json`. Nothing else is a source of truth for reports."""

    def __init__(self, root: str | Path | None = None):
        super().__init__()
        self.root = results_dir(root)
        self.runs = self.root / "runs"

    def path(self, rid: str) -> Path:
        """`runs/<rid>.json` (`rid` checked by `file_stem`)."""
        return self.runs / f"{file_stem(rid)}.json"

    def lock_path(self, rid: str) -> Path:
        """`locks/run-<rid>.lock`: the claim of run `rid`, held by whoever writes its record (`defend`, `records
        unpack`), beside the PoisonSets' and pre-trained models' locks."""
        return workspace_dir(self.root, "locks") / f"run-{file_stem(rid)}.lock"

    def ensure_writable(self) -> None:
        """Fail (PoisonbenchError, one line) unless records can be written into `runs/`: called before training,
        so a read-only workspace does not cost a whole run first."""
        ensure_writable(workspace_dir(self.root, "runs"), "run records")

    def get(self, rid: str) -> dict | None:
        """The complete record of `rid`, or None (absent or unreadable: then the run is not done)."""
        record = self._read(self.path(rid))
        if not isinstance(record, dict) or not is_complete(record):  # valid JSON but not a record: as unreadable
            return None
        return record if record.get("schema_version") == SCHEMA_VERSION else None

    def foreign_schema(self, rid: str):
        """The `schema_version` of `rid`'s record when it is readable JSON written with another schema, else None."""
        record = self._read(self.path(rid))
        version = record.get("schema_version") if isinstance(record, dict) else None
        return version if version is not None and version != SCHEMA_VERSION else None

    @staticmethod
    def _read(path: Path):
        """The parsed JSON file `path` (`bounded.read_json_file`), or None when it is absent or unreadable; one
        refused by a bound (too large, nested too deep, not a regular file: docs/commands.md, "Limits") is named
        in a warning, so that a hostile file is never silently taken for a run not done."""
        try:
            return read_json_file(path, label=str(path))
        except Refused as e:
            if e.over_limit:
                import warnings

                warnings.warn(f"skipped {path}: {e.why}", PoisonbenchWarning, stacklevel=3)
            return None

    def put(self, record: dict, replace: bool = False) -> Path:
        """Write `record` as `runs/<run_id>.json` (atomically). One run id holds one craft (docs/engine.md, "One run
        id, one craft"): a stored record of the same id trained on other tensors of the same PoisonSets is refused
        in one line naming both crafts, unless `replace` (`defend --force`), which replaces it with a warning."""
        import warnings

        from .run_inputs import crafts_text, differing_crafts, record_crafts

        workspace_dir(self.root, "runs")  # never written through a symbolic link
        path = self.path(record["run_id"])
        existing = self.get(record["run_id"])
        clash = differing_crafts(record_crafts(record), record_crafts(existing)) if existing is not None else {}
        if clash:
            ours = {pid: pair[0] for pid, pair in clash.items()}
            theirs = {pid: pair[1] for pid, pair in clash.items()}
            what = (f"run {record['run_id']}: {path} holds its record trained on craft(s) {crafts_text(theirs)}; "
                    f"this one trained on {crafts_text(ours)}")
            if not replace:
                raise PoisonbenchError(f"{what}: refusing to replace it (one run id, one craft); keep this run in "
                                       "another --results, or re-run with --force to replace it")
            warnings.warn(f"{what}: replacing it (--force)", PoisonbenchWarning, stacklevel=2)
        atomic_write_json(path, record)
        return path

    def all(self) -> list[dict]:
        """Every complete, trustworthy record of this schema version that is the record of the run it names. The
        files skipped are listed with why in `skipped` (`skipped_lines`: one line each) and counted by kind:
        `unreadable` (not JSON, not readable, incomplete), `other_schema`, `untrusted` (a field at fault,
        `record_schema.record_problem`) and `mismatched` (`identity_problem`); `skipped_note` sums them up."""
        records = []
        self._forget_skipped()
        for path in sorted(self.runs.glob("*.json")):
            try:  # a regular file of MAX_JSON_FILE_BYTES at most, MAX_DEPTH deep at most (core/bounded.py)
                record = read_json_file(path, label=str(path))
            except Refused as e:
                damaged = not e.over_limit and e.why.startswith("not valid JSON")
                self._skip_unreadable(path, f"{e.why}: a torn write, or not a record" if damaged else e.why)
                continue
            if self._admit(path, record):
                records.append(record)
        return records

    def failure_path(self, rid: str) -> Path:
        return self.root / "failures" / f"{file_stem(rid)}.json"

    def put_failure(self, rid: str, config: dict, error: BaseException) -> Path:
        """Write what made run `rid` raise (error, traceback, host, time, config) beside the records, never as
        one: `report` reads `runs/` only, and a later successful run removes it (`clear_failure`)."""
        import datetime
        import traceback

        workspace_dir(self.root, "failures")
        path = self.failure_path(rid)
        atomic_write_json(path, {
            "run_id": rid, "schema_version": SCHEMA_VERSION, "config": config,
            "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error)),
            "host": platform.node(), "pid": os.getpid(),
            "failed_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })
        return path

    def failure(self, rid: str) -> dict | None:
        """The failure record of `rid`, or None."""
        return self._read(self.failure_path(rid))

    def clear_failure(self, rid: str) -> None:
        self.failure_path(rid).unlink(missing_ok=True)
