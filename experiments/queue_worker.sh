#!/usr/bin/env bash
# A sweep worker over a live queue file: pops the first line (a `poisonbench` argument list), runs it, repeats.
# The queue can be edited while workers run (lines are popped under a lock). Done runs are skipped by defend.
# A worker notes the line it is running in QUEUE_FILE.running/<pid>.<start time>; a worker starting later puts the
# lines of dead workers (a killed session, a preempted node) back at the head of the queue, and `defend` resumes
# those runs from their epoch checkpoints. The start time (field 22 of /proc/<pid>/stat) tells a live worker from
# an unrelated process that was given the dead worker's pid later.
#   experiments/queue_worker.sh QUEUE_FILE [results]
set -uo pipefail
queue=$1; results=${2:-results}
claims="$queue.running"
export POISONBENCH_RESULTS=$results
mkdir -p "$claims" "$results"
started() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
me="$$.$(started $$)"
flock "$queue.lock" sh -c '
  for f in "$1"/*; do
    [ -e "$f" ] || continue
    claim=${f##*/}; pid=${claim%%.*}
    case $claim in
      *.?*) [ "$(sed "s/.*) //" "/proc/$pid/stat" 2>/dev/null | cut -d" " -f20)" = "${claim#*.}" ] && continue ;;
      *) kill -0 "$pid" 2>/dev/null && continue ;;  # pid only: an older worker, or no /proc to read a start time
    esac
    { cat "$f"; cat "$2"; } > "$2.requeue" && mv "$2.requeue" "$2" && rm -f "$f"
  done' _ "$claims" "$queue"
while true; do
  line=$(flock "$queue.lock" sh -c "head -n 1 '$queue'; sed -i 1d '$queue'")
  [ -z "$line" ] && { [ -s "$queue" ] && continue || break; }
  case "$line" in \#*) continue ;; esac
  printf '%s\n' "$line" > "$claims/$me"
  poisonbench $line --json >> "$results/sweep.jsonl" 2>> "$results/sweep.err"
  rm -f "$claims/$me"
done
