#!/usr/bin/env bash
# The clean-label filters against feature collision in the filter paper's regime (issue 31): few poisons, a small
# share of their class, so that k = 2·budget + 1 is smaller than a class. The targeted CPU setting of
# experiments/targeted_cpu.md (Fashion-MNIST 5k, ConvNet, quick recipe, transfer learning, FC (forest) at ε 64/255,
# 2 restarts), with a budget of 0.2 % of the train split (8 poisons, a fifth of the intended class's share of the
# transfer set) instead of Table III's 1 % (all of it). 5 trials, `none` beside; done runs are skipped.
# IMPL=toxic crafts the "Just How Toxic" FC instead (per-poison collision from a 0.3 watermark: the FC the filter
# paper filtered), where forest's FC (HINT's) matches the poisons' mean feature to the target's.
#   [IMPL=forest|toxic] experiments/filters_fc.sh [results] [data] [workers] [budget]
set -euo pipefail
results=${1:-results}; data=${2:-results/data/fashion-5k.npz}; workers=${3:-2}; budget=${4:-0.002}
here=$(cd "$(dirname "$0")" && pwd)
eps64=0.25098039215686274
impl=${IMPL:-forest}
sweep=$results/filters-fc-$impl.txt
mkdir -p "$results"
if [ "$impl" = forest ]; then params=restarts=2; else params=impl=toxic; fi
for m in none knn l2 ocsvm random; do for t in 0 1 2 3 4; do
  echo "defend --dataset $data --recipe quick --trial $t --method $m --attack fc --eps $eps64 --budget $budget --attack-params $params"
done; done > "$sweep"
"$here/run_sweep.sh" "$sweep" "$workers" "$results"
poisonbench report --table 3 --dataset "$data" --results "$results"
