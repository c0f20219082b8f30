"""Summarise experiments/table3_hint_search.sh: per variant on the held-apart targets (trials 60-69), the attack's
successes, the targets saved and newly hit against W/o Defense, McNemar's exact p, test accuracy and the largest
|δ| HINT's updates reached (each update's `delta_abs_max` in the record).

    python experiments/table3_hint_search_summary.py RESULTS
"""

from __future__ import annotations

import argparse
import json
import statistics

from scipy.stats import binomtest

from poisonbench.experiment.packed_records import open_store

TRIALS = range(60, 70)


def variant(record: dict) -> str:
    d = record["config"]["defense"]
    if d["method"] == "none":
        return "W/o Defense"
    return f"HINT β {d['beta']:g}, γ {d['gamma']:g}, {'signed' if d.get('sign') else 'unsigned'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    args = parser.parse_args()
    rows: dict[str, dict[int, dict]] = {}
    for r in open_store(args.results).all():
        c = r["config"]
        if c["trial"] not in TRIALS or (c.get("poison") or {}).get("attack") != "fc":
            continue
        if c["defense"]["method"] not in ("none", "hint") or c.get("head_bn") != "train":
            continue
        rows.setdefault(variant(r), {})[c["trial"]] = r
    base = rows.get("W/o Defense", {})
    print("| variant | targets | ASR | saved / new vs W/o Defense | McNemar p | test acc. (%) | max |δ| |")
    print("|---|---|---|---|---|---|---|")
    for name in sorted(rows, key=lambda n: (n != "W/o Defense", n)):
        runs = rows[name]
        hit = {t: bool(r["metrics"]["attack_success"]) for t, r in runs.items()}
        both = [t for t in hit if t in base]
        saved = sum(bool(base[t]["metrics"]["attack_success"]) and not hit[t] for t in both)
        new = sum(hit[t] and not bool(base[t]["metrics"]["attack_success"]) for t in both)
        p = binomtest(saved, saved + new).pvalue if saved + new else 1.0
        acc = statistics.mean(r["metrics"]["test_acc"] for r in runs.values()) * 100
        deltas = [u.get("delta_abs_max") for r in runs.values() for u in (r.get("defense") or {}).get("updates", [])
                  if isinstance(u, dict) and u.get("delta_abs_max") is not None]
        print(f"| {name} | {len(runs)} | {sum(hit.values())}/{len(hit)} | "
              f"{'–' if name == 'W/o Defense' else f'{saved} / {new}'} | "
              f"{'–' if name == 'W/o Defense' else f'{p:.2g}'} | {acc:.2f} | "
              f"{json.dumps(round(max(deltas), 4)) if deltas else '–'} |")


if __name__ == "__main__":
    main()
