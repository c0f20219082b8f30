"""The contracts of `sweeps/estimate.py`'s work and workspace, stated whole (issue 82, the mutation run of
2026-11-29, commit a8ebcac: 53 survivors in `grid_work`, 32 in `done_in_workspace`, and `measure_cpu` reached only
by a test of 12 s): every item a grid's runs need, by hand from `grid_work`'s docstring for each branch (the
untargeted mix, targeted transfer gray- and white-box, targeted scratch, a stamped backdoor, Label-Consistent's
surrogate, Sleeper Agent's retrainings, a dataset outside the catalog) with the options a run may set (recipe,
epochs, budget, scenario, threat, method); which runs and PoisonSets a workspace has done and the line that says
so; and what one timed step of `measure_cpu` measures (a fake clock and a tiny model: no machine's speed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from poisonbench.core.errors import PoisonbenchError
from poisonbench.data.catalog import CIFAR_MEAN_STD, MNIST_MEAN_STD
from poisonbench.sweeps import Execution, load_grid
from poisonbench.sweeps import estimate as est

# the catalog's training-split rows and the recipes' epochs the hand computations use (checked against the
# catalog first, so that a catalog change fails here by name, not as a wrong total)
MNIST, MNIST5K, CIFAR = 59_000, 3_900, 49_000
PAPER_MNIST, QUICK_MNIST, FOREST, PAPER_CIFAR = 30, 10, 40, 80


def test_the_hand_computations_constants_are_the_catalogs():
    from poisonbench.data import DATASETS
    from poisonbench.engine.pretrained import TRANSFER_FRACTION
    from poisonbench.engine.recipes import resolve_recipe

    assert [DATASETS.get(n).split_sizes[0] for n in ("mnist", "fashion-mnist", "mnist-5k", "cifar10")] == \
        [MNIST, MNIST, MNIST5K, CIFAR]
    assert [resolve_recipe(f, r).epochs for f, r in (("mnist", "paper"), ("mnist", "quick"), ("mnist", "forest"),
                                                     ("cifar10", "paper"))] == [PAPER_MNIST, QUICK_MNIST, FOREST,
                                                                                 PAPER_CIFAR]
    assert TRANSFER_FRACTION == 0.1


GRID = """\
[[runs]]  # 0: the untargeted mix on MNIST: the paper recipe's surrogate, the paper recipe
dataset = "mnist"
method = "hint"

[[runs]]  # 1: the mix again at the quick recipe: the same surrogate (the surrogate's recipe is its own)
dataset = "mnist"
recipe = "quick"

[[runs]]  # 2: FC, transfer, gray-box by default: the victim's and the attacker's extractors
dataset = "fashion-mnist"
attack = "fc"

[[runs]]  # 3: FC white-box at 3 epochs and twice the budget: the victim's extractor only
dataset = "mnist"
attack = "fc"
threat = "white"
epochs = 3
budget = 0.02
method = "knn"

[[runs]]  # 4: GM from scratch: a surrogate at the victim's recipe (forest's)
dataset = "mnist"
attack = "gm"
method = "friends"

[[runs]]  # 5: GM in the transfer scenario: gray-box (GM has no threat of its own); shares 3's victim extractor
dataset = "mnist"
attack = "gm"
scenario = "transfer"

[[runs]]  # 6: Blend, a stamped trigger: no crafting, the paper recipe
dataset = "cifar10"
attack = "blend"

[[runs]]  # 7: Label-Consistent: the untargeted surrogate, its PGD steps crafted
dataset = "mnist-5k"
attack = "lc"

[[runs]]  # 8: Sleeper Agent: a surrogate at its surrogate_recipe, retrained at iterations 50, 100, 150, 200
dataset = "mnist-5k"
attack = "sleeper-agent"

[[runs]]  # 9: an .npz: rows unknown until loaded, named, and the runs after it still counted
dataset = "/nowhere/absent.npz"

