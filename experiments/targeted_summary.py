"""k/n attack success (with its Wilson 95 % interval) and test accuracy per (attack, scenario, method, ε, budget,
threat, bases, ensemble) from the targeted records of a workspace: the search tables of experiments/targeted_cpu.md
and experiments/targeted_forest.md.

    python experiments/targeted_summary.py RESULTS [--format md|json]

RESULTS is a workspace directory or a packed file (`poisonbench records pack`, *.jsonl.gz or *.jsonl.xz).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """The report's own Wilson 95 % interval of k successes in n (poisonbench.report.tables)."""
    from poisonbench.report.tables.stats import wilson

    return wilson(k, n)


def records_and_manifests(results: Path) -> tuple[list[dict], dict[str, dict]]:
    """The run records and the PoisonSet manifests ({poison id: manifest}) of a workspace or a packed file."""
    if results.is_file():
        from poisonbench.experiment.packed_records import read_pack

        pack = read_pack(results)
        return [r for _, r in pack.runs], {m["poison_id"]: m for _, m in pack.manifests}
    records = [json.loads(path.read_text()) for path in sorted((results / "runs").glob("*.json"))]
    manifests = {path.parent.name: json.loads(path.read_text())
                 for path in sorted((results / "poisons").glob("*/manifest.json"))}
    return records, manifests


def crafting_loss(manifests: dict[str, dict], poison_id: str | None) -> float | None:
    """The best restart's final crafting loss of the run's PoisonSet (forest's brews: GM's 1 − cos of the matched
    gradients, BP's / FC's feature-space objective), from its manifest; None where there is none."""
    if poison_id not in manifests:
        return None
    losses = (manifests[poison_id].get("attack_info") or {}).get("restart_losses")
    return min(losses) if losses else None


def mean_or_blank(values: list) -> float | str:
    known = [v for v in values if v is not None]
    return round(statistics.mean(known), 3) if known else ""


def rows(results: Path) -> list[dict]:
    cells = defaultdict(list)
    records, manifests = records_and_manifests(results)
    for r in records:
        c, m = r["config"], r["metrics"]
        p = c.get("poison") or {}
        if p.get("kind") != "targeted":
            continue
        params = p.get("params") or {}
        eps255 = round(255 * (p.get("eps") or 0), 2)  # an imported PoisonSet's record names no ε
        key = (c["dataset"], p["attack"], c.get("scenario"), c["defense"]["method"], eps255,
               p["ratio"], params.get("impl", ""), params.get("restarts", ""), c["recipe"]["name"],
               c["recipe"]["epochs"], c.get("threat") or "", params.get("bases") or "", params.get("ensemble") or "",
               c.get("head_bn") or "", params.get("lr_space") or ("model" if params.get("impl", "forest") == "forest"
                                                                   and p["attack"] in ("gm", "bp", "fc") else ""))
        cells[key].append((bool(m["attack_success"]), m["test_acc"], m.get("target_intended_prob"),
                           crafting_loss(manifests, p.get("poison_id")), r["cost"].get("seconds")))
    out = []
    for key, runs in sorted(cells.items()):
        (dataset, attack, scenario, method, eps255, ratio, impl, restarts, recipe, epochs, threat, bases, ensemble,
         head_bn, lr_space) = key
        wins = sum(s for s, *_ in runs)
        low, high = wilson_interval(wins, len(runs))
        out.append({"dataset": dataset, "attack": attack, "impl": impl, "scenario": scenario, "threat": threat,
                    "method": method, "head_bn": head_bn, "lr_space": lr_space, "eps": f"{eps255:g}/255",
                    "budget": f"{100 * ratio:.2g} %",
                    "bases": bases, "ensemble": ensemble, "restarts": restarts,
                    "recipe": f"{recipe} {epochs} ep", "success": f"{wins}/{len(runs)}",
                    "wilson95": f"{100 * low:.0f}–{100 * high:.0f} %",
                    "test_acc": round(100 * statistics.mean(a for _, a, *_ in runs), 2),
                    "mean_intended_prob": round(statistics.mean(p or 0 for *_, p, _, _ in runs), 3),
                    "crafting_loss": mean_or_blank([loss for *_, loss, _ in runs]),
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
