"""Warn when a run is about to train on another craft of a PoisonSet than the workspace's records trained on.

A PoisonSet's id hashes its crafting inputs (attack, ε, parameters, surrogate, seed), not the code or the CPU that
crafted it: a re-craft on another CPU kind, torch version or code version keeps the id but rounds the floats
differently. The records name the tensors they trained on (`poison_tensors`, docs/metrics.md), and
`report --paired` pairs only runs on the same craft, so a run on a second craft is not lost, but it does not pair
with the runs of the first one: the user should know before the hours of training, not at report time
(experiments/baselines_cpu.md, "The ρ = 1 runs trained on two crafts").
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict

from ..core.errors import PoisonbenchError, PoisonbenchWarning
from .records import RunStore
from .run_inputs import craft_text, differing_crafts, record_crafts


class CraftIndex:
    """The crafts the records of a workspace trained on: poison id -> tensor sha256 -> the run ids."""

    def __init__(self, store: RunStore):
        self.runs: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for record in store.all():
            for pid, sha in record_crafts(record).items():
                self.runs[pid][sha].add(record["run_id"])

    def others(self, crafts: dict[str, str], rid: str) -> dict[str, Counter]:
        """For each PoisonSet in `crafts` ({poison id: sha256}), the other crafts of it that records other than
        run `rid`'s trained on, with their record counts; PoisonSets without such records are left out."""
        found = {}
        for pid, sha in crafts.items():
            other = Counter({s: len(runs - {rid}) for s, runs in self.runs.get(pid, {}).items() if s != sha})
            other = +other  # drop the crafts whose only record is `rid`'s own (a --force re-run replaces it)
            if other:
                found[pid] = other
        return found


def plan_crafts(plan) -> dict[str, str]:
    """{poison id: sha256} of the tensors a poison plan applied (after `plan.apply`)."""
    return {pid: plan.tensor_sha256[attack] for pid, attack in plan.crafts.items() if attack in plan.tensor_sha256}


def warn_other_crafts(index: CraftIndex, plan, rid: str, results) -> None:
    """One PoisonbenchWarning per PoisonSet of `plan` whose tensors differ from those some records trained on."""
    for pid, other in index.others(plan_crafts(plan), rid).items():
        attack = plan.crafts[pid]
        theirs = ", ".join(f"{sha[:8]}… ({n} run{'s' if n > 1 else ''})" for sha, n in other.most_common())
        warnings.warn(
            f"run {rid} trains on PoisonSet {pid} ({attack}) with tensors {plan.tensor_sha256[attack][:8]}…, but "
            f"records in {results} trained on another craft of it: {theirs}. A re-craft (another CPU kind, torch "
            "or code version) rounds differently: these runs will not pair with those (report --paired pairs one "
            "craft); to pair them, put back the PoisonSet's files that those runs used",
            PoisonbenchWarning, stacklevel=2)


def crafts_on_disk(results_root, poison_ids, cache: dict | None = None) -> dict[str, str]:
    """{poison id: tensor sha256} of those of `poison_ids` whose PoisonSet manifest is in the workspace (from the
    manifest alone; `cache` keeps what was read across calls)."""
    from ..poisons.store import has_manifest, read_manifest

    cache = {} if cache is None else cache
    found = {}
    for pid in poison_ids:
        if pid not in cache:
            try:
                cache[pid] = read_manifest(results_root, pid).get("tensor_sha256") if has_manifest(results_root, pid) \
                    else None
            except (PoisonbenchError, OSError, ValueError, AttributeError):  # none on disk, or unreadable
                cache[pid] = None
        if isinstance(cache[pid], str):
            found[pid] = cache[pid]
    return found


def clash_with_disk(record: dict, results_root, cache: dict | None = None) -> dict[str, tuple[str, str]]:
    """{poison id: (the record's craft, the one on disk)} for each PoisonSet the record trained on whose manifest in
    the workspace names other tensors: the record is then not of the poisons a re-run would train on."""
    crafts = record_crafts(record)
    return differing_crafts(crafts, crafts_on_disk(results_root, crafts, cache))


def clash_message(rid: str, clash: dict[str, tuple[str, str]], where) -> str:
    """One line: run `rid`'s record trained on other crafts than the PoisonSets in `where`, naming both."""
    parts = "; ".join(f"PoisonSet {pid} as craft {craft_text(pid, ours)} in the record, {craft_text(pid, disk)} on "
                      "disk" for pid, (ours, disk) in sorted(clash.items()))
    return (f"run {rid}: its record trained on another craft than the PoisonSets in {where} ({parts}); the record "
            "is not of these poisons (a re-craft: another machine, torch or code version). Put back the files of "
            "the record's craft, or pass --force to train on the one on disk and replace the record")
