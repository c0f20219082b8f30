"""A run is claimed before it trains (runner.run_lock), so two processes that start the same run never both train it:
the one that finds it held goes on with its other runs, then waits, and skips it when the holder's record appeared
or trains it (resuming) when the holder died without one. The other process is played by a thread holding the
same flock through its own file description."""

from __future__ import annotations

import fcntl
import json
import threading
import time

import pytest

from poisonbench.data import load_dataset
from poisonbench.experiment.defend import defend, run_config, run_lock
from poisonbench.experiment.records import RunStore, run_id
from poisonbench.experiment.spec import DefendSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def spec_and_ids(tiny_npz, tmp_path):
    spec = DefendSpec(dataset=str(tiny_npz), method="none", trials=2, results=str(tmp_path), recipe="quick",
                      recipe_overrides={"epochs": 1, "batch_size": 64}, compile="off")
    data = load_dataset(str(tiny_npz))
    configs = [run_config(spec, data, t) for t in (0, 1)]
    return spec, configs, [run_id(c) for c in configs]


def hold(store: RunStore, rid: str):
    lock = run_lock(store, rid)
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = open(lock, "a")
    fcntl.flock(holder, fcntl.LOCK_EX)
    return holder


def after_record(store: RunStore, rid: str, then, timeout: float = 120.0) -> threading.Thread:
    def wait_then():
        deadline = time.monotonic() + timeout
        while store.get(rid) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        then()

    thread = threading.Thread(target=wait_then)
    thread.start()
    return thread


def test_a_run_held_elsewhere_is_put_off_and_skipped_once_its_record_appears(tiny_npz, tmp_path):
    spec, configs, (rid0, rid1) = spec_and_ids(tiny_npz, tmp_path)
    store = RunStore(tmp_path)
    holder = hold(store, rid0)

    def finish_elsewhere():  # the other process writes trial 0's record, then lets go of its claim
        record = json.loads(store.path(rid1).read_text())
        store.put({**record, "run_id": rid0, "config": configs[0], "finished_by": "the other process"})
        holder.close()

    thread = after_record(store, rid1, finish_elsewhere)
    outcomes = defend(spec)
    thread.join()
    assert [o.status for o in outcomes] == ["skipped", "ran"]  # in trial order; trial 1 trained while 0 was held
    assert outcomes[0].record["finished_by"] == "the other process"
    assert outcomes[1].record["run_id"] == rid1


def test_a_run_whose_holder_died_without_a_record_is_trained_after_the_others(tiny_npz, tmp_path):
    spec, _, (rid0, rid1) = spec_and_ids(tiny_npz, tmp_path)
    store = RunStore(tmp_path)
    holder = hold(store, rid0)
    thread = after_record(store, rid1, holder.close)  # dies: the flock goes with it, no record left
    outcomes = defend(spec)
    thread.join()
    assert [o.status for o in outcomes] == ["ran", "ran"]
    written = [store.path(rid).stat().st_mtime_ns for rid in (rid0, rid1)]
    assert written[1] < written[0]  # trial 0 waited for its claim and trained last


def test_a_free_run_is_claimed_only_while_it_trains(tiny_npz, tmp_path):
    spec, _, (rid0, rid1) = spec_and_ids(tiny_npz, tmp_path)
    store = RunStore(tmp_path)
    defend(spec)
    for rid in (rid0, rid1):  # both claims were released: another process could take them at once
        with open(run_lock(store, rid), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_run_that_raises_leaves_a_failure_record_beside_the_results_never_a_result(tiny_npz, tmp_path,
                                                                                     monkeypatch):
    from poisonbench.experiment import defend as runner

    spec, configs, (rid0, rid1) = spec_and_ids(tiny_npz, tmp_path)
    spec.trials = 1
    store = RunStore(tmp_path)

    def boom(*args, **kwargs):
        raise RuntimeError("the GPU fell off")

    with monkeypatch.context() as m:
        m.setattr(runner, "execute", boom)
        with pytest.raises(RuntimeError, match="fell off"):
            defend(spec)
    failure = store.failure(rid0)
    assert failure["error"] == "RuntimeError: the GPU fell off" and "Traceback" in failure["traceback"]
    assert failure["config"] == configs[0] and failure["host"] and failure["failed_at"]
    assert store.get(rid0) is None and store.all() == []  # no result, nothing a report would average
    (outcome,) = defend(spec)  # the retry trains it and clears the failure
    assert outcome.status == "ran" and store.get(rid0) is not None and store.failure(rid0) is None
