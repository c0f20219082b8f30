#!/usr/bin/env bash
# REM at its official schedule (gen_rem.sh: 5000 steps, 10 / 10 inner steps, 5 draws) on mnist-5k, on one GPU, in one
# call (issue 67; experiments/availability.md): installs from the carried wheels (benchmarks/gpu_install.sh), crafts
# ε 8/255 (ρ_a 4/255) and ε 0.3 (ρ_a 0.15, the authors' ratio ρ_a = ε/2) side by side (two processes: the craft is
# bound by kernel launches, not by the GPU's arithmetic), then trains `none` on each under the paper recipe, 3 trials.
# A craft stopped by its time limit keeps its state every 10 steps (a later call on the same workspace resumes it);
# its last saved step is in the summary. The states saved by earlier GPU calls are kept in
# experiments/rem_official_state/ (one folder per poison id) and copied into a workspace that has none, so each GPU
# session continues where the last one stopped (availability.md says how far they got). A state is resumed only by
# the same code and GPU (engine.checkpoints.execution_identity): an H200 (`run` with kind nvidia-h200) and the
# poisonbench sources that saved it, fingerprint e10d4dbcafb2adbd = commit 153066d's. Here, before the call:
#   rm -rf .remcode && mkdir .remcode && git archive 153066d poisonbench | tar x -C .remcode   (.remcode is ignored)
# and in the call: carry [".whl", ".remcode"], REM_CODE=.remcode (the crafts run those sources, with PYTHONSAFEPATH
# so that the working directory's do not shadow them; the rest today's), e.g.
# `REM_CODE=.remcode TAGS=eps03 DEFEND=0 DEADLINE=592 DEADLINE_MARGIN=14 CRAFT_LIMIT=600 OUT=$OUT experiments/rem_official_gpu.sh`
# with timeout_s 600 (availability.md: what to do with what comes back). Before crafting, a preflight prints the
# sources the crafts import and whether each saved state would be resumed; one that would not (other code, GPU,
# torch, cuDNN) stops the call with exit 3 unless RESTART_OK=1. With RESULTS=/tmp/rem-ws the workspace is outside
# the checkout and stays on a warm machine, so a second call made at once resumes from the first's last state.
#
#   OUT=out RESULTS=results CRAFT_LIMIT=420 experiments/rem_official_gpu.sh
#
# A call that the device tool kills at its limit returns only what is under $OUT then: so every SAVE_EVERY (30) s
# the workspace's saved states are snapshotted into $OUT/state.tgz (written whole, then renamed), and DEADLINE
# (seconds from the script's start, e.g. 585 for a 600-second call) shortens each craft's limit so that the craft
# ends, and its PoisonSet is packed, before the call does. DEFEND=0 skips the `none` runs: they need no GPU (a CPU
# trains them on the PoisonSet of poisons_<tag>.tgz), and every second of a call is the craft's.
#
# CPU rehearsal: DEVICE=cpu INSTALL=0 RESUME=0 REM_EXTRA="--schedule budget --train-steps 2 --u-steps 1 --a-steps 1"
# DEFEND_EXTRA="--epochs 1 --trials 1" experiments/rem_official_gpu.sh
# Output under $OUT: summary.txt (one line per step: exit status, seconds, poison id, accuracies), logs.tgz (every
# log and JSON reply), records.tgz (the workspace's run records), poisons_<tag>.tgz (each finished PoisonSet), and
# state.tgz (the saved states of the crafts not finished: the workspace's partial/ folder).
set -u
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-$PWD/rem-gpu-out}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
CRAFT_LIMIT=${CRAFT_LIMIT:-420}
DEFEND_LIMIT=${DEFEND_LIMIT:-150}
export POISONBENCH_RESULTS=${RESULTS:-$PWD/results}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT/logs"
SUMMARY=$OUT/summary.txt
say() { echo "$*" | tee -a "$SUMMARY"; }
START=$SECONDS
# the saved states of unfinished crafts, as $OUT/state.tgz: whole or not at all (a kill mid-write leaves the last)
snapshot() {
    [ -d "$POISONBENCH_RESULTS/partial" ] || return 0
    tar czf "$OUT/state.tgz.part" -C "$POISONBENCH_RESULTS" partial 2>/dev/null && mv -f "$OUT/state.tgz.part" "$OUT/state.tgz"
}
# a craft's time limit: CRAFT_LIMIT, cut so that it ends DEADLINE_MARGIN (20) s before DEADLINE (when set)
craft_limit() {
    local limit=$CRAFT_LIMIT left
    if [ -n "${DEADLINE:-}" ]; then
        left=$((DEADLINE - (SECONDS - START) - ${DEADLINE_MARGIN:-20}))
        [ "$left" -lt "$limit" ] && limit=$left
    fi
    [ "$limit" -lt 1 ] && limit=1
    echo "$limit"
}

