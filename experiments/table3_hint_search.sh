#!/usr/bin/env bash
# Issue 80, item 1's "other natural budget knob" for HINT: on table3-fashion-powered.toml's setting (full
# Fashion-MNIST, FC-mean white-box, ε 0.3, 240 poisons, quick recipe, head BN train) HINT's unsigned update
# δ ← Π_β(δ − γ·I_pert) never brought |δ| to 0.062, so β did not bind (table3_powered.md). This searches the step
# on 10 HELD-APART targets (trials 60-69, never the table's 0-59): W/o Defense, HINT as in the table, and HINT with
# the official code's signed update (--sign: each update moves every selected pixel by γ, so the noise reaches β)
# at β 0.062 and at β = ε = 0.3, and unsigned with γ 1.0 at β 0.3. Each target's craft is shared by its runs.
#
#   experiments/table3_hint_search.sh RESULTS DATA_DIR [JOBS]
#
# Then: python experiments/table3_hint_search_summary.py RESULTS
set -euo pipefail
results=$1 data=$2 jobs=${3:-2}
common=(--dataset fashion-mnist --data-dir "$data" --recipe quick --attack fc --eps 0.3 --budget 0.00407
        --threat white --attack-params bases=nearest,restarts=1 --results "$results" --json)
variants=("--method none" "--method hint" "--method hint --sign" "--method hint --sign --beta 0.3"
          "--method hint --gamma 1.0 --beta 0.3")
for t in $(seq 60 69); do  # the craft first, once per target (the runs of one target share it)
    poisonbench defend "${common[@]}" --method none --trial "$t" > /dev/null
done
for t in $(seq 60 69); do
    for v in "${variants[@]:1}"; do
        echo "$v --trial $t"
    done
done | xargs -P "$jobs" -I{} sh -c "poisonbench defend ${common[*]} {} > /dev/null"
