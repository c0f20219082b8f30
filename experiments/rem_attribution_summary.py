"""Summarise REM's confound runs on mnist-5k at ε 0.3 (issue 83; availability.md, "REM's 12 points attributed"):
for every REM PoisonSet the sources hold that was crafted at ε 0.3, the factors its manifest names (inner search,
source-model steps and lr decay, ρ_a, the gradient clip, the crafting seed) and the paper recipe's undefended
victims on it (`none`, ρ = 1, trials 0-2): mean ± sample std of the test accuracy, the per-trial values, and the
paired difference by trial (the same victim seed) against the budget schedule's seed-0 craft, with its 95 % t
interval (df = trials − 1).

    python experiments/rem_attribution_summary.py SOURCE [SOURCE ...]

A SOURCE is a packed records file (its manifests and runs) or a workspace directory (poisons/*/manifest.json,
runs/*.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from poisonbench.experiment.packed_records import open_store, read_pack
from poisonbench.report.tables.stats import t975

EPS = 0.3
REFERENCE = "0bca9e624c4e8b09"  # rem-budget-eps03.toml's seed-0 craft: the budget schedule at ε 0.3, ρ_a 0.15


def manifests(source: str) -> list[dict]:
    path = Path(source)
    if path.is_dir():
        return [json.loads(m.read_text()) for m in sorted((path / "poisons").glob("*/manifest.json"))]
    return [m for _, m in read_pack(path).manifests]


def factors(manifest: dict) -> dict:
    p = manifest["params"]
    inner = "official" if (p["u_steps"], p["a_steps"], p["samples"]) == (10, 10, 5) else \
        "budget" if (p["u_steps"], p["a_steps"], p["samples"]) == (5, 2, 1) else \
        f"u {p['u_steps']} / a {p['a_steps']} / {p['samples']} draws"
    return {"inner": inner, "steps": p["train_steps"], "decay": p["lr_decay_every"], "rho_a": p["adv_radius"],
            "clip": p.get("grad_clip", 5), "seed": manifest.get("seed", 0),
            "resumed": (manifest.get("attack_info") or {}).get("resumed_steps")}


def victims(sources: list[str]) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for source in sources:
        for r in open_store(source).all():
            c = r["config"]
            poison = c.get("poison") or {}
            if (c["dataset"] != "mnist-5k" or c["recipe"]["name"] != "paper" or c["defense"]["method"] != "none"
                    or poison.get("attacks") != ["rem"] or poison.get("ratio") != 1.0):
                continue
            out.setdefault(poison["poison_ids"]["rem"], {})[c["trial"]] = r["metrics"]["test_acc"] * 100
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+")
    args = parser.parse_args()
    crafts = {m["poison_id"]: m for s in args.sources for m in manifests(s)
              if m.get("attack") == "rem" and abs(m["eps"] - EPS) < 1e-9}
    accs = victims(args.sources)
    ref = accs.get(REFERENCE, {})
    print("| inner search | source steps (lr × 0.1 every) | ρ_a | clip | seed | PoisonSet | test acc. (%) | "
          "Δ vs budget seed 0, paired by trial [95 % t] |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for pid, m in crafts.items():
        if pid not in accs:
            continue
        f = factors(m)
        rows.append(((f["inner"] != "budget", f["steps"], -f["rho_a"], -f["clip"], f["seed"]), pid, f))
    for _, pid, f in sorted(rows):
        by_trial = accs[pid]
        values = [by_trial[t] for t in sorted(by_trial)]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        common = sorted(set(by_trial) & set(ref))
        if pid == REFERENCE or len(common) < 2:
            delta = "–"
        else:
            d = [by_trial[t] - ref[t] for t in common]
            half = t975(len(d) - 1) * statistics.stdev(d) / len(d) ** 0.5
            delta = f"{statistics.mean(d):+.2f} [{statistics.mean(d) - half:+.1f}, {statistics.mean(d) + half:+.1f}]"
        steps = f"{f['steps']:,} ({f['decay']:,})" + (f", resumed at {f['resumed']:,}" if f["resumed"] else "")
        print(f"| {f['inner']} | {steps} | {f['rho_a']:g} | {f['clip']:g} | {f['seed']} | `{pid}` | "
              f"{statistics.mean(values):.2f} ± {sd:.2f} ({', '.join(f'{v:.1f}' for v in values)}) | {delta} |")


if __name__ == "__main__":
    main()
