#!/bin/sh
# Issue 52's search beyond the defaults (experiments/availability.md): craft the PoisonSets that
# experiments/grids/availability-search.toml names, then run it. RESULTS: the workspace (default results).
set -e
RESULTS=${1:-results}
pb() { python -m poisonbench "$@"; }
pb craft --attack em --eps 0.3 --dataset mnist-5k --results "$RESULTS" --json
pb craft --attack em --eps 0.3 --granularity class --dataset mnist-5k --results "$RESULTS" --json
pb craft --attack em --granularity class --max-iterations 20 --dataset mnist-5k --results "$RESULTS" --json
pb craft --attack rem --eps 0.3 --dataset mnist-5k --results "$RESULTS" --json
pb craft --attack lsp --eps 1.7568627450980392 --dataset mnist-5k --results "$RESULTS" --json  # 16/255 · 28
pb craft --attack lsp --eps 8.4 --dataset mnist-5k --results "$RESULTS" --json                 # 0.3 · 28
pb craft --attack ops --eps 4 --dataset mnist-5k --results "$RESULTS" --json
pb craft --attack ops --eps 16 --dataset mnist-5k --results "$RESULTS" --json
pb sweep run "$(dirname "$0")/grids/availability-search.toml" --results "$RESULTS" --workers 1 --no-report
