"""What a run trained on, named by content: the record's `inputs` (docs/metrics.md, "Run records"; the identity rule:
docs/engine.md, "One run id, one craft").

A run id hashes the run's configuration, which names its PoisonSets by `poison_id`: the hash of their crafting
*inputs*. Two crafts of one spec (another machine, torch or code version) share that id and differ in their floats,
so the id alone does not say what a model trained on. `inputs` does, from the record alone:

- `dataset`: name and split fingerprint;
- `poisons`: per PoisonSet its attack, poison id, the sha256 of the tensors trained on, the model it was crafted on
  (`crafted_on`: kind, id, weights sha256; None for imported poisons, made elsewhere), the threat it declares
  (`white` | `gray` | `unknown`, where one applies: transfer crafts and imported targeted poisons), and the code that
  crafted it;
- `victim`: the model the run trained: a frozen pre-trained extractor (kind, id, weights sha256) with a new head, or
  a network from scratch (its architecture, seed and the sha256 of its initial weights).

A gray-box transfer run names two different extractors (the attacker's in `poisons[*].crafted_on`, the victim's in
`victim`); a white-box one names the same one twice.
"""

from __future__ import annotations

from pathlib import Path

from ..poisons.interchange.exchange import DEFAULT_IMPORT_THREAT


def model_ref(info: dict | None, kind: str | None = None) -> dict | None:
    """A cached model's reference (kind, id, weights sha256) from its load info (engine.model_cache), or None."""
    if not isinstance(info, dict) or not info.get("id"):
        return None
    kind = kind or info.get("kind") or (Path(str(info.get("path") or "")).parent.name or None)
    return {"kind": kind, "id": info["id"], "weights_sha256": info.get("weights_sha256")}


def poison_threat(manifest: dict) -> str | None:
    """The threat a PoisonSet was made under: its `threat` parameter (transfer crafts, declared imports), `unknown`
    for an import that declared none; None where the notion does not apply (untargeted, scratch crafts)."""
    params = manifest.get("params") or {}
    if params.get("threat") is not None:
        return str(params["threat"])
    return DEFAULT_IMPORT_THREAT if manifest.get("imported_from") is not None and manifest.get("target") else None


def schedule_label(attack: str, manifest: dict) -> str | None:
    """The schedule a PoisonSet was crafted on (`Attack.schedule_label`: REM's `official`, `budget`, or either with
    the options given other values, `official+train_steps=2590`); None where its attack has none. A PoisonSet of
    an attack or dataset no longer registered keeps its `schedule` parameter as it is."""
    from ..attacks import ATTACKS
    from ..data.catalog import DATASETS

    params = manifest.get("params") or {}
    if params.get("schedule") is None:
        return None
    if attack not in ATTACKS:
        return str(params["schedule"])
    dataset = manifest.get("dataset")
    family = DATASETS.get(dataset).family if isinstance(dataset, str) and dataset in DATASETS else None
    return ATTACKS.get(attack).schedule_label(params, family)


def adaptation_label(attack: str, manifest: dict) -> str | None:
    """How a PoisonSet departs from its attack's official procedure (`Attack.adaptations`, '+'-joined:
    `class_batch=41`, `margin=4`, `grad_clip=5`; "" for a craft that follows it); None for an attack that has no
    such departures or is no longer registered (docs/fidelity.md, "Departures from the official procedures")."""
    from ..attacks import ATTACKS
    from ..data.catalog import DATASETS

    if attack not in ATTACKS:
        return None
    dataset = manifest.get("dataset")
    family = DATASETS.get(dataset).family if isinstance(dataset, str) and dataset in DATASETS else None
    info = manifest.get("attack_info") if isinstance(manifest.get("attack_info"), dict) else {}
    labels = ATTACKS.get(attack).adaptations(manifest.get("params") or {}, family,
                                              {"rows": manifest.get("count"), **info})
    return None if labels is None else "+".join(labels)


def objective_label(attack: str, manifest: dict) -> str | None:
    """The objective a PoisonSet was crafted with where its attack names two (`Attack.objective`: FC's
    `mean-feature` or `per-poison`); None for other attacks and attacks no longer registered."""
    from ..attacks import ATTACKS

    if attack not in ATTACKS:
        return None
    return ATTACKS.get(attack).objective(manifest.get("params") or {})


