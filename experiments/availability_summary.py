"""Issue 52's strength table: test accuracy of every run against one availability poison alone, per PoisonSet, with
the settings that PoisonSet was crafted with (its manifest: ε and the options that differ from the attack's
defaults), for experiments/availability.md.

    python experiments/availability_summary.py RESULTS     a workspace or a packed file (`poisonbench records pack`)
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from poisonbench.attacks import ATTACKS
from poisonbench.experiment.packed_records import is_packed, open_store, read_pack


def manifests(results: str) -> dict[str, dict]:
    """{poison id: manifest} of the PoisonSets the file or workspace holds."""
    if is_packed(results):
        return {m["poison_id"]: m for _, m in read_pack(results).manifests}
    found = {}
    for path in Path(results, "poisons").glob("*/manifest.json"):
        m = json.loads(path.read_text())
        found[m["poison_id"]] = m
    return found


def setting(manifest: dict | None) -> str:
    """ε and the crafting options that differ from the attack's defaults for the MNIST family."""
    if manifest is None:
        return "(manifest not found)"
    defaults = ATTACKS.get(manifest["attack"])("mnist").params
    changed = {k: v for k, v in manifest["params"].items() if defaults.get(k) != v}
    info = manifest.get("attack_info") or {}
    extra = f"; crafting stopped: {info['stopped']} after {info.get('iterations')} it." if "stopped" in info else ""
    return f"ε {manifest['eps']:.4g} {json.dumps(changed) if changed else 'defaults'}{extra}"


results = sys.argv[1] if len(sys.argv) > 1 else "results"
known = manifests(results)
groups = defaultdict(list)
for r in open_store(results).all():
    poison = r["config"].get("poison") or {}
    if poison.get("kind") != "untargeted" or len(poison.get("attacks", [])) != 1:
        continue
    (attack,) = poison["attacks"]
    recipe = r["config"]["recipe"]
    key = (recipe["name"], recipe["epochs"], poison["ratio"], r["config"]["defense"]["method"], attack,
           poison["poison_ids"][attack])
    groups[key].append(100 * r["metrics"]["test_acc"])
for key in sorted(groups):
    accs = groups[key]
    sd = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
    recipe, epochs, ratio, method, attack, pid = key
    print(f"{recipe} {epochs} ep | ρ {ratio} | {method} | {attack} {pid} ({setting(known.get(pid))}): n={len(accs)} "
          f"acc {statistics.mean(accs):.2f}{sd} [{', '.join(f'{a:.1f}' for a in accs)}]")
