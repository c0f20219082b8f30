"""Per (method, attack, budget): runs, poisons and clean rows removed, attack success and test accuracy, from the
records a sweep's `sweep.jsonl` lists (experiments/filters_fc.sh, table3_defenses.sh).
    python experiments/filters_summary.py RESULTS"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(results: str) -> None:
    cells: dict = defaultdict(lambda: defaultdict(float))
    seen = set()
    for line in (Path(results) / "sweep.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if "attack" not in entry or entry["run_id"] in seen:
            continue
        seen.add(entry["run_id"])
        record = json.loads(Path(entry["path"]).read_text())
        poison = record["config"]["poison"]
        impl = (poison.get("params") or {}).get("impl") or ""
        eps, budget = f"{poison['eps'] * 255:.0f}/255", f"{100 * poison['ratio']:.1f} %"
        key = (entry["method"], entry["attack"], impl, eps, budget)
        cell = cells[key]
        removal = (record.get("defense") or {}).get("removal") or {}
        for name in ("poisons_removed", "poisons", "clean_removed", "clean"):
            cell[name] += removal.get(name, 0)
        cell["runs"] += 1
        cell["success"] += bool(record["metrics"]["attack_success"])
        cell["acc"] += record["metrics"]["test_acc"]
        cell["seconds"] += record["cost"]["seconds"]
    print("| method | attack | impl | ε | budget | runs | poisons removed | clean removed | ASR | test acc. (%) "
          "| s/run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(cells, key=lambda k: (k[1], k[2], k[4], k[0])):
        c = cells[key]
        removed = (f"{c['poisons_removed']:.0f}/{c['poisons']:.0f}" if c["poisons"] else "")
        clean = f"{100 * c['clean_removed'] / c['clean']:.1f} %" if c["clean"] else ""
        print(f"| {' | '.join(key)} | {c['runs']:.0f} | {removed} | {clean} | {c['success']:.0f}/{c['runs']:.0f} | "
              f"{100 * c['acc'] / c['runs']:.2f} | {c['seconds'] / c['runs']:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results")