def poison_entry(attack: str, manifest: dict) -> dict:
    """One PoisonSet of a run, by content (module docstring); with its `schedule` where its attack has one (REM:
    `official` or `budget`, cut or altered ones named so) and its `adapted` departures from the official procedure
    where its attack can have some ("" when none), so that a table can label the runs not on the official
    procedure."""
    env = manifest.get("env") or {}
    imported = manifest.get("imported_from")
    schedule = schedule_label(attack, manifest)
    adapted = adaptation_label(attack, manifest)
    objective = objective_label(attack, manifest)
    return ({"schedule": schedule} if schedule is not None else {}) | (
        {"adapted": adapted} if adapted is not None else {}) | (
        {"objective": objective} if objective is not None else {}) | {
        "attack": attack,
        "poison_id": manifest.get("poison_id"),
        "tensors_sha256": manifest.get("tensor_sha256"),
        "threat": poison_threat(manifest),
        "crafted_on": model_ref(manifest.get("surrogate_info")),
        "imported_from": imported.get("format") if isinstance(imported, dict) else None,
        "code": env.get("code"),
        "git_commit": env.get("git_commit"),
    }


def run_inputs(config: dict, plan, victim: dict) -> dict:
    """The record's `inputs` for a run of `config` that trained on `plan` (None: clean) with model `victim`
    (`Scenario.victim_ref`)."""
    manifests = getattr(plan, "manifests", {}) if plan is not None else {}
    return {
        "dataset": {"name": config["dataset"], "fingerprint": config.get("dataset_fingerprint")},
        "poisons": [poison_entry(attack, manifests[attack]) for attack in sorted(manifests)],
        "victim": victim,
    }


def record_crafts(record: dict) -> dict[str, str]:
    """{poison id: sha256 of its tensors} of the PoisonSets a record trained on (empty when it names none): from
    `inputs.poisons`, else (records before `inputs`) from `config.poison` and `poison_tensors`."""
    inputs = record.get("inputs")
    if isinstance(inputs, dict) and isinstance(inputs.get("poisons"), list):
        return {p["poison_id"]: p["tensors_sha256"] for p in inputs["poisons"]
                if isinstance(p, dict) and isinstance(p.get("poison_id"), str)
                and isinstance(p.get("tensors_sha256"), str)}
    poison, tensors = (record.get("config") or {}).get("poison"), record.get("poison_tensors")
    if not isinstance(poison, dict) or not isinstance(tensors, dict):
        return {}
    if isinstance(poison.get("poison_ids"), dict):  # the untargeted mix: one PoisonSet per attack
        ids = poison["poison_ids"]
    elif isinstance(poison.get("poison_id"), str) and isinstance(poison.get("attack"), str):  # targeted: one
        ids = {poison["attack"]: poison["poison_id"]}
    else:
        return {}
    return {pid: tensors[attack] for attack, pid in ids.items() if isinstance(tensors.get(attack), str)}


def poison_ids_of(record: dict) -> set[str]:
    """The PoisonSets a run trained on, as its config names them: the untargeted mix's `poison_ids` (one per
    attack), or the one `poison_id` of a targeted or `--poison-set` run; none for a clean run."""
    poison = (record.get("config") or {}).get("poison")
    if not isinstance(poison, dict):
        return set()
    ids = set(poison["poison_ids"].values()) if isinstance(poison.get("poison_ids"), dict) else set()
    return ids | ({poison["poison_id"]} if isinstance(poison.get("poison_id"), str) else set())


UNKNOWN_CRAFT = "unknown"  # a record from before `poison_tensors` names its PoisonSets, not their tensors


def record_crafts_or_unknown(record: dict) -> dict[str, str]:
    """{poison id: tensor sha256, or `UNKNOWN_CRAFT`} for every PoisonSet the record's config names: a record that
    does not say which craft it trained on cannot be shown to share one with a record that does."""
    crafts = record_crafts(record)
    return {pid: crafts.get(pid, UNKNOWN_CRAFT) for pid in sorted(poison_ids_of(record) | set(crafts))}


def craft_text(pid: str, sha: str) -> str:
    """A craft's short name: poison id and tensor sha256, 8 characters each."""
    return f"{pid[:8]}@{sha[:8]}"


def crafts_text(crafts: dict[str, str]) -> str:
    return ", ".join(craft_text(pid, sha) for pid, sha in sorted(crafts.items())) or "no poisons"


def differing_crafts(ours: dict[str, str], theirs: dict[str, str]) -> dict[str, tuple[str, str]]:
    """{poison id: (our sha, their sha)} for the PoisonSets both name with different tensors."""
    return {pid: (sha, theirs[pid]) for pid, sha in ours.items() if pid in theirs and theirs[pid] != sha}
