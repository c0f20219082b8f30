#!/usr/bin/env bash
# Issue 83: REM's confound separated on mnist-5k at ε 0.3 (availability.md, "REM's 12 points attributed").
# Each entry crafts one REM PoisonSet (a cache hit when it exists) and trains the paper recipe's `none` victim on it,
# ρ = 1, trials 0..2 (each a resumable, skip-if-done `defend` run). Two lanes run side by side, one thread each:
#   experiments/rem_attribution.sh WORKSPACE [lane ...]     (lanes: a, b; default both, in the background)
# What the rows vary, from the budget schedule at ε 0.3, ρ_a 0.15 (40 source steps, 5 / 2 inner steps, 1 draw,
# grad clip 5: rem-budget-eps03.toml's 82.67 / 84.47 %):
#   official40   the official inner search (10 / 10 steps, 5 draws) at the budget's 40 steps and lr decay
#   budget2590   the budget's inner search at 2,590 steps with the official lr decay (× 0.1 every 2,000), the
#                length of rem-official-cut.toml's official-inner craft (95.50 %)
#   rho0, rho05  the crafting adversary ρ_a at 0 and 0.05 (budget schedule)
#   clip0        the source model's step without the gradient clip (budget schedule; official REM has none)
set -euo pipefail
ws=${1:?workspace}; shift
lanes=${*:-"a b"}
common=(--dataset mnist-5k --eps 0.3)
declare -A craft=(
  [official40]="--schedule official --train-steps 40 --lr-decay-every 16 --adv-radius 0.15"
  [budget2590]="--schedule budget --train-steps 2590 --lr-decay-every 2000 --adv-radius 0.15"
  [rho0]="--schedule budget --adv-radius 0"
  [rho0-s1]="--schedule budget --adv-radius 0 --seed 1"
  [rho05]="--schedule budget --adv-radius 0.05"
  [rho05-s1]="--schedule budget --adv-radius 0.05 --seed 1"
  [clip0]="--schedule budget --adv-radius 0.15 --grad-clip 0"
  [clip0-s1]="--schedule budget --adv-radius 0.15 --grad-clip 0 --seed 1"
)
lane_a=(official40 clip0 rho0-s1 clip0-s1)
lane_b=(rho0 rho05 budget2590 rho05-s1)

one() {  # one entry: craft, then its three victims
  local name=$1 id
  # shellcheck disable=SC2086
  id=$(poisonbench craft --attack rem "${common[@]}" ${craft[$name]} --results "$ws" --json | python3 -c \
       'import json, sys; print(json.loads(sys.stdin.read())["poison_id"])')
  echo "$name $id" >> "$ws/rem_attribution_ids.txt"
  for trial in 0 1 2; do
    poisonbench defend --dataset mnist-5k --recipe paper --method none --poison-ratio 1.0 --attacks rem \
      --poisons "rem=$id" --trial "$trial" --results "$ws" --json > /dev/null
  done
}

lane() {
  local -n entries=$1
  for name in "${entries[@]}"; do
    one "$name" > "$ws/log-$name.txt" 2>&1 || echo "$name failed: see $ws/log-$name.txt" >&2
  done
}

mkdir -p "$ws"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for l in $lanes; do
  lane "lane_$l" &
done
wait
