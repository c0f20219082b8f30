#!/usr/bin/env bash
# Table II's baseline columns (issue 31): FRIENDS, EPIC and ATDA on mnist-5k, paper recipe, 5 trials,
# ρ ∈ {0, 0.2, 0.4, 0.6, 0.8, 1}, beside the `none` and `hint` records of experiments/records/mnist-5k (same PoisonSets,
# same run ids). One line per trial, so that single-threaded workers share them (experiments/run_sweep.sh); done runs
# are skipped, so re-running finishes the job. ρ = 1 and 0 first, each ρ with all its methods (env METHODS, TRIALS
# and RHOS narrow the grid), so that an interrupted sweep leaves whole table rows.
#   experiments/table2_baselines.sh [results] [workers] [dataset-options...]
# Full MNIST at ρ ∈ {0, 1}: RHOS="1.0 0" experiments/table2_baselines.sh results-mnist 2 --dataset mnist --data-dir DIR
set -euo pipefail
results=${1:-results}; workers=${2:-2}; shift 2 || true
data_opts="$*"
here=$(cd "$(dirname "$0")" && pwd)
rhos=${RHOS:-"1.0 0 0.6 0.2 0.4 0.8"}
trials=${TRIALS:-"0 1 2 3 4"}
methods=${METHODS:-"friends epic atda"}
mkdir -p "$results"
sweep=$results/table2-baselines.txt
{
  for r in $rhos; do for m in $methods; do for t in $trials; do
    echo "defend --method $m --poison-ratio $r --trial $t $data_opts"
  done; done; done
} > "$sweep"
"$here/run_sweep.sh" "$sweep" "$workers" "$results"
poisonbench report --table 2 --paper --results "$results" $data_opts
