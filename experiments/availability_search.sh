#!/bin/sh
# Issue 52's search beyond the defaults (experiments/availability.md): for each setting of
# experiments/grids/availability-search.toml, cheapest craft first, craft its PoisonSet and train the undefended
# model on it (the grid's runs: same run ids, so `sweep run` on the grid afterwards finds them done).
# RESULTS: the workspace (default results).
set -e
RESULTS=${1:-results}
pb() { python -m poisonbench "$@"; }
run() {  # ATTACK CRAFT-OPTIONS...: craft, then defend with that PoisonSet
    attack=$1; shift
    id=$(pb craft --attack "$attack" "$@" --dataset mnist-5k --results "$RESULTS" --json | python -c 'import json,sys; print(json.load(sys.stdin)["poison_id"])')
    pb defend --dataset mnist-5k --recipe paper --method none --poison-ratio 1.0 --attacks "$attack" \
        --poisons "$attack=$id" --trial 0 --results "$RESULTS" --json
}
run lsp --eps 1.7568627450980392   # 16/255 · 28
run lsp --eps 8.4                  # 0.3 · 28
run ops --eps 4
run em --granularity class --max-iterations 20
# not run yet (session 45's CPU went to the map; experiments/availability.md):
# run ops --eps 16
# run em --eps 0.3 --granularity class
# run em --eps 0.3
# run rem --eps 0.3
