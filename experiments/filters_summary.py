"""Per targeted cell (method, attack, implementation, restarts, ε, budget, recipe): runs, poisons and clean rows
removed, attack success and test accuracy, from a workspace's records or a packed records file (the runs of
experiments/grids/filters-fc.toml and table3-defenses.toml, and any other targeted run there).
    python experiments/filters_summary.py RESULTS      e.g. experiments/records/fashion-5k-targeted.jsonl.xz"""

from __future__ import annotations

import sys
from collections import defaultdict

from poisonbench.experiment.packed_records import open_store


def cell_key(record: dict) -> tuple[str, ...] | None:
    """The cell of a targeted record; None for an untargeted or clean one."""
    config = record["config"]
    poison = config.get("poison") or {}
    if poison.get("kind") != "targeted":
        return None
    params = poison.get("params") or {}
    restarts = params.get("restarts")
    return (config["defense"]["method"], poison["attack"], params.get("impl") or "",
            "" if restarts is None else str(restarts), f"{poison['eps'] * 255:.0f}/255",
            f"{100 * poison['ratio']:.1f} %", config["recipe"]["name"])


def main(results: str) -> None:
    cells: dict = defaultdict(lambda: defaultdict(float))
    store = open_store(results)
    for record in store.all():
        key = cell_key(record)
        if key is None:
            continue
        cell = cells[key]
        removal = (record.get("defense") or {}).get("removal") or {}
        for name in ("poisons_removed", "poisons", "clean_removed", "clean"):
            cell[name] += removal.get(name, 0)
        cell["runs"] += 1
        cell["success"] += bool(record["metrics"]["attack_success"])
        cell["acc"] += record["metrics"]["test_acc"]
        cell["seconds"] += record["cost"]["seconds"]
    print("| method | attack | impl | restarts | ε | budget | recipe | runs | poisons removed | clean removed | ASR "
          "| test acc. (%) | s/run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(cells, key=lambda k: (k[1], k[2], k[3], k[6], k[4], k[5], k[0])):
        c = cells[key]
        removed = (f"{c['poisons_removed']:.0f}/{c['poisons']:.0f}" if c["poisons"] else "")
        clean = f"{100 * c['clean_removed'] / c['clean']:.1f} %" if c["clean"] else ""
        print(f"| {' | '.join(key)} | {c['runs']:.0f} | {removed} | {clean} | {c['success']:.0f}/{c['runs']:.0f} | "
              f"{100 * c['acc'] / c['runs']:.2f} | {c['seconds'] / c['runs']:.1f} |")
    note = store.skipped_note()
    if note:
        print(note, file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results")
