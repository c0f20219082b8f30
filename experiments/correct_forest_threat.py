"""Issue 63 item 4: declare the threat of the forest differential's imported PoisonSets in its packed records.

Forest's brews (experiments/forest_differential.py) were imported before `poisons import --threat` existed, so their
PoisonSets declared no threat and the transfer runs on them read `config.threat: white`. They were brewed on our
attacker's models: BP and FC on the gray-box attacker's own extractor, GM on our surrogate (seeded apart from every
victim), i.e. `gray`. This script sets `params.threat = "gray"` in each imported manifest (which changes its poison
id: the threat is one of the PoisonSet's parameters), rewrites the ids in the records that trained on it, sets
`config.threat = "gray"` on the transfer runs, recomputes each run id from its config, and repacks the file the way
`records pack` does (the same bytes for the same records). Metrics, costs and environments are untouched.

    python experiments/correct_forest_threat.py experiments/records/mnist-5k-forest-differential.jsonl.xz

Prints the old → new poison ids and run ids (also rewritten in experiments/forest_differential_success_*.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from poisonbench.core.io import atomic_write_bytes
from poisonbench.experiment.packed_records import FORMAT, VERSION, _line, compressed, read_pack
from poisonbench.experiment.records import run_id
from poisonbench.poisons.spec import SPEC_FIELDS, CraftSpec

THREAT = "gray"


def main(path: Path) -> None:
    pack = read_pack(path)
    new_ids: dict[str, str] = {}
    manifests = []
    for _, manifest in pack.manifests:
        if manifest.get("imported_from") is not None and "threat" not in manifest["params"]:
            manifest = {**manifest, "params": {**manifest["params"], "threat": THREAT}}
            new = CraftSpec(**{name: manifest.get(name) for name in SPEC_FIELDS}).poison_id
            new_ids[manifest["poison_id"]] = new
            manifest["poison_id"] = new
        manifests.append(manifest)
    runs, new_runs = [], {}
    for _, record in pack.runs:
        config = json.loads(json.dumps(record["config"]))
        poison = config.get("poison") or {}
        for key in ("poison_id", "poison_set"):
            if poison.get(key) in new_ids:
                poison[key] = new_ids[poison[key]]
        if config.get("scenario") == "transfer" and poison.get("poison_id") in new_ids.values():
            config["threat"] = THREAT
        rid = run_id(config)
        new_runs[record["run_id"]] = rid
        runs.append({**record, "config": config, "run_id": rid})
    runs.sort(key=lambda r: f"{r['run_id']}.json")
    manifests.sort(key=lambda m: m["poison_id"])
    header = {"kind": "header", "format": FORMAT, "version": VERSION, "runs": len(runs),
              "poison_manifests": len(manifests)}
    raw = b"".join([_line(header), *(_line({"kind": "run", "record": r}) for r in runs),
                    *(_line({"kind": "poison_manifest", "manifest": m}) for m in manifests)])
    atomic_write_bytes(path, compressed(raw, path))
    renames = {**new_ids, **{old: new for old, new in new_runs.items() if old != new}}
    for evidence in sorted(Path(__file__).parent.glob("forest_differential_success_*.json")):
        text = evidence.read_text()
        for old, new in renames.items():
            text = text.replace(old, new)
        evidence.write_text(text)
    for old, new in renames.items():
        print(f"{old} -> {new}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
