#!/usr/bin/env bash
# Table II on mnist-5k with all five columns on one craft of the PoisonSets (2026-11-26, commit 97ec4c1; baselines_cpu.md, "Table II
# on mnist-5k"). records/mnist-5k.jsonl.xz pairs the baselines (craft pgd ec958732…, dap 46cae753…) with `none` and
# HINT runs of 2026-11-22 (commit 57f5065), whose records name no craft; records/mnist-5k-one-craft.jsonl.xz holds `none` and HINT at
# ρ > 0 re-run on the baselines' craft, with the same run ids. This unpacks both into one workspace, the one-craft
# runs replacing the 2026-11-22 runs (commit 57f5065) of the same ids, and prints the table.
#   experiments/mnist5k_one_craft.sh [workspace]     (default: a new temporary directory; it must hold no runs)
# To re-run the one-craft runs: re-craft with `poisonbench defend --dataset mnist-5k --recipe paper --attacks A
# --poison-ratio 1 --prepare-only` for each attack, check the four `poisons/*/delta.safetensors` against the sha256
# those records name (`poison_tensors`; AVX512 reproduced them on 2026-11-26, commit 97ec4c1), then `defend --method none|hint
# --poison-ratio R --trial T`.
set -euo pipefail
here=$(dirname "$0")
ws=${1:-$(mktemp -d)}
one_craft=$(mktemp -d)
trap 'rm -rf "$one_craft"' EXIT
poisonbench records unpack "$here/records/mnist-5k.jsonl.xz" "$ws"
poisonbench records unpack "$here/records/mnist-5k-one-craft.jsonl.xz" "$one_craft"
cp "$one_craft"/runs/*.json "$ws/runs/"  # the one-craft runs replace the 2026-11-22 runs (commit 57f5065) of the same ids
poisonbench report --results "$ws" --table 2 --dataset mnist-5k --recipe paper --paired --ci --paper
