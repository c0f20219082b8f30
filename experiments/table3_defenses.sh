#!/usr/bin/env bash
# Table III with every defense and filter (issue 31) on the targeted CPU setting of experiments/targeted_cpu.md:
# Fashion-MNIST 5k, ConvNet, quick recipe, 5 trials; BP and FC (forest) in transfer at ε 64/255 and 1 %, GM from
# scratch at 32/255 and 4 %, 2 restarts (the PoisonSets are the ones targeted_final.sh crafted: same ids, reused).
# One line per trial for single-threaded workers (experiments/run_sweep.sh); done runs are skipped.
#   experiments/table3_defenses.sh [results] [data] [workers] [methods]
set -euo pipefail
results=${1:-results}; data=${2:-results/data/fashion-5k.npz}; workers=${3:-2}
methods=${4:-"knn l2 ocsvm random epic friends atda"}
here=$(cd "$(dirname "$0")" && pwd)
eps64=0.25098039215686274; eps32=0.12549019607843137
sweep=$results/table3-defenses.txt
mkdir -p "$results"
{
  for m in $methods; do for t in 0 1 2 3 4; do
    for a in fc bp; do
      echo "defend --dataset $data --recipe quick --trial $t --method $m --attack $a --eps $eps64 --budget 0.01 --attack-params restarts=2"
    done
    echo "defend --dataset $data --recipe quick --trial $t --method $m --attack gm --eps $eps32 --budget 0.04 --attack-params restarts=2"
  done; done
} > "$sweep"
"$here/run_sweep.sh" "$sweep" "$workers" "$results"
poisonbench report --table 3 --paper --dataset "$data" --results "$results"
