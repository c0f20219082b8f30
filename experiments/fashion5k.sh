#!/usr/bin/env bash
# The 4,000-row Fashion-MNIST experiment of docs/fidelity.md ("Fashion-MNIST at mnist-5k's scale"): the Table II
# mix and HINT at mnist-5k's scale on another dataset. Done runs are skipped, so re-running finishes the job.
#   experiments/fashion5k.sh [results]      (one thread; about 2 hours on one core of the 2-core CPU)
set -euo pipefail
results=${1:-results}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} POISONBENCH_RESULTS=$results
mkdir -p "$results/data"
D=(--dataset "$results/data/fashion-5k.npz")
[ -f "$results/data/fashion-5k.npz" ] || python experiments/make_fashion_subset.py --out "$results/data/fashion-5k.npz"
for a in pgd dap durp deepconfuse; do poisonbench craft --attack $a "${D[@]}" --json; done
for t in 0 1 2 3 4; do
  for m in none hint; do
    for r in 0 1; do poisonbench defend "${D[@]}" --method $m --poison-ratio $r --trial $t --json; done
  done
done
for a in pgd dap deepconfuse durp; do
  poisonbench defend "${D[@]}" --method none --poison-ratio 1 --attacks $a --trial 0 --json
done
poisonbench report --table 2 "${D[@]}"
