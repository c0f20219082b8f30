#!/usr/bin/env bash
# A sweep worker over a live queue file: pops the first line (a `poisonbench` argument list), runs it, repeats.
# The queue can be edited while workers run (lines are popped under a lock). Done runs are skipped by defend.
#   experiments/queue_worker.sh QUEUE_FILE [results]
set -uo pipefail
queue=$1; results=${2:-results}
export POISONBENCH_RESULTS=$results
while true; do
  line=$(flock "$queue.lock" sh -c "head -n 1 '$queue'; sed -i 1d '$queue'")
  [ -z "$line" ] && { [ -s "$queue" ] && continue || break; }
  case "$line" in \#*) continue ;; esac
  poisonbench $line --json >> "$results/sweep.jsonl" 2>> "$results/sweep.err"
done
