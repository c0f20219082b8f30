#!/usr/bin/env bash
# Mutation testing of one module against the tests that cover it (docs/testing.md, "Mutation testing").
#
#   benchmarks/mutation.sh MODULE.py TESTS...        e.g.  benchmarks/mutation.sh poisonbench/attacks/em.py tests/test_error_minimising.py
#
# mutmut (3.x; `pip install -e '.[mutation]'`) plants one-line bugs (mutants) in MODULE only and runs TESTS (files or
# node ids) against each; a mutant the tests fail on is "killed", one they pass is a "survivor". The work happens in a
# copy of the working tree under $MUTATION_WORK (default a new directory in /tmp), never in this checkout. Prints
# mutmut's survivors, then one line: `MODULE: K of N mutants killed (S survived, T timed out, ...) = P %`, also written
# as JSON to $MUTATION_WORK/score.json, and each survivor's diff to survivors_diff.txt. Not part of CI: minutes to
# tens of minutes per module on 2 cores. $MUTATION_LIMIT (seconds, optional) stops mutmut after that long (SIGTERM to
# its process group: every verdict so far is kept); the score then counts only the mutants that ran ("N not run"),
# and a later run in the same $MUTATION_WORK goes on with the rest only if the tree is unchanged (a changed tree is
# copied in again and mutmut starts over, keeping no verdict). $MUTATION_NAMES: run only the mutants named.
# $MUTATION_NICE (0-19, optional): run in the background of other work. Linux shares the CPU between sessions
# (autogroups) before it looks at `nice`, so a plain `nice -n 19` started in its own session (setsid, nohup from
# another terminal) still takes half the cores from a sweep; this sets the session's own weight.
set -euo pipefail
# $MUTATION_NICE lowers the weight of the session's autogroup, which would also slow everything else started from
# the same shell session (a sweep in the background of the same terminal): the script first moves itself into a
# session of its own (setsid, which waits and passes the exit status on), so only the mutation run is lowered. The
# new session has no terminal: stop it with `kill -- -PID` (its process group), not Ctrl-C.
if [ -n "${MUTATION_NICE:-}" ] && [ -z "${MUTATION_OWN_SESSION:-}" ] && command -v setsid > /dev/null; then
    MUTATION_OWN_SESSION=1 exec setsid -w bash "$0" "$@"
fi
if [ $# -lt 2 ]; then
    echo "usage: $0 MODULE.py TESTS..." >&2
    exit 2
fi
module=$1
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
[ -f "$repo/$module" ] || { echo "Error: no module $module under $repo" >&2; exit 2; }
# without mutmut every mutant would be "not run" and the score a silent 0 of 0
"$python" -c "import mutmut" 2>/dev/null || { echo "Error: mutmut is not installed for $python: pip install -e '.[mutation]'" >&2; exit 2; }
for t in "$@"; do
    [ -e "$repo/${t%%::*}" ] || { echo "Error: no test file ${t%%::*} under $repo" >&2; exit 2; }
done
work=${MUTATION_WORK:-$(mktemp -d /tmp/poisonbench-mutation.XXXXXX)}
mkdir -p "$work"
# the working tree as it is (tracked and untracked files), without the venv, results, caches or an earlier run
tar -C "$repo" --exclude=./.venv --exclude=./results --exclude=./mutants --exclude=./.git \
    --exclude='__pycache__' --exclude=./.pytest_cache --exclude=./.ruff_cache -cf - . | tar -C "$work" -xf -
tests=$(printf '"%s", ' "$@")
cat >> "$work/pyproject.toml" <<EOF

[tool.mutmut]
source_paths = ["poisonbench"]
only_mutate = ["$module"]
# mutmut runs the tests in mutants/, a copy of poisonbench/ and tests/: tests that read the committed records and the
# generated parameter page (tests/test_parameter_reference.py) too
also_copy = ["experiments", "docs"]
# one process per mutant (mutmut forks), no xdist inside it; the test selection: the module's own tests
pytest_add_cli_args = ["-n", "0", "-q", "-p", "no:cacheprovider"]
pytest_add_cli_args_test_selection = [${tests%, }]
timeout_multiplier = 5.0
# torch is not fork-safe once its thread pools ran (a child forked from the process that ran the clean tests hangs
# until the timeout): workers fork from a server that has only collected the tests
process_isolation = "forkserver"
EOF
cd "$work"
if [ -n "${MUTATION_NICE:-}" ]; then
    renice -n "$MUTATION_NICE" -p $$ > /dev/null
    # the autogroup's weight only in a session of our own (the re-exec above): never the caller's session
    if [ -n "${MUTATION_OWN_SESSION:-}" ] && [ -w /proc/self/autogroup ]; then
        echo "$MUTATION_NICE" > /proc/self/autogroup 2>/dev/null || true
    fi
fi
# one torch thread per mutant's process: the $MUTATION_JOBS processes share the cores, and an oversubscribed torch
# spins, which mutmut's CPU-time limit counts (spurious timeouts)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
limit=()
# SIGTERM, not SIGINT: a script started in the background (`cmd &` in a non-interactive shell) inherits SIGINT
# ignored, and Python then never raises KeyboardInterrupt; mutmut records each verdict as it comes, so none is lost
[ -n "${MUTATION_LIMIT:-}" ] && limit=(timeout -s TERM -k 60 "$MUTATION_LIMIT")
# $MUTATION_NAMES (optional): only these mutants (e.g. an earlier run's survivors, after new tests)
read -r -a names <<< "${MUTATION_NAMES:-}"
"${limit[@]}" "$python" -m mutmut run --max-children "${MUTATION_JOBS:-2}" "${names[@]}" > mutmut-run.log 2>&1 || true
"$python" -m mutmut results > survivors.txt 2>&1 || true
"$python" - "$module" <<'EOF'
import json
import sys
from pathlib import Path

# mutmut 3 keeps each mutant's exit code in mutants/<file>.meta; 1 = killed, 0 = survived (mutmut's own mapping)
metas = list(Path("mutants").rglob("*.meta"))
counts = {"killed": 0, "survived": 0, "timeout": 0, "no tests": 0, "not run": 0, "other": 0}
for meta in metas:
    data = json.loads(meta.read_text())
    for code in data.get("exit_code_by_key", {}).values():
        # mutmut.stats.status_by_exit_code's timeouts: -24 is SIGXCPU (its CPU-time limit), the one seen in practice
        key = {1: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", 24: "timeout", -24: "timeout",
               152: "timeout", 255: "timeout", None: "not run"}.get(
            code, "killed" if isinstance(code, int) and code < 0 else "other")
        counts[key] += 1
measured = sum(counts.values()) - counts["not run"]
killed = counts["killed"] + counts["timeout"]
score = 100 * killed / measured if measured else 0.0
extra = ", ".join(f"{v} {k}" for k, v in counts.items() if v and k != "killed")
print(f"{sys.argv[1]}: {killed} of {measured} mutants killed ({extra or 'none left'}) = {score:.1f} %")
Path("score.json").write_text(json.dumps({"module": sys.argv[1], "measured": measured, **counts, "score": score}) + "\n")
EOF
# each survivor's diff, for the triage (equivalent, accepted or a test to write)
grep -E ': survived$' survivors.txt | cut -d: -f1 | while read -r name; do
    echo "=== $name"
    "$python" -m mutmut show "$name" 2>&1 | grep -E '^[-+@]' | grep -vE '^(\+\+\+|---) '
done > survivors_diff.txt || true
echo "survivors: $work/survivors.txt (\`cd $work && $python -m mutmut show NAME\` shows one)" >&2
