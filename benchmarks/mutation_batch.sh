#!/usr/bin/env bash
# Mutation testing of several modules at once, each with its own tests and worker count, on a machine with many
# cores (a lent GPU machine's CPUs, a cluster node): one benchmarks/mutation.sh per line of a targets file, all in
# parallel, each interrupted after $MUTATION_LIMIT seconds (its verdicts so far are kept and scored).
#
#   benchmarks/mutation_batch.sh TARGETS_FILE
#
# TARGETS_FILE: one module per line, `MODULE JOBS TEST...` (# comments; benchmarks/mutation_targets.txt is the
# list of issue 64). Environment: OUT (default ./mutation-out: per module its score.json, survivors.txt,
# survivors_diff.txt and mutmut's log, named after the module), MUTATION_LIMIT (seconds, default 480), PYTHON,
# MUTATION_ROOT (the work directories, default a new one in /tmp). The tests run on the CPU, one thread each
# (CUDA hidden), so that JOBS add up to the cores. Prints one score line per module (benchmarks/mutation.sh's).
set -u
[ $# -eq 1 ] && [ -f "$1" ] || { echo "usage: $0 TARGETS_FILE" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$PWD/mutation-out}
root=${MUTATION_ROOT:-$(mktemp -d /tmp/poisonbench-mutation-batch.XXXXXX)}
mkdir -p "$out" "$root"
export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MUTATION_LIMIT=${MUTATION_LIMIT:-480}
pids=()
while read -r module jobs tests; do
    case "$module" in ''|'#'*) continue ;; esac
    name=$(basename "${module%.py}")
    MUTATION_JOBS=$jobs MUTATION_WORK="$root/$name" "$repo/benchmarks/mutation.sh" "$module" $tests \
        >"$out/$name.out" 2>&1 &
    pids+=($!)
done <"$1"
wait "${pids[@]}"
for work in "$root"/*/; do
    name=$(basename "$work")
    for f in score.json survivors.txt survivors_diff.txt mutmut-run.log; do
        [ -f "$work/$f" ] && cp "$work/$f" "$out/$name.${f}"
    done
    grep -h ' mutants killed ' "$out/$name.out"
done
