"""Run records (docs/engine.md, "Run records and resume"; fields: docs/metrics.md): one schema-versioned JSON file per
run, written atomically.

`run_id` is the short hash of the run's canonical config, so the same run always lands in the same file,
and an existing record means the run is done.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

from . import __version__
from .checkpoints import cpu_model
from .errors import PoisonbenchError
from .hashing import code_fingerprint, short_hash
from .io import atomic_write_json, ensure_writable

SCHEMA_VERSION = 1
DEFAULT_RESULTS = "results"


def results_dir(path: str | Path | None = None) -> Path:
    """`--results DIR`, else $POISONBENCH_RESULTS, else ./results (need not exist yet; must not be a file). An
    empty `--results ""` (an unset shell variable, say) is refused rather than taken for the default."""
    if isinstance(path, str) and not path.strip():
        raise PoisonbenchError(f"--results is empty ({path!r}); pass a directory, or leave the option out for "
                               f"$POISONBENCH_RESULTS or ./{DEFAULT_RESULTS}")
    root = Path(path or os.environ.get("POISONBENCH_RESULTS") or DEFAULT_RESULTS)
    if root.exists() and not root.is_dir():
        raise PoisonbenchError(f"results workspace {str(root)!r} is a file, not a directory; pass --results DIR")
    return root


def workspace_subdir(root: str | Path | None, name: str) -> Path:
    """`<results>/<name>` (poisons, runs, ...): need not exist yet; a file in its place is refused in one line."""
    path = results_dir(root) / name
    if path.exists() and not path.is_dir():
        raise PoisonbenchError(f"{str(path)!r} is a file, not a directory: the results workspace is damaged; move "
                               "the file away or pass another --results")
    return path


def run_id(config: dict) -> str:
    return short_hash(config)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout this package runs from, read once per process: `defend` reads it when a
    run starts, so a record names the code that ran even if the checkout moves on before the run ends.
    `dirty`: the package's files (or pyproject.toml) differ from the commit, untracked modules included (None
    outside a git checkout)."""
    commit = _git("rev-parse", "HEAD") or None
    # the package and its metadata only (new untracked modules included); --no-optional-locks: never take the
    # index lock, so a run starting during a commit or merge cannot make that fail
    status = _git("--no-optional-locks", "status", "--porcelain", "--", ":/poisonbench", ":/pyproject.toml") \
        if commit else None
    return commit, (None if status is None else bool(status))


def git_commit() -> str | None:
    return git_state()[0]


def environment(device: torch.device, accel: str = "auto") -> dict:
    """Where and how a run or a craft executed (none of it is part of a run id or a poison id); `accel`: the CPU
    kernels' switch it ran with (poisonbench.accel)."""
    env = {
        "poisonbench": __version__,
        "git_commit": git_commit(),
        "git_dirty": git_state()[1],
        "code": code_fingerprint(),  # sha256 of the package sources, also where no git checkout is
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "accel": accel,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
    }
    if device.type == "cpu":
        env["cpu"] = cpu_model()
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cudnn"] = torch.backends.cudnn.version()
        env["cudnn_tf32"] = torch.backends.cudnn.allow_tf32
    return env


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
    """What every source of run records shares (`RunStore` reads `runs/`; `records_pack.PackedRunStore` a packed
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
        from .record_checks import record_problem

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

    def ensure_writable(self) -> None:
        """Fail (PoisonbenchError, one line) unless records can be written into `runs/`: called before training,
        so a read-only workspace does not cost a whole run first."""
        ensure_writable(self.runs, "run records")

    def get(self, rid: str) -> dict | None:
        """The complete record of `rid`, or None (absent or unreadable: then the run is not done)."""
        try:
            record = json.loads(self.path(rid).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or not is_complete(record):  # valid JSON but not a record: as unreadable
            return None
        return record if record.get("schema_version") == SCHEMA_VERSION else None

    def foreign_schema(self, rid: str):
        """The `schema_version` of `rid`'s record when it is readable JSON written with another schema, else None."""
        try:
            record = json.loads(self.path(rid).read_text())
        except (OSError, ValueError):
            return None
        version = record.get("schema_version") if isinstance(record, dict) else None
        return version if version is not None and version != SCHEMA_VERSION else None

    def put(self, record: dict) -> Path:
        path = self.path(record["run_id"])
        atomic_write_json(path, record)
        return path

    def all(self) -> list[dict]:
        """Every complete, trustworthy record of this schema version that is the record of the run it names. The
        files skipped are listed with why in `skipped` (`skipped_lines`: one line each) and counted by kind:
        `unreadable` (not JSON, not readable, incomplete), `other_schema`, `untrusted` (a field at fault,
        `record_checks.record_problem`) and `mismatched` (`identity_problem`); `skipped_note` sums them up."""
        records = []
        self._forget_skipped()
        for path in sorted(self.runs.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except OSError as e:
                self._skip_unreadable(path, f"unreadable ({e.strerror or type(e).__name__})")
                continue
            except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
                where = f" ({e.msg} at line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) \
                    else " (not UTF-8 text)"
                self._skip_unreadable(path, f"not valid JSON{where}: a torn write, or not a record")
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
        try:
            return json.loads(self.failure_path(rid).read_text())
        except (OSError, ValueError):
            return None

    def clear_failure(self, rid: str) -> None:
        self.failure_path(rid).unlink(missing_ok=True)


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory (docs/metrics.md, "Run records"), in MiB: `peak_rss_mib`, the process's peak resident set so far
    (Linux `ru_maxrss`: it includes the dataset load and earlier runs or crafts of the same command, never less than
    this one's own peak), and on CUDA `peak_cuda_mib`, the peak memory allocated by tensors since the caller last reset
    CUDA's peak statistics (at the start of a run or craft)."""
    out = {}
    try:
        import resource

        unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20, 1)
    except (ImportError, OSError):  # not a Unix system
        pass
    if device.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out