[[runs]]  # 10: BadNets, stamped (the excluded line lists both stamped attacks, sorted)
dataset = "cifar10"
attack = "badnets"
"""


def _items(work: est.Work) -> list[tuple]:
    return [(i.part, i.key, i.workload, i.images, i.method, i.attack, i.iteration_poisons, sorted(i.users))
            for i in work.items]


def test_grid_work_is_every_item_of_every_branch_by_hand(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(GRID)
    grid = load_grid(str(path))
    assert [dict(r.options).get("dataset") for r in grid.runs][:3] == ["mnist", "mnist", "fashion-mnist"]
    work = est.grid_work(grid)
    transfer = round(0.1 * MNIST)  # 5,900 transfer rows; the extractors train on the other 53,100
    expected = [
        ("pretrained", ("surrogate", "mnist", "paper", PAPER_MNIST), "mnist-scratch", PAPER_MNIST * MNIST, "none", "",
         0.0, [0, 1]),
        ("runs", ("run", 0), "mnist-scratch", PAPER_MNIST * MNIST, "hint", "", 0.0, [0]),
        ("runs", ("run", 1), "mnist-scratch", QUICK_MNIST * MNIST, "none", "", 0.0, [1]),
        ("pretrained", ("extractor", "victim", "fashion-mnist"), "mnist-scratch", FOREST * (MNIST - transfer), "none",
         "", 0.0, [2]),
        ("pretrained", ("extractor", "attacker", "fashion-mnist"), "mnist-scratch", FOREST * (MNIST - transfer),
         "none", "", 0.0, [2]),
        ("crafting", ("fc", "fashion-mnist", 0), "", 0.0, "none", "fc", 8 * 250 * 59, [2]),  # ⌊0.01 · 5,900⌋
        ("runs", ("run", 2), "mnist-transfer", FOREST * transfer, "none", "", 0.0, [2]),
        ("pretrained", ("extractor", "victim", "mnist"), "mnist-scratch", 3 * (MNIST - transfer), "none", "", 0.0,
         [3, 5]),
        ("crafting", ("fc", "mnist", 0), "", 0.0, "none", "fc", 8 * 250 * 118, [3]),  # ⌊0.02 · 5,900⌋
        ("runs", ("run", 3), "mnist-transfer", 3 * transfer, "knn", "", 0.0, [3]),
        ("pretrained", ("surrogate", "mnist", "forest", FOREST), "mnist-scratch", FOREST * MNIST, "none", "", 0.0,
         [4]),
        ("crafting", ("gm", "mnist", 0), "", 0.0, "none", "gm", 8 * 250 * 590, [4, 5]),  # the first user's size
        ("runs", ("run", 4), "mnist-scratch", FOREST * MNIST, "friends", "", 0.0, [4]),
        ("pretrained", ("extractor", "attacker", "mnist"), "mnist-scratch", FOREST * (MNIST - transfer), "none", "",
         0.0, [5]),
        ("runs", ("run", 5), "mnist-transfer", FOREST * transfer, "none", "", 0.0, [5]),
        ("runs", ("run", 6), "cifar10-scratch", PAPER_CIFAR * CIFAR, "none", "", 0.0, [6]),
        ("pretrained", ("surrogate", "mnist-5k", "paper", PAPER_MNIST), "mnist-scratch", PAPER_MNIST * MNIST5K,
         "none", "", 0.0, [7]),
        ("crafting", ("lc", "mnist-5k", 0), "", 0.0, "none", "lc", 1 * 40 * 195, [7]),  # ⌊0.05 · 3,900⌋
        ("runs", ("run", 7), "mnist-scratch", PAPER_MNIST * MNIST5K, "none", "", 0.0, [7]),
        ("pretrained", ("surrogate", "mnist-5k", "forest", FOREST), "mnist-scratch", FOREST * MNIST5K, "none", "", 0.0,
         [8]),
        ("crafting", ("sleeper-agent", "mnist-5k", 0), "", 0.0, "none", "sleeper-agent", 1 * 250 * 39, [8]),
        ("pretrained", ("retrain", "sleeper-agent", "mnist-5k", 0), "mnist-scratch", 1 * 4 * FOREST * MNIST5K, "none",
         "", 0.0, [8]),
        ("runs", ("run", 8), "mnist-scratch", PAPER_MNIST * MNIST5K, "none", "", 0.0, [8]),
        ("runs", ("run", 10), "cifar10-scratch", PAPER_CIFAR * CIFAR, "none", "", 0.0, [10]),
    ]
    assert _items(work) == expected
    assert (work.grid, work.runs) == (grid.name, 11)
    assert work.unknown == ["dataset /nowhere/absent.npz (not in the catalog: its rows are known only once loaded)"]
    assert work.excludes == [
        "crafting the untargeted mix (PGD, DAP, DURP, DeepConfuse): not timed "
        "(benchmarks/craft_throughput.py times it per poison)",
        "crafting badnets, blend: a trigger stamped on the rows, no optimisation",
        *est.EXCLUDES,
    ]


def test_a_grid_without_the_mix_or_a_stamped_trigger_excludes_only_the_common_parts(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[[runs]]\ndataset = "mnist"\nattack = "gm"\n')
    work = est.grid_work(load_grid(str(path)))
    assert work.excludes == list(est.EXCLUDES) and work.unknown == []
    assert [i.part for i in work.items] == ["pretrained", "crafting", "runs"]


def test_a_grid_of_only_the_mix_excludes_its_crafting_but_no_stamped_trigger(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[[runs]]\ndataset = "cifar10"\n')
    work = est.grid_work(load_grid(str(path)))
    assert work.excludes == [
        "crafting the untargeted mix (PGD, DAP, DURP, DeepConfuse): not timed "
        "(benchmarks/craft_throughput.py times it per poison)",
        *est.EXCLUDES,
    ]


# the workspace


def _grid(tmp_path, trials: int = 3):
    path = tmp_path / "g.toml"
    path.write_text(f'[defaults]\ndataset = "mnist"\nattack = "gm"\ntrials = {trials}\n\n[[runs]]\n'
                    'method = ["none", "hint"]\n')
    return load_grid(str(path))


@pytest.mark.parametrize("held", ["nothing", "empty-runs-and-poisons"])
def test_a_workspace_without_records_or_poisonsets_is_answered_without_planning(tmp_path, monkeypatch, held):
    root = tmp_path / "ws"
    if held != "nothing":
        (root / "runs").mkdir(parents=True)
        (root / "poisons").mkdir()

    def no_plan(*_a, **_k):
        raise AssertionError("planned")

    monkeypatch.setattr("poisonbench.sweeps.plan.make_plan", no_plan)
    assert est.done_in_workspace(_grid(tmp_path), Execution(results=str(root))) == \
        (set(), set(), f"nothing done yet in {root}")


def _fake_plan(grid, runs_done: list[int], crafted_trials: list[int], dataset: str = "mnist"):
    """A plan whose run steps are the grid's runs in order and whose prepare steps craft GM per trial."""
    runs = [SimpleNamespace(index=i, cell=r.options, trial=r.trial) for i, r in enumerate(grid.runs)]
    trials = sorted({r.trial for r in grid.runs})
    steps = [SimpleNamespace(index=100 + t, kind="prepare", spec=SimpleNamespace(attack="gm", dataset=dataset, trial=t))
             for t in trials]
    steps.append(SimpleNamespace(index=999, kind="other", spec=SimpleNamespace(attack="x", dataset=dataset, trial=0)))
    states = {i: ("done" if i in runs_done else "missing") for i in range(len(runs))}
    states.update({100 + t: ("done" if t in crafted_trials else "failed") for t in trials})
    states[999] = "done"  # a step that is not a prepare step never counts as a PoisonSet
    return SimpleNamespace(runs=runs, steps=steps, states=lambda: states)


