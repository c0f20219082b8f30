"""One run id, one craft (issue 63; docs/engine.md, "One run id, one craft"): a workspace never silently holds,
replaces or merges two records of one run id trained on different tensors of the same PoisonSets, and a table says
which crafts it averaged (`report --strict` exits 1 when they differ).

A craft is named `<poison id>@<tensor sha256>` (8 characters each); a record from before `poison_tensors` names its
PoisonSets but not their tensors: its craft is `unknown`, never taken for a named one.
"""

from __future__ import annotations

import json
import warnings

import pytest

from poisonbench.core.errors import PoisonbenchError, PoisonbenchWarning
from poisonbench.core.hashing import short_hash
from poisonbench.experiment.packed_records import pack
from poisonbench.experiment.records import RunStore
from tests.conftest import files_under, one_line_error
from tests.report_records import MIX, hint_params, make_record

IDS = {attack: f"{i:x}" * 16 for i, attack in enumerate(MIX, start=10)}  # one poison id per attack of the mix


def craft(tag: str) -> dict[str, str]:
    """The tensor hashes of one craft of the mix's four PoisonSets."""
    return {attack: short_hash([tag, attack]) * 4 for attack in MIX}


def mix_record(trial: int, tensors: dict | None, method: str = "none", rho: float = 1.0, acc: float = 0.5,
               attacks: list[str] = MIX) -> dict:
    """A record of the untargeted mix `attacks` at ρ on the PoisonSets `IDS`, trained on the craft `tensors` (None: a
    record from before `poison_tensors`)."""
    record = make_record(method=method, params=hint_params() if method == "hint" else None, rho=rho, trial=trial,
                         acc=acc)
    record["config"]["poison"].update(attacks=list(attacks), poison_ids={a: IDS[a] for a in attacks})
    record["run_id"] = short_hash(record["config"])
    record["poison_tensors"] = {a: tensors[a] for a in attacks} if tensors else None
    return record


def workspace(root, records) -> RunStore:
    store = RunStore(root)
    for record in records:
        store.put(record)
    return store


# ----------------------------------------------------------------------------------------------- the store

def test_put_refuses_a_record_of_the_same_run_on_another_craft_and_replace_warns(tmp_path):
    store = workspace(tmp_path / "res", [mix_record(0, craft("a"))])
    before = store.path(mix_record(0, craft("a"))["run_id"]).read_bytes()
    other = mix_record(0, craft("b"), acc=0.6)
    with pytest.raises(PoisonbenchError) as refused:
        store.put(other)
    text = str(refused.value)
    pgd = IDS["pgd"]
    assert f"{pgd[:8]}@{craft('a')['pgd'][:8]}" in text and f"{pgd[:8]}@{craft('b')['pgd'][:8]}" in text
    assert "one run id, one craft" in text and store.path(other["run_id"]).read_bytes() == before
    with pytest.warns(PoisonbenchWarning, match="replacing it"):
        store.put(other, replace=True)
    assert store.get(other["run_id"])["metrics"]["test_acc"] == 0.6
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same craft again: no warning, no refusal
        store.put(mix_record(0, craft("b"), acc=0.7))


# ----------------------------------------------------------------------------------------------- unpack

@pytest.fixture
def two_packs(tmp_path):
    """Two packed files of the same five runs (trials 0–4, none and HINT at ρ = 1), one per craft, and a third
    pack holding trials 5–6 on craft b: what two machines running one grid give."""
    out = {}
    for name, tag, trials in (("a", "a", range(5)), ("b", "b", range(5)), ("b-more", "b", range(5, 7))):
        records = [mix_record(t, craft(tag), method=m) for t in trials for m in ("none", "hint")]
        workspace(tmp_path / f"ws-{name}", records)
        out[name] = tmp_path / f"{name}.jsonl.gz"
        pack(tmp_path / f"ws-{name}", out[name])
    return out


def test_unpack_refuses_another_craft_of_a_run_naming_both_and_writes_nothing(cli, tmp_path, two_packs):
    target = tmp_path / "res"
    assert cli("records", "unpack", two_packs["a"], target)[0] == 0
    before = {p: p.read_bytes() for p in files_under(target)}
    code, _, err = cli("records", "unpack", two_packs["b"], target)
    one_line_error(code, err, "would overwrite 10 file(s)", f"{IDS['dap'][:8]}@{craft('a')['dap'][:8]}",
                   f"{IDS['dap'][:8]}@{craft('b')['dap'][:8]}", "nothing was written")
    assert {p: p.read_bytes() for p in files_under(target)} == before


