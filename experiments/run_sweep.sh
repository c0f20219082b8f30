#!/usr/bin/env bash
# Run the commands of a sweep file (one `poisonbench` argument list per line) with N parallel workers.
# Each worker uses one thread, so N = number of cores. Done runs are skipped (records exist), so re-running
# the script after an interruption finishes the job.
#   experiments/run_sweep.sh experiments/mnist5k_sweep.txt [workers] [results]
# A sweep file for whatever a table still lacks, one trial per line:
#   poisonbench report --table 2 --dataset mnist-5k --missing --per-trial | sed 's/^poisonbench //' > sweep.txt
set -euo pipefail
file=$1; workers=${2:-2}; results=${3:-results}
export OMP_NUM_THREADS=1 POISONBENCH_RESULTS=$results
grep -v '^\s*#' "$file" | grep -v '^\s*$' | xargs -P "$workers" -I{} sh -c 'poisonbench {} --json 2>>"$POISONBENCH_RESULTS/sweep.err"' >> "$results/sweep.jsonl"