@pytest.mark.parametrize("where", ["runs", "poisons"])
def test_done_runs_are_grid_positions_and_crafted_poisonsets_their_attack_dataset_and_trial(tmp_path, monkeypatch,
                                                                                             where):
    grid = _grid(tmp_path)
    root = tmp_path / "ws"
    (root / where).mkdir(parents=True)
    (root / where / "x.json").write_text("{}")
    seen = []
    monkeypatch.setattr("poisonbench.sweeps.plan.make_plan",
                        lambda g, ex: seen.append((g, ex)) or _fake_plan(grid, [1, 4], [0, 2]))
    execution = Execution(results=str(root))
    done, crafted, line = est.done_in_workspace(grid, execution)
    assert seen == [(grid, execution)]
    assert done == {1, 4} and crafted == {("gm", "mnist", 0), ("gm", "mnist", 2)}
    assert line == f"2 of the grid's runs and 2 PoisonSets done in {root}"


def test_a_crafted_poisonset_of_a_dataset_outside_the_catalog_keeps_its_path(tmp_path, monkeypatch):
    grid = _grid(tmp_path, trials=1)
    root = tmp_path / "ws"
    (root / "poisons").mkdir(parents=True)
    (root / "poisons" / "p").mkdir()
    monkeypatch.setattr("poisonbench.sweeps.plan.make_plan",
                        lambda g, ex: _fake_plan(grid, [], [0], dataset="/data/own.npz"))
    assert est.done_in_workspace(grid, Execution(results=str(root))) == \
        (set(), {("gm", "/data/own.npz", 0)}, f"0 of the grid's runs and 1 PoisonSets done in {root}")


