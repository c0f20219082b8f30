"""Summarise grid table3-fashion-signed.toml (experiments/table3_powered.md, issue 80): per row (W/o Defense, HINT's
signed step at β = ε, its noise-direction control `hint-random-sign`), the attack's successes with Wilson's 95 %
interval and the test accuracy, then each pair of rows paired on the targets both ran: Δ ASR with Newcombe's
interval, saved / new, McNemar's exact p (poisonbench.report.tables.stats, as `report table 3 --paired`), and the
paired test-accuracy difference (mean ± sd over targets). The control against HINT is the comparison `report table 3`
did not make when this was written (it paired every row with W/o Defense only; `report table 3 --versus
hint-random-sign` makes it since 2026-11-29).

    python experiments/table3_direction_control.py RESULTS_OR_PACK
"""

from __future__ import annotations

import argparse
import statistics

from poisonbench.experiment.packed_records import open_store
from poisonbench.report.tables.stats import paired_success, wilson

ROWS = {"none": "W/o Defense", "hint": "HINT (β 0.3, signed)", "hint-random-sign": "control (random sign)"}
PAIRS = [("hint", "none"), ("hint-random-sign", "none"), ("hint", "hint-random-sign")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a workspace or a packed file (.jsonl.xz)")
    args = parser.parse_args()
    runs: dict[str, dict[int, dict]] = {m: {} for m in ROWS}
    for r in open_store(args.results).all():
        method = r["config"]["defense"]["method"]
        if method in runs:
            runs[method][r["config"]["trial"]] = r
    print("| row | targets | ASR (Wilson 95 %) | test acc. (%) |\n|---|---|---|---|")
    for m, label in ROWS.items():
        hits = [r["metrics"]["attack_success"] for r in runs[m].values()]
        acc = [100 * r["metrics"]["test_acc"] for r in runs[m].values()]
        if not hits:
            continue
        lo, hi = wilson(sum(hits), len(hits))
        print(f"| {label} | {len(hits)} | {sum(hits)}/{len(hits)} ({100 * lo:.0f}–{100 * hi:.0f} %) | "
              f"{statistics.mean(acc):.2f} ± {statistics.stdev(acc) if len(acc) > 1 else 0:.2f} |")
    print("\n| pair (first − second) | targets | Δ ASR [Newcombe 95 %] | saved / new | McNemar p | Δ test acc. |\n"
          "|---|---|---|---|---|---|")
    for first, second in PAIRS:
        trials = sorted(set(runs[first]) & set(runs[second]))
        if not trials:
            continue
        a = [runs[first][t]["metrics"]["attack_success"] for t in trials]
        b = [runs[second][t]["metrics"]["attack_success"] for t in trials]
        ps = paired_success(a, b)
        gap = [100 * (runs[first][t]["metrics"]["test_acc"] - runs[second][t]["metrics"]["test_acc"]) for t in trials]
        sd = statistics.stdev(gap) if len(gap) > 1 else 0.0
        # saved: hit by the second row, missed by the first (the first row's gain); new: the reverse
        print(f"| {ROWS[first]} − {ROWS[second]} | {len(trials)} | {100 * ps.diff:+.0f} pp [{100 * ps.lo:+.0f}, "
              f"{100 * ps.hi:+.0f}] | {ps.second_only} / {ps.first_only} | {ps.p:.2g} | "
              f"{statistics.mean(gap):+.2f} ± {sd:.2f} |")


if __name__ == "__main__":
    main()
