"""Does a longer DeepConfuse schedule make the Table II mix stronger? (issue 3 finding; not a test)

Crafts DeepConfuse on mnist-5k with `--outer-epochs OUTER` instead of the budget default, then runs
`defend --method none --poison-ratio 1` with DeepConfuse alone and with the four-attack mix, the longer-trained
PoisonSet chosen with `--poisons` (the other attacks' PoisonSets are the defaults). Records land in RESULTS;
`poisonbench report --table 2 --poisons deepconfuse=ID --results RESULTS` shows the mix's runs, with
`--attacks deepconfuse` the DeepConfuse-alone runs.

    python experiments/dc_budget.py OUTER TRIALS RESULTS
"""

from __future__ import annotations

import json
import sys

import torch

from poisonbench import poisons
from poisonbench.data import load_dataset
from poisonbench.experiment.defend import defend
from poisonbench.experiment.scenarios import CRAFT_SEED
from poisonbench.experiment.spec import DefendSpec

outer, trials, results = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
data = load_dataset("mnist-5k")
spec = poisons.craft_spec(data, "deepconfuse", budget=1.0, seed=CRAFT_SEED, outer_epochs=outer)
poisons.craft(spec, data, results, torch.device("cpu"))
chosen = {"deepconfuse": spec.poison_id}
for attacks in (["deepconfuse"], None):
    for outcome in defend(DefendSpec(poison_ratio=1.0, attacks=attacks, poison_sets=chosen, trials=trials,
                                     results=results)):
        r = outcome.record
        print(json.dumps({"attacks": r["config"]["poison"]["attacks"], "trial": r["config"]["trial"],
                          "status": outcome.status, "test_acc": r["metrics"]["test_acc"],
                          "poison_ids": r["config"]["poison"]["poison_ids"]}), flush=True)
