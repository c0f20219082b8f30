#!/usr/bin/env bash
# A sweep worker over a live queue file: pops the first line (a `poisonbench` argument list), runs it, repeats.
# The queue can be edited while workers run (lines are popped under a lock). Done runs are skipped by defend.
# A worker notes the line it is running in QUEUE_FILE.running/<pid>; a worker starting later puts the lines of
# dead workers (a killed session, a preempted node) back at the head of the queue, and `defend` resumes those
# runs from their epoch checkpoints.
#   experiments/queue_worker.sh QUEUE_FILE [results]
set -uo pipefail
queue=$1; results=${2:-results}
claims="$queue.running"
export POISONBENCH_RESULTS=$results
mkdir -p "$claims" "$results"
flock "$queue.lock" sh -c '
  for f in "$1"/*; do
    [ -e "$f" ] || continue
    kill -0 "${f##*/}" 2>/dev/null && continue
    { cat "$f"; cat "$2"; } > "$2.requeue" && mv "$2.requeue" "$2" && rm -f "$f"
  done' _ "$claims" "$queue"
while true; do
  line=$(flock "$queue.lock" sh -c "head -n 1 '$queue'; sed -i 1d '$queue'")
  [ -z "$line" ] && { [ -s "$queue" ] && continue || break; }
  case "$line" in \#*) continue ;; esac
  printf '%s\n' "$line" > "$claims/$$"
  poisonbench $line --json >> "$results/sweep.jsonl" 2>> "$results/sweep.err"
  rm -f "$claims/$$"
done