def test_unpack_skip_conflicts_writes_only_the_rest_and_names_each_refused_record(cli, tmp_path, two_packs):
    target = tmp_path / "res"
    assert cli("records", "unpack", two_packs["a"], target)[0] == 0
    before = {p: p.read_bytes() for p in files_under(target)}
    code, out, err = cli("records", "unpack", two_packs["b"], target, "--skip-conflicts", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["written"] == 0 and len(summary["refused"]) == 10
    assert err.count("not unpacked: run ") == 10 and {p: p.read_bytes() for p in files_under(target)} == before
    code, out, _ = cli("records", "unpack", two_packs["b-more"], target, "--skip-conflicts", "--json")
    assert code == 0 and json.loads(out)["written"] == 4 and json.loads(out)["refused"] == []


def test_a_record_without_its_craft_conflicts_with_one_that_names_it(cli, tmp_path):
    """A record from before `poison_tensors` and one that names its craft: not shown to be the same poisons."""
    old, new = tmp_path / "old", tmp_path / "new"
    workspace(old, [mix_record(0, None)])
    workspace(new, [mix_record(0, craft("a"), acc=0.6)])
    pack(new, tmp_path / "new.jsonl.gz")
    code, _, err = cli("records", "unpack", tmp_path / "new.jsonl.gz", old)
    one_line_error(code, err, f"{IDS['pgd'][:8]}@unknown", f"{IDS['pgd'][:8]}@{craft('a')['pgd'][:8]}")


# ----------------------------------------------------------------------------------------------- report --strict

def report(cli, results, *args):
    return cli("report", "table", *args, "--results", results, "--format", "md", "--strict")


def test_a_table_of_one_craft_passes_strict_and_its_caption_names_the_craft_and_code(cli, tmp_path, two_packs):
    code, out, err = report(cli, two_packs["a"], "2")
    assert code == 0, err
    caption = out.splitlines()[0]
    assert f"{IDS['pgd'][:8]}@{craft('a')['pgd'][:8]} (10)" in caption and "code: unknown (10)" in caption
    assert "crafts among the runs shown" not in out and "mixed crafts" not in out


def test_strict_fails_and_names_a_cell_whose_trials_trained_on_two_crafts(cli, tmp_path, two_packs):
    target = tmp_path / "res"
    for name in ("a", "b-more"):  # trials 0–4 on craft a, 5–6 on craft b: each cell pools both
        assert cli("records", "unpack", two_packs[name], target)[0] == 0
    code, out, err = report(cli, target, "2", "--trials", "7")
    assert code == 1
    a, b = f"{IDS['pgd'][:8]}@{craft('a')['pgd'][:8]}", f"{IDS['pgd'][:8]}@{craft('b')['pgd'][:8]}"
    cells = [line for line in out.splitlines() if line.startswith("- mixed crafts in the cell")]
    assert len(cells) == 2 and any("W/o Defense · ρ = 1" in c for c in cells) and any("HINT" in c for c in cells)
    assert all(f"{a} (5 runs)" in c and f"{b} (2 runs)" in c for c in cells)
    assert "--strict" in err and "exit 1" in err
    assert report(cli, target, "2", "--trials", "7")[1] == out  # the output is whole before the exit
    code, out, _ = cli("report", "table", "2", "--results", target, "--format", "md")
    assert code == 0 and len([line for line in out.splitlines() if "mixed crafts in the cell" in line]) == 2


def test_strict_fails_when_cells_of_one_table_used_different_crafts(cli, tmp_path):
    """W/o Defense on craft a, HINT on craft b: each cell is one craft, but the row compares two crafts."""
    root = tmp_path / "res"
    workspace(root, [mix_record(t, craft("a"), method="none") for t in range(5)]
              + [mix_record(t, craft("b"), method="hint") for t in range(5)])
    code, out, err = report(cli, root, "2")
    assert code == 1 and "mixed crafts in the cell" not in out
    assert f"PoisonSet {IDS['pgd'][:8]} in 2 crafts among the runs shown" in out and "exit 1" in err


def test_strict_counts_a_run_that_names_no_craft_as_another_craft(cli, tmp_path):
    root = tmp_path / "res"
    workspace(root, [mix_record(t, craft("a")) for t in range(3)] + [mix_record(t, None) for t in range(3, 5)])
    code, out, _ = report(cli, root, "2")
    assert code == 1 and f"{IDS['pgd'][:8]}@unknown (2 runs)" in out


def test_strict_applies_to_the_matrix_and_the_figures(cli, tmp_path):
    root = tmp_path / "res"
    for attacks in (MIX, ["pgd"]):  # the mix for the figure, PGD alone for the matrix's column
        workspace(root, [mix_record(t, craft("a"), method=m, attacks=attacks) for t in range(3)
                         for m in ("none", "hint")]
                  + [mix_record(t, craft("b"), method=m, attacks=attacks) for t in range(3, 5)
                     for m in ("none", "hint")])
    code, _, err = cli("report", "table", "matrix", "--results", root, "--strict", "--out", tmp_path / "fig")
    assert code == 1 and "exit 1" in err
    code, _, err = cli("report", "figure", "rho", "--results", root, "--strict", "--out", tmp_path / "fig")
    assert code == 1 and "mixed crafts in the cell" in err
    code, _, err = cli("report", "figure", "rho", "--results", root, "--out", tmp_path / "fig")
    assert code == 0 and "Figure rho: Crafts: 8 of 4 PoisonSets (4 PoisonSet(s) in more than one craft)" in err


# ----------------------------------------------------------------------------------------------- defend and sweeps

@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A tiny grid (durp alone at ρ = 0.5, none, 1 epoch) run by `python -m poisonbench sweep run` with its output
    piped to a file, as a user's `> log.txt 2>&1` does."""
    import os
    import subprocess
    import sys

    from tests.conftest import dies_with_the_test, write_npz

    root = tmp_path_factory.mktemp("swept")
    npz = write_npz(root, n=200)
    grid = root / "g.toml"
    grid.write_text(f'[defaults]\ndataset = "{npz}"\nrecipe = "quick"\nepochs = 1\nattacks = [["durp"]]\n'
                    'method = "none"\n\n[[runs]]\npoison_ratio = [0, 0.5]\n')
    log = root / "log.txt"
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "poisonbench", "sweep", "run", str(grid), "--workers", "1",
                               "--results", str(root / "res"), "--compile", "off", "--no-report"], stdout=out,
                              stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
                              preexec_fn=dies_with_the_test())
    return {"root": root, "grid": grid, "npz": npz, "log": log.read_text(), "code": done.returncode,
            "results": root / "res"}


