"""Copy finished run records between results workspaces, e.g. into git so a long experiment outlives its machine.

`results/` is git-ignored, and a machine (or cluster node) can be replaced between sessions: the records of a
multi-day experiment (experiments/fashion_mnist.md) are kept in `experiments/records/<name>/runs/` and
copied back into a fresh workspace before resuming, so finished runs are skipped, not re-trained:

    python experiments/archive_records.py --from results --to experiments/records/fashion-mnist --dataset fashion-mnist
    python experiments/archive_records.py --from experiments/records/fashion-mnist --to results

With `--checkpoints`, the epoch checkpoints of unfinished runs (`partial/runs/<run_id>.safetensors`) travel too,
so a run that outlasts a session resumes on the next machine instead of starting over (it resumes only where the
checkpoint's execution identity matches: same code, torch, CPU model, thread count; poisonbench/engine/checkpoints.py).
A checkpoint is copied when the destination has no record of its run and no checkpoint with as many epochs done;
files above `--max-mb` (FRIENDS keeps its noisy rows in its checkpoint: 185 MB on full MNIST) are counted, not
copied; a checkpoint at the destination whose run's record is there too is removed (the run finished).
Checkpoints name no dataset, so `--dataset` does not filter them. `--clean-only` copies only the records of runs that
trained on no poisons (ρ = 0). They name no craft of the PoisonSets, so one craft's workspace (e.g.
`experiments/records/mnist-craft-a`, whose poisoned runs share run ids with another craft's) can take the clean
runs of another directory to complete its Table II.

Only complete records of the current schema are copied (atomically, via the store); source files that are not
(unreadable, incomplete, another schema) are counted and make the exit status 1. Any file already at the
destination is left alone: an equal record counts as present, anything else (a different record, an incomplete
or unreadable file, another schema) is reported as a conflict, never overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors import safe_open

from poisonbench.core.io import atomic_write_bytes
from poisonbench.engine.checkpoints import META_KEY, checkpoint_path
from poisonbench.experiment.records import RunStore


def grid_run_ids(grid: str, results: str) -> set[str]:
    """The run ids of a grid's runs (`poisonbench sweep plan GRID --json`)."""
    import subprocess

    command = [sys.executable, "-m", "poisonbench.cli.main", "sweep", "plan", grid, "--results", results, "--json"]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return {step["key"] for step in json.loads(out)["steps"] if step["kind"] == "run"}


def copy_manifests(source: str, dest: str, records: list[dict]) -> int:
    """Copy the PoisonSet manifests (not the tensors) the `records` trained on: what a craft cost and its loss."""
    copied = 0
    for pid in sorted({(r["config"].get("poison") or {}).get("poison_id") for r in records} - {None}):
        src, dst = Path(source) / "poisons" / pid / "manifest.json", Path(dest) / "poisons" / pid / "manifest.json"
        if src.is_file() and not dst.exists():
            atomic_write_bytes(dst, src.read_bytes())
            copied += 1
    return copied


def archive(source: str, dest: str, dataset: str | None = None, clean_only: bool = False,
            only: set[str] | None = None) -> dict:
    """Copy `source`'s complete records (of `dataset`; with `clean_only`, of runs that trained on no poisons; with
    `only`, of those run ids) to `dest`: run ids under "copied", "present" and "conflict", and "skipped_note" (the
    source files skipped, or None)."""
    src, dst = RunStore(source), RunStore(dest)
    done: dict = {"copied": [], "present": [], "conflict": []}
    for record in src.all():
        if dataset and record["config"]["dataset"] != dataset:
            continue
        if only is not None and record["run_id"] not in only:
            continue
        if clean_only and record["config"].get("poison") is not None:
            continue
        rid = record["run_id"]
        there = dst.get(rid)
        if there is None and not dst.path(rid).exists():
            dst.put(record)
            done["copied"].append(rid)
        else:
            done["present" if there == record else "conflict"].append(rid)
    done["skipped_note"] = src.skipped_note()
    return done


def epochs_done(path: Path) -> int | None:
    """The epochs a checkpoint holds, from its metadata alone (no tensor is read); None if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return int(json.loads(f.metadata()[META_KEY])["epochs_done"])
    except Exception:
        return None


def archive_checkpoints(source: str, dest: str, max_mb: float) -> dict:
    """Copy `source`'s run checkpoints to `dest` where they take a run further than `dest` has it: run ids under
    "copied", "present" (a record, or a checkpoint at least as far along, is there), "too_large", "unreadable" and
    "removed" (`dest`'s checkpoints of runs whose record `dest` holds)."""
    dst = RunStore(dest)
    done: dict = {"copied": [], "present": [], "too_large": [], "unreadable": [], "removed": []}
    for path in sorted((Path(dest) / "partial" / "runs").glob("*.safetensors")):
        if dst.get(path.stem) is not None:
            path.unlink()
            done["removed"].append(path.stem)
    for path in sorted((Path(source) / "partial" / "runs").glob("*.safetensors")):
        rid, epochs = path.stem, epochs_done(path)
        target = checkpoint_path(Path(dest), rid)
        if epochs is None:
            done["unreadable"].append(rid)
        elif dst.get(rid) is not None or (target.exists() and (epochs_done(target) or 0) >= epochs):
            done["present"].append(rid)
        elif path.stat().st_size > max_mb * 2**20:
            done["too_large"].append(rid)
        else:
            atomic_write_bytes(target, path.read_bytes())  # makes partial/runs/ if need be
            done["copied"].append(rid)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", required=True, help="results workspace to read (its runs/)")
    ap.add_argument("--to", dest="dest", required=True, help="results workspace to write (its runs/)")
    ap.add_argument("--dataset", default=None, help="only records of this dataset name (config.dataset)")
    ap.add_argument("--clean-only", action="store_true",
                    help="only records of runs that trained on no poisons (ρ = 0): they name no craft of the "
                         "PoisonSets, so they can join any craft's workspace")
    ap.add_argument("--checkpoints", action="store_true",
                    help="also copy unfinished runs' epoch checkpoints (partial/runs/), so they resume elsewhere")
    ap.add_argument("--max-mb", type=float, default=20.0, help="with --checkpoints: largest checkpoint to copy (MB)")
    ap.add_argument("--grid", default=None,
                    help="only the records of this grid's runs, with the manifests of their PoisonSets")
    args = ap.parse_args(argv)
    only = grid_run_ids(args.grid, args.source) if args.grid else None
    done = archive(args.source, args.dest, args.dataset, args.clean_only, only)
    print(f"copied {len(done['copied'])}, already there {len(done['present'])}, "
          f"different there (left alone) {len(done['conflict'])}")
    if args.grid:
        records = [RunStore(args.dest).get(rid) for rid in done["copied"] + done["present"]]
        print(f"PoisonSet manifests copied: {copy_manifests(args.source, args.dest, records)}")
    for rid in done["conflict"]:
        print(f"  conflict: {rid}", file=sys.stderr)
    skipped = done["skipped_note"]
    if skipped:
        print(f"  source: {skipped}", file=sys.stderr)
    failed = bool(done["conflict"] or skipped)
    if args.checkpoints:
        kept = archive_checkpoints(args.source, args.dest, args.max_mb)
        print(f"checkpoints: copied {len(kept['copied'])}, already there {len(kept['present'])}, "
              f"above {args.max_mb:g} MB (not copied) {len(kept['too_large'])}, unreadable {len(kept['unreadable'])}, "
              f"removed as finished {len(kept['removed'])}")
        failed = failed or bool(kept["unreadable"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
