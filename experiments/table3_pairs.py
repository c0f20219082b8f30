"""Issue 66's Table III, every defense against every other on the same targets (paired).

`report --table 3 --paired` compares each defense with W/o Defense. HINT's claim is stronger (a lower ASR than
every baseline), so this prints, per pair (A, B) of methods of one Table III block, A's ASR minus B's on the targets
both ran: Newcombe's method-10 interval and McNemar's exact p (poisonbench.report.tables.stats.paired_success, the
functions the report uses). A pair separates where the interval excludes 0 and p < 0.05 (docs/metrics.md).

    python experiments/table3_pairs.py experiments/records/fashion-mnist-table3-transfer.jsonl.xz \
        --head-bn train --first hint

Prints a markdown table: one row per method, its ASR with the Wilson interval, then the paired difference to
`--first` (HINT by default) and to `none`.
"""

from __future__ import annotations

import argparse

import pandas as pd

from poisonbench.experiment.packed_records import open_store
from poisonbench.report.tables.builders import paired_targets
from poisonbench.report.tables.records import frame
from poisonbench.report.tables.stats import wilson


def compare(df: pd.DataFrame, first: str, second: str) -> str:
    """`first` − `second`: Δ pp [lo, hi] (first-only / second-only of n) p, paired as the report pairs runs."""
    ps = paired_targets(df[df.method == first], df[df.method == second])
    if ps is None:
        return "–"
    mark = " **separates**" if (ps.hi < 0 or ps.lo > 0) and ps.p < 0.05 else ""
    return (f"{100 * ps.diff:+.0f} pp [{100 * ps.lo:+.0f}, {100 * ps.hi:+.0f}] ({ps.first_only} / {ps.second_only} "
            f"of {ps.n}) p {ps.p:.2g}{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", help="a results workspace or a packed records file")
    parser.add_argument("--head-bn", default="train", help="the block's head BatchNorm mode (train | eval)")
    parser.add_argument("--first", default="hint", help="the method every other is compared with")
    args = parser.parse_args()
    df = frame(open_store(args.records).all())
    df = df[(df.kind == "targeted") & (df.head_bn == args.head_bn)]
    methods = ["none"] + sorted(set(df.method) - {"none"})
    print(f"| method | ASR [Wilson 95 %] | vs {args.first} (row − {args.first}) | vs none (row − none) |")
    print("|---|---|---|---|")
    for m in methods:
        succ = df[df.method == m].success.dropna().astype(bool)
        k, n = int(succ.sum()), len(succ)
        lo, hi = wilson(k, n)
        to_first = "–" if m == args.first else compare(df, m, args.first)
        to_none = "–" if m == "none" else compare(df, m, "none")
        print(f"| {m} | {k}/{n} [{100 * lo:.0f}–{100 * hi:.0f} %] | {to_first} | {to_none} |")


if __name__ == "__main__":
    main()