if [ -d experiments/rem_official_state ] && [ "${RESUME:-1}" = 1 ]; then
    mkdir -p "$POISONBENCH_RESULTS/partial"
    cp -rn experiments/rem_official_state/* "$POISONBENCH_RESULTS/partial/"
fi
say "rem_official_gpu: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | sed 's/^/gpu: /' \
    | tee -a "$SUMMARY"
if [ "${INSTALL:-1}" = 1 ]; then
    t0=$SECONDS
    PYTHON=$PY benchmarks/gpu_install.sh >"$OUT/logs/install.log" 2>&1
    say "install: exit $? in $((SECONDS - t0)) s"
fi

# Python for the crafts: REM_CODE's sources first on the path; PYTHONSAFEPATH keeps `python -m` from putting the
# working directory (today's sources) ahead of them, which once restarted a 2,590-step craft from zero (2026-11-28;
# fixed in commit 9b38437)
CRAFT_ENV=(PYTHONSAFEPATH=1 "PYTHONPATH=${REM_CODE:+$PWD/$REM_CODE}")
craft_py() { env "${CRAFT_ENV[@]}" $PY "$@"; }
# before any GPU second goes to a craft: would each saved state be resumed (prepare_partial's rule)? A state that
# would not is named with what differs, and the call stops (exit 3) unless RESTART_OK=1
craft_py - "$POISONBENCH_RESULTS" "$DEVICE" <<'PYEOF' 2>&1 | tee -a "$SUMMARY"
import json, sys
from pathlib import Path
import torch
import poisonbench
from poisonbench.engine.checkpoints import execution_identity
device = torch.device(sys.argv[2])
now = {**execution_identity(device), "accel": "auto"}
print(f"preflight: crafts import {Path(poisonbench.__file__).parent}, code fingerprint {now['code']}")
bad = 0
for f in sorted(Path(sys.argv[1], "partial").glob("*/identity.json")):
    saved = {k: v for k, v in json.loads(f.read_text()).items() if k != "forced"}
    differ = [f"{k}={saved.get(k)!r} (now {now.get(k)!r})" for k in sorted(set(saved) | set(now))
              if saved.get(k) != now.get(k)]
    try:  # where the craft would go on from (REM's StateFile keeps its counters in the file's metadata)
        from safetensors import safe_open
        with safe_open(str(f.parent / "rem.safetensors"), "pt") as h:
            at = f" at {json.loads(h.metadata()['counters'])}"
    except Exception:
        at = " (no readable REM state)"
    print(f"  state {f.parent.name}{at}: " + ("resumable" if not differ else "NOT resumable: " + ", ".join(differ)))
    bad += bool(differ)
sys.exit(3 if bad else 0)
PYEOF
preflight=${PIPESTATUS[0]}
if [ "$preflight" != 0 ] && [ "${RESTART_OK:-0}" != 1 ]; then
    say "preflight: exit $preflight, no craft started (RESTART_OK=1 crafts anyway, from zero where not resumable)"
    exit 3
fi

# one TAG CRAFT-OPTIONS...: craft REM (official schedule unless $REM_EXTRA says otherwise), then `none` on it
one() {
    local tag=$1 t0=$SECONDS rc id
    shift
    # shellcheck disable=SC2086
    timeout -k 10 "$(craft_limit)" env "${CRAFT_ENV[@]}" $PY -m poisonbench craft --attack rem --dataset mnist-5k --device "$DEVICE" --json \
        "$@" ${REM_EXTRA:-} >"$OUT/logs/craft_$tag.json" 2>"$OUT/logs/craft_$tag.log"
    rc=$?
    id=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["poison_id"])' "$OUT/logs/craft_$tag.json" \
        2>/dev/null)
    say "craft $tag ($*): exit $rc in $((SECONDS - t0)) s, poison id ${id:-none}"
    if [ -z "$id" ]; then
        snapshot
        $PY - "$POISONBENCH_RESULTS" <<'PYEOF' | tee -a "$SUMMARY"
import json, sys
from pathlib import Path
from safetensors import safe_open
for f in sorted(Path(sys.argv[1], "partial").rglob("rem.safetensors")):
    with safe_open(f, "pt") as h:
        print(f"  saved state {f.parent.name}: {json.loads(h.metadata()['counters'])}")
PYEOF
        return
    fi
    tar czf "$OUT/poisons_$tag.tgz" -C "$POISONBENCH_RESULTS" "poisons/$id"
    [ "${DEFEND:-1}" = 1 ] || { say "defend none $tag: skipped (DEFEND=0)"; return; }
    t0=$SECONDS
    # shellcheck disable=SC2086
    timeout -k 10 "$DEFEND_LIMIT" $PY -m poisonbench defend --dataset mnist-5k --recipe paper --method none \
        --poison-ratio 1.0 --attacks rem --poisons "rem=$id" --trials 3 --device "$DEVICE" --json ${DEFEND_EXTRA:-} \
        >"$OUT/logs/defend_$tag.json" 2>"$OUT/logs/defend_$tag.log"
    rc=$?
    say "defend none $tag: exit $rc in $((SECONDS - t0)) s, test accuracy $($PY -c '
import json, sys
text = open(sys.argv[1]).read().strip()
try:
    runs = json.loads(text)
except ValueError:
    runs = [json.loads(line) for line in text.splitlines() if line.strip()]
runs = runs if isinstance(runs, list) else runs.get("runs", [runs])
print([r.get("test_acc") for r in runs])' "$OUT/logs/defend_$tag.json" 2>&1 | tail -1)"
}

# TAGS (default both): which crafts to run, e.g. TAGS=eps03 for one alone (0.225 s a step on an H200 against 0.44
# for each of two side by side)
pids=()
case " ${TAGS:-eps8 eps03} " in *" eps8 "*) one eps8 & pids+=($!) ;; esac
case " ${TAGS:-eps8 eps03} " in *" eps03 "*) one eps03 --eps 0.3 --adv-radius 0.15 & pids+=($!) ;; esac
STOP=$POISONBENCH_RESULTS/.snapshots-stop  # the saver checks it every second (no sleep outlives the script)
rm -f "$STOP"
( while :; do
      for _ in $(seq "${SAVE_EVERY:-30}"); do [ -e "$STOP" ] && exit 0; sleep 1; done
      snapshot
  done ) &
saver=$!
wait "${pids[@]}"
touch "$STOP"
wait "$saver"
snapshot
tar czf "$OUT/records.tgz" -C "$POISONBENCH_RESULTS" --exclude poisons --exclude partial --exclude locks . 2>/dev/null
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
say "rem_official_gpu: done $(date -u +%FT%TZ)"
