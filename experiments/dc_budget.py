"""Does a longer DeepConfuse schedule make the Table II mix stronger? (issue 3 finding; not a test)

Runs `defend --method none --poison-ratio 1` with DeepConfuse alone and with the four-attack mix, where the
DeepConfuse PoisonSet is crafted with `--outer-epochs OUTER` instead of the budget default. The other attacks'
PoisonSets are the defaults. Records land in RESULTS (their poison ids differ from the default mix's).

    python experiments/dc_budget.py OUTER TRIALS RESULTS
"""

from __future__ import annotations

import json
import sys

import poisonbench.poisons as poisons
from poisonbench.runner import DefendSpec, defend

outer, trials, results = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
default_spec = poisons.craft_spec


def longer_deepconfuse(data, attack, **kw):
    if attack == "deepconfuse":
        kw["outer_epochs"] = outer
    return default_spec(data, attack, **kw)


poisons.craft_spec = longer_deepconfuse  # plan_untargeted looks it up at call time
for attacks in (["deepconfuse"], None):
    for outcome in defend(DefendSpec(poison_ratio=1.0, attacks=attacks, trials=trials, results=results)):
        r = outcome.record
        print(json.dumps({"attacks": r["config"]["poison"]["attacks"], "trial": r["config"]["trial"],
                          "status": outcome.status, "test_acc": r["metrics"]["test_acc"],
                          "poison_ids": r["config"]["poison"]["poison_ids"]}), flush=True)
