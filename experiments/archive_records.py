"""Copy finished run records between results workspaces, e.g. into git so a long experiment outlives its machine.

`results/` is git-ignored, and a machine (or cluster node) can be replaced between sessions: the records of a
multi-day experiment (experiments/fashion_mnist.md) are kept in `experiments/records/<name>/runs/` and
copied back into a fresh workspace before resuming, so finished runs are skipped, not re-trained:

    python experiments/archive_records.py --from results --to experiments/records/fashion-mnist --dataset fashion-mnist
    python experiments/archive_records.py --from experiments/records/fashion-mnist --to results

Only complete records of the current schema are copied (atomically, via the store); source files that are not
(unreadable, incomplete, another schema) are counted and make the exit status 1. Any file already at the
destination is left alone: an equal record counts as present, anything else (a different record, an incomplete
or unreadable file, another schema) is reported as a conflict, never overwritten.
"""

from __future__ import annotations

import argparse
import sys

from poisonbench.records import RunStore


def archive(source: str, dest: str, dataset: str | None = None) -> dict:
    """Copy `source`'s complete records (of `dataset`) to `dest`: run ids under "copied", "present" and "conflict",
    and "skipped_note" (the source files skipped, or None)."""
    src, dst = RunStore(source), RunStore(dest)
    done: dict = {"copied": [], "present": [], "conflict": []}
    for record in src.all():
        if dataset and record["config"]["dataset"] != dataset:
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", required=True, help="results workspace to read (its runs/)")
    ap.add_argument("--to", dest="dest", required=True, help="results workspace to write (its runs/)")
    ap.add_argument("--dataset", default=None, help="only records of this dataset name (config.dataset)")
    args = ap.parse_args(argv)
    done = archive(args.source, args.dest, args.dataset)
    print(f"copied {len(done['copied'])}, already there {len(done['present'])}, "
          f"different there (left alone) {len(done['conflict'])}")
    for rid in done["conflict"]:
        print(f"  conflict: {rid}", file=sys.stderr)
    skipped = done["skipped_note"]
    if skipped:
        print(f"  source: {skipped}", file=sys.stderr)
    return 1 if done["conflict"] or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
