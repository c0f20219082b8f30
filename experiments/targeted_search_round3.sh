#!/usr/bin/env bash
# Third round of the targeted CPU search (experiments/targeted_cpu.md): in transfer the quick recipe trains the
# head for 10 epochs × 4 steps (400 images, batch 128), too few for the poisons to move it; the paper recipe of the
# MNIST family (30 epochs) pre-trains the extractor and trains the head longer.
#   experiments/targeted_search_round3.sh [results] [data]
set -euo pipefail
results=${1:-results}; data=${2:-results/data/fashion-5k.npz}
run() { poisonbench defend --dataset "$data" --method none --trials 5 --results "$results" "$@" --json; }
eps32=0.12549019607843137
run --recipe paper --attack bp --eps $eps32 --budget 0.01 --attack-params restarts=2
run --recipe paper --attack fc --eps $eps32 --budget 0.01 --attack-params impl=toxic
python experiments/targeted_summary.py "$results"