def test_a_workspace_whose_grid_cannot_be_planned_says_why_a_run_id_needs_the_data(tmp_path, monkeypatch):
    grid = _grid(tmp_path, trials=1)
    root = tmp_path / "ws"
    (root / "runs").mkdir(parents=True)
    (root / "runs" / "r.json").write_text("{}")

    def fails(*_a, **_k):
        raise PoisonbenchError("dataset mnist is not here")

    monkeypatch.setattr("poisonbench.sweeps.plan.make_plan", fails)
    with pytest.raises(PoisonbenchError) as info:
        est.done_in_workspace(grid, Execution(results=str(root)))
    assert str(info.value) == (f"{root} holds records, and which of them are this grid's is known only from the "
                               "grid's data (a run id hashes them): dataset mnist is not here")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_plan_estimate_is_the_estimate_less_the_workspaces_work_with_its_line(tmp_path, monkeypatch):
    grid = _grid(tmp_path, trials=1)
    execution = Execution(results=str(tmp_path / "ws"))
    asked = []
    monkeypatch.setattr(est, "done_in_workspace",
                        lambda g, ex: asked.append((g, ex)) or ({0}, {("gm", "mnist", 0)}, "the line"))
    cpu = dict.fromkeys(est.WORKLOADS, 10.0)
    got = est.plan_estimate(grid, execution, cpu=cpu)
    assert asked == [(grid, execution)]
    assert got == {**est.estimate(grid, est.default_devices(cpu), {0}, {("gm", "mnist", 0)}), "workspace": "the line"}
    assert got["runs_done"] == 1
    # GM's PoisonSet is crafted and run 0 done: what is left is run 1 and nothing of the crafting
    (h200,) = [d for d in got["devices"] if d["device"] == "NVIDIA H200"]
    assert h200["remaining"]["crafting"] == 0 < h200["hours_crafting"]
    assert 0 < h200["remaining"]["runs"] < h200["hours_runs"]


def test_an_estimate_is_these_fields_whole(tmp_path):
    grid = _grid(tmp_path, trials=2)
    flat = est.Figures("flat", dict.fromkeys(est.WORKLOADS, 1000.0), {"none": 1.0, "hint": 1.0}, {})
    got = est.estimate(grid, [flat], done={1})
    work = est.grid_work(grid)
    assert got == {"grid": grid.name, "runs": 4, "runs_done": 1, "pretrained_models": 1, "poison_sets": 2,
                   "formula": est.FORMULA, "excludes": work.excludes, "assumes": est.ASSUMES,
                   "devices": [est.device_hours(work, flat, {1}, frozenset())]}


def test_a_pretrained_model_trains_at_the_workloads_rate_without_a_defenses_overhead():
    figures = est.Figures("f", {"mnist-scratch": 100.0}, {"none": 2.0, "hint": 3.0}, {})
    model = est.Item("pretrained", ("surrogate",), "mnist-scratch", 1000.0)
    run = est.Item("runs", ("run", 0), "mnist-scratch", 1000.0, "none")
    hint = est.Item("runs", ("run", 1), "mnist-scratch", 1000.0, "hint")
    assert [est.item_seconds(i, figures) for i in (model, run, hint)] == [(10.0, None), (20.0, None), (30.0, None)]


def test_hours_are_rounded_to_three_decimals():
    figures = est.Figures("f", {"mnist-scratch": 1.0}, {"none": 1.0}, {})
    work = est.Work("g", 1, [est.Item("runs", ("run", 0), "mnist-scratch", 1.0, users={0})], [], [])
    assert est.device_hours(work, figures)["hours"] == 0.0  # 1 s = 0.000278 h
    work.items[0].images = 2.0  # 2 s = 0.000556 h
    assert est.device_hours(work, figures)["hours"] == 0.001


