#!/usr/bin/env bash
# The search for a CPU setting where targeted poisoning works (issue 30; experiments/targeted_cpu.md):
# Fashion-MNIST 5k (experiments/make_fashion_subset.py), HINT's ConvNet, the quick recipe, no defense, 5 trials per
# cell. GM from scratch; BP and FC in transfer. ε ∈ {16, 32}/255 × budget ∈ {1 %, 4 %} for GM; in transfer the
# poisons come from the intended class's share of the 10 % transfer set, which 1 % of the train split already fills,
# so the budgets there are {0.5 %, 1 %}. Done runs are skipped, so re-running finishes the job.
#   experiments/targeted_search.sh [results] [data] [restarts] [attacks]
set -euo pipefail
results=${1:-results}; data=${2:-results/data/fashion-5k.npz}; restarts=${3:-8}; attacks=${4:-gm bp fc}
[ -f "$data" ] || python experiments/make_fashion_subset.py --out "$data"
run() { poisonbench defend --dataset "$data" --recipe quick --method none --trials 5 --results "$results" "$@" --json; }
for attack in $attacks; do
  budgets="0.005 0.01"; [ "$attack" = gm ] && budgets="0.01 0.04"
  for eps in 0.06274509803921569 0.12549019607843137; do   # 16/255, 32/255
    for budget in $budgets; do run --attack $attack --eps $eps --budget $budget --attack-params restarts=$restarts; done
  done
done
python experiments/targeted_summary.py "$results"