def test_a_piped_sweep_logs_a_line_per_finished_step(swept):
    assert swept["code"] == 0, swept["log"]
    lines = swept["log"].splitlines()
    assert any(line.startswith("sweep g: 3 step(s) to run") for line in lines), swept["log"]
    steps = [line for line in lines if line.startswith(("[1/3]", "[2/3]", "[3/3]"))]
    assert len(steps) == 3, swept["log"]
    assert any("crafted: craft durp PoisonSet" in s for s in steps)
    assert sum("ran: " in s and "test accuracy" in s for s in steps) == 2


def test_a_from_scratch_record_names_its_poisons_and_its_initial_weights(swept):
    from poisonbench.data import load_dataset
    from poisonbench.engine.model_cache import weights_sha256
    from poisonbench.engine.models import build_model

    (record,) = [r for r in RunStore(swept["results"]).all() if r["config"]["poison"]]
    (durp,) = record["inputs"]["poisons"]
    assert durp["attack"] == "durp" and durp["tensors_sha256"] == record["poison_tensors"]["durp"]
    assert durp["crafted_on"] is None and durp["threat"] is None  # DURP is model-free: crafted on no model
    assert record["inputs"]["dataset"] == {"name": record["config"]["dataset"],
                                           "fingerprint": record["config"]["dataset_fingerprint"]}
    victim = record["inputs"]["victim"]
    assert victim["kind"] == "from-scratch" and victim["seed"] == record["config"]["seed"]
    data = load_dataset(str(swept["npz"]))
    model = build_model(record["config"]["model"], data, seed=victim["seed"])
    assert victim["init_sha256"] == weights_sha256(model.state_dict())
    other = build_model(record["config"]["model"], data, seed=victim["seed"] + 1)
    assert weights_sha256(other.state_dict()) != victim["init_sha256"]


def test_defend_and_sweeps_refuse_a_record_of_another_craft_than_the_poisons_on_disk(cli, swept, tmp_path):
    """A re-craft (another machine) leaves a record whose tensors are not the PoisonSet's on disk: `defend` does not
    skip it as done, it refuses in one line naming both crafts (a failure record for `sweep status`); the sweep's
    plan counts it as not done; `--force` trains on the craft on disk and replaces the record."""
    import shutil

    from poisonbench.sweeps import Execution, load_grid, make_plan

    results = tmp_path / "res"
    shutil.copytree(swept["results"], results)
    store = RunStore(results)
    (record,) = [r for r in store.all() if r["config"]["poison"]]
    rid, disk = record["run_id"], record["poison_tensors"]["durp"]
    other = "f" * 64
    record["poison_tensors"]["durp"] = other
    record["inputs"]["poisons"][0]["tensors_sha256"] = other
    store.path(rid).write_text(json.dumps(record))
    plan = make_plan(load_grid(str(swept["grid"])), Execution(results=str(results)))
    (step,) = [s for s in plan.runs if s.key == rid]
    assert plan.state(step) == "missing" and sum(plan.state(s) == "done" for s in plan.runs) == 1
    args = ["defend", "--dataset", swept["npz"], "--recipe", "quick", "--epochs", "1", "--attacks", "durp",
            "--poison-ratio", "0.5", "--compile", "off", "--results", results]
    code, _, err = cli(*args)
    pid = record["config"]["poison"]["poison_ids"]["durp"]
    one_line_error(code, err, rid, f"{pid[:8]}@{other[:8]}", f"{pid[:8]}@{disk[:8]}", "--force")
    assert json.loads(store.path(rid).read_text())["poison_tensors"]["durp"] == other  # not touched
    assert plan.state(step) == "failed" and "another craft" in store.failure(rid)["error"]
    code, _, err = cli(*args, "--force")
    assert code == 0 and "replacing it (--force)" in err, err
    assert store.get(rid)["poison_tensors"]["durp"] == disk and plan.state(step) == "done"
    assert store.failure(rid) is None
