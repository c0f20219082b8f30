#!/usr/bin/env bash
# Issue 56 (the layout refactor): the same configurations run by the code before it and after it, compared record
# by record (run id, config, metrics, history, defense summary; not timings or env). Usage:
#   experiments/refactor_rerun_layout.sh BEFORE_TREE AFTER_TREE OUT
# where each tree is a checkout (a git worktree) run through PYTHONPATH. With SWEEP=1, AFTER_TREE also runs the same
# configurations as a grid (experiments/grids/refactor_rerun.toml) through `sweep run`, whose steps build their specs
# from the grid and run them through the library, and those records are compared with BEFORE_TREE's too. One configuration per scenario and per
# kind of defense, on mnist-5k, trial 0, 2 epochs of the quick recipe (cheap: the point is equality, not accuracy).
# Results: experiments/refactor_rerun.md.
set -euo pipefail
BEFORE=$(cd "$1" && pwd) AFTER=$(cd "$2" && pwd) OUT=$(mkdir -p "$3" && cd "$3" && pwd)
PY=${PY:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python}
common=(--dataset mnist-5k --recipe quick --epochs 2 --trial 0 --json)
mix=(--poison-ratio 0.5 --attacks pgd,durp)
targeted=(--attack-params restarts=1,iterations=5)
configs=(
  ""
  "${mix[*]} --method hint"
  "${mix[*]} --method friends"
  "${mix[*]} --method atda"
  "${mix[*]} --method epic"
  "${mix[*]} --method knn --k 5"
  "--attack gm ${targeted[*]} --method random"
  "--attack bp ${targeted[*]} --method l2"
  "--attack fc ${targeted[*]} --method hint --head-bn eval"
)
for side in before after; do
  tree=$BEFORE; [ $side = after ] && tree=$AFTER
  for config in "${configs[@]}"; do
    # shellcheck disable=SC2086
    # from the tree itself: `python -m` puts the working directory first on sys.path, before PYTHONPATH
    (cd "$tree" && PYTHONPATH=$tree "$PY" -m poisonbench.cli.main defend "${common[@]}" $config --results "$OUT/$side" \
      | tail -1 >> "$OUT/$side.jsonl")
  done
done
if [ "${SWEEP:-0}" = 1 ]; then
  grid=$(cd "$(dirname "$0")" && pwd)/grids/refactor_rerun.toml
  (cd "$AFTER" && PYTHONPATH=$AFTER "$PY" -m poisonbench.cli.main sweep run "$grid" --results "$OUT/sweep" --workers 1 \
    --no-report > "$OUT/sweep.out" 2>&1)
fi
"$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
VOLATILE = {"env", "cost", "finished_at", "seconds", "resumed_from_epoch"}
def clean(x):
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items() if k not in VOLATILE and not k.endswith("_seconds")}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x
ids = {s: [json.loads(l)["run_id"] for l in (out / f"{s}.jsonl").read_text().splitlines()] for s in ("before", "after")}
print("run ids equal:", ids["before"] == ids["after"], len(ids["before"]))
for rid in ids["before"]:
    a = json.loads((out / "before" / "runs" / f"{rid}.json").read_text())
    b = json.loads((out / "after" / "runs" / f"{rid}.json").read_text())
    same = clean(a) == clean(b)
    d = a["config"]["defense"]["method"]
    print(rid, a["config"]["scenario"], d, "test_acc", a["metrics"]["test_acc"], b["metrics"]["test_acc"],
          "train_loss", a["history"][-1]["train_loss"], b["history"][-1]["train_loss"], "IDENTICAL" if same else "DIFFERENT")
    if not same:
        ca, cb = clean(a), clean(b)
        print("   differing keys:", sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k)))
    swept = out / "sweep" / "runs" / f"{rid}.json"
    if (out / "sweep").is_dir():
        c = json.loads(swept.read_text()) if swept.is_file() else None
        print("   sweep run of the same id:", "MISSING" if c is None else "IDENTICAL" if clean(c) == clean(a)
              else "DIFFERENT")
PY
