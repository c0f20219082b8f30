#!/usr/bin/env bash
# A sweep worker over a live queue file: pops the first line (a `poisonbench` argument list), runs it, repeats.
# The queue can be edited while workers run (lines are popped under a lock). Done runs are skipped by defend.
# A worker notes the line it is running in QUEUE_FILE.running/<pid>.<start time>@<host>; a worker starting later on
# the same host puts the lines of that host's dead workers (a killed session) back at the head of the queue, and
# `defend` resumes those runs from their epoch checkpoints. The start time (field 22 of /proc/<pid>/stat) tells a
# live worker from an unrelated process that was given the dead worker's pid later; claims of other hosts (whose
# /proc this worker cannot see) are left to workers on those hosts and listed on stderr at start-up: the line of
# a node that died for good (a preempted node) goes back only when its claim file is moved back into the queue.
# A run that fails (non-zero exit: bad input, a crash, an out-of-memory kill) is appended to QUEUE_FILE.failed with
# its exit status, never dropped silently; an interrupted run (Ctrl-C: 130, SIGTERM: 143) keeps its claim and stops
# the worker, so the next worker on this host puts it back.
#   experiments/queue_worker.sh QUEUE_FILE [results]
set -uo pipefail
queue=$1; results=${2:-results}
claims="$queue.running"
export POISONBENCH_RESULTS=$results
mkdir -p "$claims" "$results"
started() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20; }
host=$(uname -n)  # not $HOSTNAME: a scheduler may export the submit host's
me="$$.$(started $$)@$host"
flock "$queue.lock" sh -c '
  for f in "$1"/*; do
    [ -e "$f" ] || continue
    claim=${f##*/}
    case $claim in *@*) [ "${claim#*@}" = "$3" ] || continue; claim=${claim%@*} ;; esac
    pid=${claim%%.*}
    case $claim in
      *.?*) [ "$(sed "s/.*) //" "/proc/$pid/stat" 2>/dev/null | cut -d" " -f20)" = "${claim#*.}" ] && continue ;;
      *) kill -0 "$pid" 2>/dev/null && continue ;;  # pid only: an older worker, or no /proc to read a start time
    esac
    { cat "$f"; cat "$2"; } > "$2.requeue" && mv "$2.requeue" "$2" && rm -f "$f"
  done' _ "$claims" "$queue" "$host"
for f in "$claims"/*@*; do  # other hosts' runs: live elsewhere, or lost with their node
  [ -e "$f" ] && [ "${f##*@}" != "$host" ] && printf 'claimed on host %s: %s\n' "${f##*@}" "$(cat "$f")" >&2
done
while true; do
  line=$(flock "$queue.lock" sh -c "head -n 1 '$queue'; sed -i 1d '$queue'")
  [ -z "$line" ] && { [ -s "$queue" ] && continue || break; }
  case "$line" in \#*) continue ;; esac
  printf '%s\n' "$line" > "$claims/$me"
  poisonbench $line --json >> "$results/sweep.jsonl" 2>> "$results/sweep.err"
  status=$?
  case $status in
    0) ;;
    130|143) echo "interrupted (exit $status): $line" >&2; exit "$status" ;;  # the claim stays for a requeue
    *) printf '%s\t%s\n' "$status" "$line" >> "$queue.failed" ;;
  esac
  rm -f "$claims/$me"
done
