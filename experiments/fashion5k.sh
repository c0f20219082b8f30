#!/usr/bin/env bash
# The 4,000-row Fashion-MNIST experiment of experiments/fashion_mnist.md ("at mnist-5k's scale"): the Table II
# mix and HINT at mnist-5k's scale on another dataset. Crafting runs first, then the 24 training runs go through
# experiments/run_sweep.sh (one worker per core); done runs are skipped, so re-running finishes the job.
#   experiments/fashion5k.sh [results] [workers]      (about 1 hour on the 2-core CPU)
set -euo pipefail
results=${1:-results}; workers=${2:-2}
export POISONBENCH_RESULTS=$results
data=$results/data/fashion-5k.npz
[ -f "$data" ] || python experiments/make_fashion_subset.py --out "$data"
for a in pgd dap durp deepconfuse; do OMP_NUM_THREADS=$workers poisonbench craft --attack $a --dataset "$data" --json; done
sweep=$(mktemp)
for t in 0 1 2 3 4; do for m in none hint; do for r in 0 1; do
  echo "defend --dataset $data --method $m --poison-ratio $r --trial $t"
done; done; done > "$sweep"
for a in pgd dap deepconfuse durp; do echo "defend --dataset $data --method none --poison-ratio 1 --attacks $a --trial 0"; done >> "$sweep"
bash experiments/run_sweep.sh "$sweep" "$workers" "$results"
rm -f "$sweep"
poisonbench report --table 2 --dataset "$data"
