"""Print mean ± sample std of test accuracy per configuration in a results workspace or a packed records file
(`poisonbench records pack`), a compact view for notes.

    python experiments/summarize.py [results]          e.g. experiments/records/mnist-5k.jsonl.xz
"""

import json
import statistics
import sys
from collections import defaultdict

from poisonbench.defenses import DEFENSES
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.experiment.packed_records import open_store


def tweaks(method: str, params: dict, dataset: str, recipe: dict) -> dict:
    """The defense parameters that differ from the method's defaults for this dataset family and recipe."""
    family = "cifar10" if dataset.startswith("cifar") else "mnist"
    defaults = DEFENSES.get(method).defaults(family, resolve_recipe(family, recipe["name"], epochs=recipe["epochs"]))
    return {k: v for k, v in params.items() if v != defaults.get(k)}


groups = defaultdict(list)
for r in open_store(sys.argv[1] if len(sys.argv) > 1 else "results").all():
    c = r["config"]
    d = dict(c["defense"])
    method = d.pop("method")
    p = c["poison"] or {}
    key = (c["dataset"], c["recipe"]["name"], c["recipe"]["epochs"], p.get("ratio", 0), "+".join(p.get("attacks", [])),
           method, json.dumps(tweaks(method, d, c["dataset"], c["recipe"])))
    noise = (r.get("defense") or {}).get("noise") or {}
    groups[key].append((r["metrics"]["test_acc"], r["cost"]["seconds"], noise.get("delta_abs_mean"),
                        noise.get("reached_beta"), r["cost"].get("hint_select", 0) + r["cost"].get("hint_update", 0)))
for key in sorted(groups):
    rows = groups[key]
    accs = [100 * a for a, *_ in rows]
    sd = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
    extra = ""
    if rows[0][2] is not None:
        extra = (f"  mean|δ| {statistics.mean(r[2] for r in rows):.4f}"
                 f"  reached β {statistics.mean(r[3] for r in rows):.0f}"
                 f"  hint s {statistics.mean(r[4] for r in rows):.1f}")
    print(f"{' | '.join(map(str, key))}: n={len(rows)} acc {statistics.mean(accs):.2f}{sd}  "
          f"[{', '.join(f'{a:.1f}' for a in accs)}]  s/run {statistics.mean(r[1] for r in rows):.0f}{extra}")
