#!/usr/bin/env bash
# Issue 29 (the refactor): re-run configurations already in experiments/records/mnist-5k.jsonl.xz and compare.
# Trial 0 of none and HINT at ρ = 0 and ρ = 1 (quick recipe; ρ = 0 also with the paper recipe), with --accel auto,
# then the quick ones with --accel off. The off workspace starts from a copy of the auto one's PoisonSets and
# surrogate, so the two differ only in how the victims train. Results: experiments/refactor_rerun.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PB=.venv/bin/poisonbench
OUT=${1:-/tmp/refactor-rerun}
quick() { $PB defend --dataset mnist-5k --recipe quick --trial 0 --json "$@"; }
for accel in auto off; do
  results=$OUT/results-$accel
  if [ $accel = off ]; then
    mkdir -p "$results" && cp -r "$OUT/results-auto/poisons" "$OUT/results-auto/surrogates" "$results/"
  fi
  quick --accel $accel --results "$results"
  quick --accel $accel --results "$results" --poison-ratio 1
  quick --accel $accel --results "$results" --poison-ratio 1 --method hint
  quick --accel $accel --results "$results" --method hint
  if [ $accel = auto ]; then
    $PB defend --dataset mnist-5k --trial 0 --results "$results" --json
    $PB defend --dataset mnist-5k --trial 0 --method hint --results "$results" --json
  fi
done
