"""What a grid will cost (poisonbench.sweeps.estimate, `sweep plan GRID --estimate`; docs/sweeps.md): the packaged
H200 figures give the GPU-hours recorded in experiments/gpu.md, hours follow the figures linearly, what is done is
not to do, a figure that is missing is named, and the command prints hours for a builtin grid and a TOML file.
The CPU's figures are injected (never timed here), so no test depends on the machine's speed."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from poisonbench.defenses import DEFENSES
from poisonbench.sweeps import Execution, load_grid
from poisonbench.sweeps import estimate as est

from .conftest import one_line_error, write_npz

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def h200() -> est.Figures:
    (figures,) = [f for f in est.packaged_figures() if f.kind == "NVIDIA H200"]
    return figures


@pytest.fixture
def cpu_figure(monkeypatch):
    """This CPU's images/s: the H200's / 100 for every workload, instead of timing the machine."""
    rates = {w: r / 100 for w, r in est.packaged_figures()[0].images_per_s.items()}
    monkeypatch.setattr(est, "measure_cpu", lambda *a, **k: dict(rates))
    return rates


def hours_of(e: dict, kind: str) -> dict:
    (d,) = [d for d in e["devices"] if d["device"] == kind]
    return d


# 1. the figures


def test_the_packaged_table_is_the_gpu_checks_lines_read_by_the_same_function(h200):
    lines = [json.loads(x) for x in (ROOT / "experiments/gpu/gpu_check2.jsonl").read_text().splitlines()]
    kind, entry = est.figures_from_lines(lines)
    assert kind == h200.kind
    assert (entry["images_per_s"], entry["ratio_to_none"], entry["crafting"]) == \
        (h200.images_per_s, h200.ratio_to_none, h200.crafting)
    for field in ("git_commit", "torch", "date", "file"):
        assert h200.source.get(field), field


def test_the_table_ships_in_the_wheel():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["poisonbench"]
    assert est.TABLE.relative_to(ROOT / "poisonbench").as_posix() in data


def test_write_table_replaces_one_kind_and_keeps_the_others(tmp_path, h200):
    path = tmp_path / "t.json"
    est.write_table(path, "A", {"images_per_s": {"x": 1}, "ratio_to_none": {}, "crafting": {}})
    est.write_table(path, "B", {"images_per_s": {"x": 2}, "ratio_to_none": {}, "crafting": {}})
    est.write_table(path, "A", {"images_per_s": {"x": 3}, "ratio_to_none": {}, "crafting": {}})
    assert {f.kind: f.images_per_s["x"] for f in est.packaged_figures(path)} == {"A": 3, "B": 2}


def test_timing_the_cpu_leaves_the_random_state_as_it_was():
    before = torch.random.get_rng_state()
    rates = est.measure_cpu({"cifar10": 2, "mnist": 2})  # tiny batches: the code path, not a figure
    assert torch.equal(before, torch.random.get_rng_state())
    assert set(rates) == set(est.WORKLOADS) and all(r > 0 for r in rates.values())


# 2. the hours


def test_table2_and_table3_on_the_h200_are_experiments_gpu_md(h200):
    t2 = hours_of(est.estimate(load_grid("table2"), [h200]), h200.kind)
    assert (t2["hours"], t2["hours_runs"], t2["hours_pretrained"]) == pytest.approx((36.2, 36.1, 0.10), abs=0.05)
    t3 = hours_of(est.estimate(load_grid("table3"), [h200]), h200.kind)
    assert (t3["hours"], t3["hours_runs"], t3["hours_pretrained"], t3["hours_crafting"]) == \
        pytest.approx((9.96, 8.83, 0.25, 0.88), abs=0.01)
    assert t2["missing"] == t3["missing"] == []


def test_grid_hours_by_hand():
    """Table II at 1,000 images/s everywhere, no overhead, no crafting: 150 MNIST runs of 30 epochs × 59,000 rows and
    150 CIFAR-10 runs of 80 × 49,000, and one surrogate of each."""
    rates = dict.fromkeys(est.WORKLOADS, 1000.0)
    flat = est.Figures("flat", rates, dict.fromkeys(DEFENSES.names(), 1.0), {})
    e = est.estimate(load_grid("table2"), [flat])
    g = hours_of(e, "flat")
    mnist, cifar = 30 * 59_000, 80 * 49_000
    assert g["hours_runs"] == pytest.approx(150 * (mnist + cifar) / 1000 / 3600, abs=0.001)
    assert g["hours_pretrained"] == pytest.approx((mnist + cifar) / 1000 / 3600, abs=0.001)
    assert g["hours_crafting"] == 0 and e["poison_sets"] == 0 and e["pretrained_models"] == 2
    hint = replace(flat, ratio_to_none={**flat.ratio_to_none, "hint": 2.0})  # HINT: 60 of the 300 runs
    twice = hours_of(est.estimate(load_grid("table2"), [hint]), "flat")
    assert twice["hours_runs"] - g["hours_runs"] == pytest.approx(30 * (mnist + cifar) / 1000 / 3600, abs=0.002)


@pytest.mark.parametrize("grid", ["table2", "table3"])
def test_halving_the_throughput_doubles_the_training_hours(h200, grid):
    slow = replace(h200, kind="slow", images_per_s={w: r / 2 for w, r in h200.images_per_s.items()})
    e = est.estimate(load_grid(grid), [h200, slow])
    fast, half = hours_of(e, h200.kind), hours_of(e, "slow")
    for part in ("hours_runs", "hours_pretrained"):
        assert half[part] == pytest.approx(2 * fast[part], abs=0.002)
    assert half["hours_crafting"] == fast["hours_crafting"]  # crafting goes by its own seconds per iteration


def test_a_done_run_is_not_to_do_and_its_shared_work_only_when_every_user_is_done(h200):
    grid = load_grid("table3")
    full = hours_of(est.estimate(grid, [h200]), h200.kind)
    assert full["hours_remaining"] == full["hours"]
    one = hours_of(est.estimate(grid, [h200], done={0}), h200.kind)
    assert 0 < full["remaining"]["runs"] - one["remaining"]["runs"] < full["hours_runs"] / 10
    assert one["remaining"]["pretrained"] == full["remaining"]["pretrained"]  # other runs still need the models
    assert one["hours"] == full["hours"]  # the total is the grid's, done or not
    everything = hours_of(est.estimate(grid, [h200], done=set(range(len(grid.runs)))), h200.kind)
    assert everything["hours_remaining"] == 0
    crafted = {("gm", "cifar10", run.trial) for run in grid.runs}
    gm_done = hours_of(est.estimate(grid, [h200], crafted=crafted), h200.kind)
    assert gm_done["remaining"]["crafting"] < full["remaining"]["crafting"]


def test_a_method_or_attack_without_a_figure_is_named_in_missing(h200):
    partial = replace(h200, ratio_to_none={k: v for k, v in h200.ratio_to_none.items() if k != "epic"},
                      crafting={k: v for k, v in h200.crafting.items() if k != "bp"})
    d = hours_of(est.estimate(load_grid("table3"), [partial]), h200.kind)
    assert "overhead epic" in d["missing"] and "crafting bp" in d["missing"]
    assert d["hours"] < hours_of(est.estimate(load_grid("table3"), [h200]), h200.kind)["hours"]


def test_a_dataset_outside_the_catalog_is_named_not_loaded(tmp_path, h200):
    grid = tmp_path / "npz.toml"
    grid.write_text(f'[[runs]]\ndataset = "{tmp_path / "absent.npz"}"\nmethod = "none"\n')
    d = hours_of(est.estimate(load_grid(str(grid)), [h200]), h200.kind)
    assert d["hours"] == 0 and any("absent.npz" in m for m in d["missing"])


# 3. the workspace


@pytest.mark.usefixtures("one_thread")
def test_the_runs_a_workspace_holds_are_done(cli, tmp_path, monkeypatch):
    npz = write_npz(tmp_path)
    grid = tmp_path / "g.toml"
    grid.write_text(f'[defaults]\ndataset = "{npz}"\nrecipe = "quick"\nepochs = 1\n\n[[runs]]\nmethod = "none"\n'
                    "trials = 2\n")
    results = tmp_path / "results"
    assert est.done_in_workspace(load_grid(str(grid)), Execution(results=str(results)))[:2] == (set(), set())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code, _, err = cli("sweep", "run", grid, "--workers", "1", "--results", results)
    assert code == 0, err
    done, crafted, where = est.done_in_workspace(load_grid(str(grid)), Execution(results=str(results)))
    assert (done, crafted) == ({0, 1}, set()) and str(results) in where


# 4. the command


def test_sweep_plan_estimate_prints_hours_for_table2(cli, cpu_figure, tmp_path):
    code, out, err = cli("sweep", "plan", "table2", "--estimate", "--results", tmp_path / "none")
    assert code == 0, err
    assert "NVIDIA H200" in out and "36.22" in out and est.CPU_KIND in out
    assert "excluded:" in out and "assumed:" in out and "untargeted mix" in out
    code, out, err = cli("sweep", "plan", "table2", "--estimate", "--results", tmp_path / "none", "--json")
    assert code == 0, err
    e = json.loads(out)
    h200, cpu = hours_of(e, "NVIDIA H200"), hours_of(e, est.CPU_KIND)
    assert e["grid"] == "table2" and e["runs"] == 300 and "nothing done" in e["workspace"]
    assert cpu["hours"] == pytest.approx(100 * h200["hours"], rel=1e-3)  # the CPU at 1/100 of the H200's images/s
    assert any("defense-overhead ratios: the NVIDIA H200's" in a for a in cpu["assumes"])
    assert not (tmp_path / "none").exists()  # an estimate writes nothing


def test_sweep_plan_estimate_takes_a_toml_grid(cli, cpu_figure, tmp_path):
    grid = tmp_path / "gm.toml"
    grid.write_text('[defaults]\ndataset = "cifar10"\nattack = "gm"\ntrials = 2\n\n[[runs]]\n'
                    'method = ["none", "hint"]\n')
    code, out, err = cli("sweep", "plan", grid, "--estimate", "--results", tmp_path / "r", "--json")
    assert code == 0, err
    e = json.loads(out)
    assert (e["runs"], e["poison_sets"], e["pretrained_models"]) == (4, 2, 1)
    assert hours_of(e, "NVIDIA H200")["hours_crafting"] > 0 and hours_of(e, "NVIDIA H200")["missing"] == []


def test_sweep_plan_estimate_refuses_bad_input_in_one_line(cli, cpu_figure, tmp_path):
    code, _, err = cli("sweep", "plan", "table2", "--estimate", "--print-commands")
    one_line_error(code, err, "--estimate", "--print-commands")
    code, _, err = cli("sweep", "plan", str(tmp_path / "absent.toml"), "--estimate")
    one_line_error(code, err, "absent.toml")
