#!/usr/bin/env bash
# The second round of the targeted CPU search (experiments/targeted_cpu.md): the transfer cells past the first
# grid's best (2/5 at 16/255 and 32/255, 1 %): forest's 8 restarts, the Toxic implementations, ε 64/255.
#   experiments/targeted_search_extra.sh [results] [data]
set -euo pipefail
results=${1:-results}; data=${2:-results/data/fashion-5k.npz}
run() { poisonbench defend --dataset "$data" --recipe quick --method none --trials 5 --results "$results" "$@" --json; }
eps32=0.12549019607843137; eps64=0.25098039215686274
run --attack fc --eps $eps32 --budget 0.01 --attack-params impl=toxic
run --attack bp --eps $eps32 --budget 0.01 --attack-params restarts=8
run --attack bp --eps $eps64 --budget 0.01 --attack-params restarts=2
run --attack bp --eps $eps32 --budget 0.01 --attack-params impl=toxic
python experiments/targeted_summary.py "$results"
