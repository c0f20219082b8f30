#!/usr/bin/env bash
# One call on a GPU machine that has its own Python and torch but no package index (issue 65): install poisonbench
# from wheels carried in `.whl/` (benchmarks/gpu_wheels.txt lists them and says how to fetch them), show what the
# machine has (`poisonbench env`), run the GPU check (benchmarks/gpu_check.py, within its --budget) and the GPU tests
# (`pytest -m gpu`), each under a time limit, and write every output and a summary under one folder.
#
#   benchmarks/gpu_run.sh [--tiny]
#
# From any directory; it works in the repository root. --tiny: the GPU check's toy sizes, for a rehearsal on a CPU.
# Environment: OUT (the output folder; default ./gpu-out), PYTHON (default python3), GPU_BUDGET (the check's
# seconds, default 360), PYTEST_LIMIT (the GPU tests' seconds, default 240), WHEELS (default .whl), DATA_DIR (a Fashion-MNIST folder for the check's end-to-end figure).
# Output: summary.txt (one line per step: exit status and seconds), install.log, cli.log (`poisonbench --help` and
# `poisonbench env`), env.json, gpu_check.jsonl (the check's figures), gpu_check.log, pytest_gpu.log.
# Exit status: 0 when every step passed, else the number of steps that failed.
set -u
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-$PWD/gpu-out}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
BUDGET=${GPU_BUDGET:-360}
TINY=0
[ "${1:-}" = "--tiny" ] && TINY=1
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
FAILED=0

say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_SECONDS COMMAND...: the command's output goes to $OUT/NAME.log (appended), its status to the summary
step() {
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    timeout -k 10 "$limit" "$@" >>"$OUT/$name.log" 2>&1
    rc=$?
    [ $rc -eq 124 ] && say "$name: time limit ($limit s) reached" || say "$name: exit $rc in $((SECONDS - t0)) s"
    [ $rc -eq 0 ] || FAILED=$((FAILED + 1))
    return $rc
}

say "gpu_run: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $($PY -V 2>&1)," \
    "torch $($PY -c 'import torch; print(torch.__version__)' 2>&1 | tail -1)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    2>&1 | sed 's/^/gpu: /' | tee -a "$SUMMARY"

# 1. The carried wheels and the project (benchmarks/gpu_install.sh).
step install 300 env PYTHON="$PY" WHEELS="$WHEELS" benchmarks/gpu_install.sh

BIN=$($PY -c 'import os, sys; print(os.path.dirname(sys.executable))')
PB="$BIN/poisonbench"
[ -x "$PB" ] || PB="$PY -m poisonbench"  # the entry point missing: the module still runs

# 2. What the machine has.
step cli 60 sh -c "$PB --help && $PB env"
step env 60 sh -c "$PB env --json >'$OUT/env.json'"

# 3. The GPU check, within its budget (and a hard limit a little above it).
CHECK=(benchmarks/gpu_check.py --out "$OUT/gpu_check.jsonl" --budget "$BUDGET")
[ $TINY -eq 1 ] && CHECK+=(--tiny --budget 0)
[ -n "${DATA_DIR:-}" ] && CHECK+=(--data-dir "$DATA_DIR")
step gpu_check $((BUDGET + 120)) env PYTHONUNBUFFERED=1 $PY "${CHECK[@]}"

# 4. The GPU tests (they skip where torch sees no CUDA device).
step pytest_gpu "${PYTEST_LIMIT:-240}" $PY -m pytest -m gpu -v -p no:cacheprovider -n 0 --durations=0 \
    tests/test_gpu.py tests/test_deterministic.py

say "gpu_run: done, $FAILED step(s) failed"
[ -f "$OUT/gpu_check.jsonl" ] && grep '"figure": "done"' "$OUT/gpu_check.jsonl" | cut -c1-600 | tee -a "$SUMMARY"
exit $FAILED
