"""`sweep plan GRID --estimate` for every registered attack (poisonbench.sweeps.estimate.grid_work): each family
(the untargeted mix, the targeted attacks, the backdoors, Label-Consistent and Sleeper Agent included) gets its runs,
pre-trained models and crafting sized, the attacks read from the registry so that a new one is covered. Before the
fix a backdoor run raised KeyError 'scenario' (only targeted attacks have that parameter)."""

from __future__ import annotations

import json
import math

import pytest

from poisonbench.attacks import ATTACKS
from poisonbench.attacks.backdoor import is_backdoor
from poisonbench.data import DATASETS
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.sweeps import estimate as est
from poisonbench.sweeps import load_grid

DATASET = "mnist-5k"
N = DATASETS.get(DATASET).split_sizes[0]


def family_of(name: str) -> str:
    cls = ATTACKS.get(name)
    return "backdoor" if is_backdoor(cls) else "targeted" if cls.targeted else "untargeted"


def run_lines(name: str) -> str:
    """One `[[runs]]` table of `name` as a grid names it: `--attack` for a targeted attack or a backdoor, the
    untargeted mix of that attack alone otherwise."""
    if family_of(name) == "untargeted":
        return f'[[runs]]\nmethod = "none"\npoison_ratio = 1.0\nattacks = [["{name}"]]\n'
    return f'[[runs]]\nmethod = "none"\nattack = "{name}"\n'


def grid_of(tmp_path, names: list[str], recipe: str = "quick", dataset: str = DATASET):
    path = tmp_path / "every-attack.toml"
    path.write_text(f'[defaults]\ndataset = "{dataset}"\nrecipe = "{recipe}"\ntrials = 1\n\n'
                    + "\n".join(run_lines(n) for n in names))
    return path


@pytest.fixture(scope="module")
def h200() -> est.Figures:
    (figures,) = [f for f in est.packaged_figures() if f.kind == "NVIDIA H200"]
    return figures


def test_the_registry_holds_every_family():
    assert {family_of(n) for n in ATTACKS.names()} == {"untargeted", "targeted", "backdoor"}
    assert {"lc", "sleeper-agent"} <= set(ATTACKS.names())


@pytest.mark.parametrize("dataset", [DATASET, "cifar10"])
@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_registered_attack_gets_an_estimate(tmp_path, h200, name, dataset):
    grid = load_grid(str(grid_of(tmp_path, [name], dataset=dataset)))
    work = est.grid_work(grid)
    assert work.runs == 1 and work.unknown == []
    (run,) = [i for i in work.items if i.part == "runs"]
    family, n = DATASETS.get(dataset).family, DATASETS.get(dataset).split_sizes[0]
    params = ATTACKS.get(name)(family).params
    quick = resolve_recipe(family, "quick").epochs
    rows = round(0.1 * n) if params.get("scenario") == "transfer" else n
    assert (run.workload, run.images, run.users) == (
        f"{family}-transfer" if rows != n else f"{family}-scratch", quick * rows, {0})
    crafting = [i for i in work.items if i.part == "crafting"]
    iterations = params.get("iterations") or params.get("steps")
    if family_of(name) == "untargeted":  # the mix's crafting is not timed, and said so
        assert crafting == [] and any("untargeted mix" in x for x in work.excludes)
    elif iterations:
        (c,) = crafting
        poisons = math.floor(ATTACKS.get(name).default_budget() * rows)
        assert (c.key, c.attack) == ((name, dataset, 0), name)
        assert c.iteration_poisons == params.get("restarts", 1) * iterations * poisons > 0
    else:  # a trigger stamped: nothing to time, and said so
        assert crafting == [] and any(x.startswith("crafting ") and name in x for x in work.excludes)
    seconds = {i.key: est.item_seconds(i, h200) for i in work.items}  # mnist-5k's hours round to 0.000
    named = {f"crafting {c.attack}" for c in crafting if c.attack not in h200.crafting} | {
        f"images/s {i.workload}" for i in work.items if i.workload and i.workload not in h200.images_per_s}
    assert {lacking for _, lacking in seconds.values()} - {None} == named  # only a figure the table lacks
    assert all(s > 0 for s, _ in seconds.values() if s is not None)
    assert dataset != "cifar10" or seconds[run.key][0] > 0  # the table holds every cifar10 workload
    assert set(est.estimate(grid, [h200])["devices"][0]["missing"]) == named


def test_the_surrogates_and_retrainings_of_each_family(tmp_path):
    """The untargeted mix's and Label-Consistent's surrogate is the paper recipe's (one model, whatever the runs'
    recipe); a targeted scratch attack's the victim's recipe; Sleeper Agent's its `surrogate_recipe` (forest), and it
    retrains that from scratch four times (iterations 50, 100, 150, 200 of 250); the model-free backdoors train
    none."""
    paper, forest = resolve_recipe("mnist", "paper").epochs, resolve_recipe("mnist", "forest").epochs
    quick = resolve_recipe("mnist", "quick").epochs

    def pretrained(names):
        work = est.grid_work(load_grid(str(grid_of(tmp_path, names))))
        return {i.key: i.images for i in work.items if i.part == "pretrained"}

    assert pretrained(["pgd", "lc"]) == {("surrogate", DATASET, "paper", paper): paper * N}
    assert pretrained(["badnets", "blend", "sig"]) == {}
    assert pretrained(["gm"]) == {("surrogate", DATASET, "quick", quick): quick * N}
    sa = ATTACKS.get("sleeper-agent")("mnist").params
    assert (sa["iterations"], sa["retrain_iter"], sa["restarts"], sa["retrain_epochs"]) == (250, 50, 1, None)
    assert pretrained(["sleeper-agent"]) == {("surrogate", DATASET, "forest", forest): forest * N,
                                             ("retrain", "sleeper-agent", DATASET, 0): 4 * forest * N}


def test_a_backdoor_victim_trains_at_the_paper_recipe_by_default(tmp_path):
    """`defend --attack badnets` without --recipe trains at the paper recipe (not targeted: experiment.checks)."""
    path = tmp_path / "g.toml"
    path.write_text(f'[[runs]]\ndataset = "{DATASET}"\nmethod = "none"\nattack = ["badnets", "gm"]\n')
    work = est.grid_work(load_grid(str(path)))
    runs = sorted((i.key, i.images) for i in work.items if i.part == "runs")
    assert runs == [(("run", 0), resolve_recipe("mnist", "paper").epochs * N),
                    (("run", 1), resolve_recipe("mnist", "forest").epochs * N)]


def test_sweep_plan_estimate_of_a_grid_with_every_attack(cli, tmp_path, monkeypatch, h200):
    monkeypatch.setattr(est, "measure_cpu", lambda *a, **k: {w: r / 100 for w, r in h200.images_per_s.items()})
    names = ATTACKS.names()
    grid = grid_of(tmp_path, names, dataset="cifar10")  # the table holds every cifar10 workload
    code, out, err = cli("sweep", "plan", grid, "--estimate", "--results", tmp_path / "r", "--json")
    assert code == 0, err
    e = json.loads(out)
    assert e["runs"] == len(names)
    d = [x for x in e["devices"] if x["device"] == h200.kind][0]
    assert d["hours_runs"] > 0 and d["hours_crafting"] > 0
    assert all(m.startswith("crafting ") for m in d["missing"])
