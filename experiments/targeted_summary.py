"""k/n attack success and test accuracy per (attack, scenario, method, ε, budget) from the targeted records of a
workspace: the search table of experiments/targeted_cpu.md.

    python experiments/targeted_summary.py RESULTS [--format md|json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def rows(results: Path) -> list[dict]:
    cells = defaultdict(list)
    for path in sorted((results / "runs").glob("*.json")):
        r = json.loads(path.read_text())
        c, m = r["config"], r["metrics"]
        p = c.get("poison") or {}
        if p.get("kind") != "targeted":
            continue
        params = p.get("params") or {}
        key = (c["dataset"], p["attack"], c.get("scenario"), c["defense"]["method"], round(255 * p["eps"], 2),
               p["ratio"], params.get("impl", ""), params.get("restarts", ""), c["recipe"]["name"],
               c["recipe"]["epochs"])
        cells[key].append((bool(m["attack_success"]), m["test_acc"], m.get("target_intended_prob"),
                           r["cost"].get("seconds")))
    out = []
    for key, runs in sorted(cells.items()):
        dataset, attack, scenario, method, eps255, ratio, impl, restarts, recipe, epochs = key
        out.append({"dataset": dataset, "attack": attack, "impl": impl, "scenario": scenario, "method": method,
                    "eps": f"{eps255:g}/255", "budget": f"{100 * ratio:.2g} %", "restarts": restarts,
                    "recipe": f"{recipe} {epochs} ep", "success": f"{sum(s for s, *_ in runs)}/{len(runs)}",
                    "test_acc": round(100 * statistics.mean(a for _, a, *_ in runs), 2),
                    "mean_intended_prob": round(statistics.mean(p or 0 for *_, p, _ in runs), 3),
                    "seconds_per_run": round(statistics.mean(s or 0 for *_, s in runs), 1)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--format", choices=("md", "json"), default="md")
    args = ap.parse_args()
    table = rows(args.results)
    if args.format == "json":
        print(json.dumps(table, indent=1))
        return
    if not table:
        print("no targeted records")
        return
    cols = list(table[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in table:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
