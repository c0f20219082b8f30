"""`sweep status`: how far a sweep is, per table cell, and what it cost and will cost in device-hours.

Costs come from the records' own timings (`cost.seconds`: the run's wall time on its device, resumed parts
included) and the PoisonSets' manifests (`craft_seconds`). A missing run is estimated by the mean time of done runs
of the same cell, else of the same method, scenario, dataset and recipe, else of the same dataset and recipe; a run
with none of those has no estimate and is counted apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from statistics import mean

from ..experiment.records import RunStore
from .plan import Plan, Step


@dataclass
class CellStatus:
    label: str
    wanted: int = 0
    done: int = 0
    failed: int = 0
    running: int = 0
    seconds: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"cell": self.label, "wanted": self.wanted, "done": self.done, "failed": self.failed,
                "running": self.running, "hours": device_hours(sum(self.seconds))}


def cell_label(step: Step) -> str:
    return step.label.rsplit(" · trial ", 1)[0]


def estimate_keys(config: dict) -> list[tuple]:
    recipe = json.dumps(config.get("recipe"), sort_keys=True)
    method = (config.get("defense") or {}).get("method")
    return [(config.get("dataset"), recipe, method, config.get("scenario")), (config.get("dataset"), recipe)]


def sweep_status(plan: Plan) -> dict:
    store = RunStore(plan.execution.results)
    states = plan.states()
    cells: dict[str, CellStatus] = {}
    by_key: dict[tuple, list[float]] = {}
    devices: set[str] = set()
    failures = []
    for step in plan.runs:
        cell = cells.setdefault(cell_label(step), CellStatus(cell_label(step)))
        cell.wanted += 1
        state = states[step.index]
        if state == "done":
            record = store.get(step.key) or {}
            seconds = float((record.get("cost") or {}).get("seconds") or 0.0)
            cell.done += 1
            cell.seconds.append(seconds)
            devices.add(str((record.get("env") or {}).get("device", "?")).split(":")[0])
            for key in estimate_keys(step.config):
                by_key.setdefault(key, []).append(seconds)
        elif state == "failed":
            cell.failed += 1
            failures.append(failure_line(store, step))
        elif state == "running":
            cell.running += 1
    remaining, unknown = 0.0, 0
    for step in plan.runs:
        if states[step.index] == "done":
            continue
        cell = cells[cell_label(step)]
        guesses = [cell.seconds] + [by_key.get(k, []) for k in estimate_keys(step.config)]
        known = next((g for g in guesses if g), None)
        if known is None:
            unknown += 1
        else:
            remaining += mean(known)
    crafts = [s for s in plan.steps if s.kind == "prepare"]
    craft_seconds = sum(craft_time(store, s.key) for s in crafts if states[s.index] == "done")
    for step in crafts:
        if states[step.index] == "failed":
            failures.append(failure_line(store, step))
    spent = sum(sum(c.seconds) for c in cells.values()) + craft_seconds
    return {
        "grid": plan.grid.name,
        "results": str(store.root),
        "runs": {"wanted": len(plan.runs), "done": sum(c.done for c in cells.values()),
                 "failed": sum(c.failed for c in cells.values()), "running": sum(c.running for c in cells.values())},
        "poison_sets": {"wanted": len(crafts), "done": sum(states[s.index] == "done" for s in crafts),
                        "failed": sum(states[s.index] == "failed" for s in crafts)},
        "cells": [c.as_dict() for c in cells.values()],
        "failures": failures,
        "devices": sorted(devices),
        "hours_spent": device_hours(spent),
        "hours_remaining_estimate": device_hours(remaining),
        "runs_without_estimate": unknown,
    }


def device_hours(seconds: float) -> float:
    """Seconds as device-hours, kept to 3.6 ms: four decimals (0.36 s) rounded a quick CPU run to zero hours."""
    return round(seconds / 3600, 6)


def craft_time(store: RunStore, poison_id: str) -> float:
    from ..poisons import read_manifest

    try:
        return float(read_manifest(store.root, poison_id).get("craft_seconds") or 0.0)
    except Exception:  # noqa: BLE001 (an unreadable manifest costs nothing here; `poisons verify` reports it)
        return 0.0


def failure_line(store: RunStore, step: Step) -> dict:
    """A failed step: its failure record's error, host and time, the record's path and its newest log (a sweep's
    step process writes one per attempt, `logs/<key>.<pid>@<host>.log`; None if it never ran in a sweep)."""
    failure = store.failure(step.failure_key) or {}
    return {"step": step.index, "label": step.label, "error": failure.get("error", "?"),
            "host": failure.get("host"), "failed_at": failure.get("failed_at"),
            "record": str(store.failure_path(step.failure_key)), "log": newest_log(store, step)}


def newest_log(store: RunStore, step: Step) -> str | None:
    logs = []
    for path in (store.root / "logs").glob(f"{step.failure_key}.*.log"):
        try:
            logs.append((path.lstat().st_mtime_ns, str(path)))
        except OSError:
            continue
    return max(logs)[1] if logs else None