def test_a_packaged_kind_without_a_source_reads_an_empty_source(tmp_path):
    path = tmp_path / "t.json"
    path.write_text('{"devices": {"K": {"images_per_s": {"x": 1.0}, "ratio_to_none": {}, "crafting": {}}}}')
    (figures,) = est.packaged_figures(path)
    assert (figures.kind, figures.source) == ("K", {})


def test_default_devices_are_the_packaged_kinds_then_this_cpu_given_or_measured(monkeypatch):
    packaged = est.packaged_figures()
    given = dict.fromkeys(est.WORKLOADS, 7.0)
    devices = est.default_devices(given)
    assert [d.kind for d in devices] == [*(p.kind for p in packaged), est.CPU_KIND]
    assert devices[-1] == est.cpu_figures(given, packaged[0], measured=False)
    monkeypatch.setattr(est, "measure_cpu", lambda *a, **k: dict.fromkeys(est.WORKLOADS, 3.0))
    assert est.default_devices()[-1] == est.cpu_figures(dict.fromkeys(est.WORKLOADS, 3.0), packaged[0],
                                                        measured=True)


# measure_cpu


class _Tiny(torch.nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = torch.nn.Linear(channels, 4)
        self.head = torch.nn.Linear(4, 10)
        self.inputs: list[tuple] = []

    def forward(self, x):
        self.inputs.append(tuple(x.shape))
        return self.head(self.body(x.mean(dim=(2, 3))))


def test_measure_cpu_times_the_second_step_of_each_workloads_model_on_its_batch(monkeypatch):
    from poisonbench.engine.models import DEFAULT_MODEL

    built, optimised = [], []

    def build_model(name, data, seed):
        torch.manual_seed(seed)  # as the real one: the global generator is touched
        model = _Tiny(data.shape[0])
        built.append((name, data.name, data.shape, data.num_classes, data.mean, data.std, seed, model))
        return model

    real_sgd = torch.optim.SGD

    def sgd(params, **kwargs):
        params = list(params)
        optimised.append((len(params), kwargs))
        return real_sgd(params, **kwargs)

    clock = iter([0.0, 10.0, 10.0, 10.3,  # cifar10-scratch: a 10 s warm-up, then 0.3 s timed
                  20.0, 21.0, 21.0, 21.5,  # cifar10-transfer: 0.5 s
                  30.0, 30.5, 30.5, 31.2])  # mnist-scratch: 0.7 s, 7.142… images/s, kept to one decimal
    monkeypatch.setattr("poisonbench.engine.models.build_model", build_model)
    monkeypatch.setattr(torch.optim, "SGD", sgd)
    monkeypatch.setattr(est.time, "perf_counter", lambda: next(clock))
    before = torch.random.get_rng_state()
    rates = est.measure_cpu({"cifar10": 3, "mnist": 5})
    assert torch.equal(before, torch.random.get_rng_state())
    assert rates == {"cifar10-scratch": 10.0, "cifar10-transfer": 6.0, "mnist-scratch": 7.1}
    assert list(rates) == list(est.WORKLOADS)
    assert [b[:7] for b in built] == [
        (DEFAULT_MODEL["cifar10"], "cifar10", (3, 32, 32), 10, *CIFAR_MEAN_STD, 0),
        (DEFAULT_MODEL["cifar10"], "cifar10", (3, 32, 32), 10, *CIFAR_MEAN_STD, 0),
        (DEFAULT_MODEL["mnist"], "mnist", (1, 28, 28), 10, *MNIST_MEAN_STD, 0),
    ]
    # two steps of each, on its batch; the transfer victim's optimiser holds the head's two tensors only
    assert [b[7].inputs for b in built] == [[(3, 3, 32, 32)] * 2, [(3, 3, 32, 32)] * 2, [(5, 1, 28, 28)] * 2]
    assert [n for n, _ in optimised] == [4, 2, 4]
    assert [p.requires_grad for p in built[1][7].body.parameters()] == [False, False]
    assert [p.requires_grad for p in built[1][7].head.parameters()] == [True, True]
