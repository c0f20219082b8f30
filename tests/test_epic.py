"""EPIC (poisonbench/defenses/epic.py, facility_location.py): the lazy greedy selects exactly the naive greedy's
medoids, the stochastic one nearly its objective; exactly the members of small clusters are dropped, per class,
with unequal class budgets (official bug E1 not copied); the schedule; drops are permanent; training on tiny data;
bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from poisonbench.core.device import to_float
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.defenses import DEFENSES, build_defense
from poisonbench.defenses import epic as epic_module
from poisonbench.defenses import facility_location as fl
from poisonbench.defenses.epic import Epic, class_budgets, drop_epochs, gradient_proxy, small_cluster_rows
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import Recipe, resolve_recipe
from poisonbench.engine.training import TrainContext, train

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def proxies(sizes: list[int], seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient-proxy-like rows (softmax − onehot of random logits), `sizes[c]` rows of class c, shuffled."""
    g = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    y = y[torch.randperm(len(y), generator=g)]
    p = torch.softmax(3 * torch.randn(len(y), len(sizes), generator=g, dtype=dtype), 1)
    return p - torch.nn.functional.one_hot(y, len(sizes)).to(dtype), y


def reference_small_clusters(g: torch.Tensor, y: torch.Tensor, budgets: list[int], threshold: float) -> np.ndarray:
    """EPIC's drop written out per class in numpy: s_ij = exp(−‖g_i − g_j‖/d), greedy facility location (all
    gains every step, lowest index on ties), nearest medoid, cluster sizes; rows of clusters of size ≤ threshold."""
    g, y = g.double().numpy(), y.numpy()
    small = np.zeros(len(y), dtype=bool)
    for c, budget in enumerate(budgets):
        rows = np.flatnonzero(y == c)
        x = g[rows]
        s = np.exp(-np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)) / x.shape[1])
        best, chosen = np.zeros(len(rows)), []
        for _ in range(budget):
            gains = np.maximum(s - best[:, None], 0).sum(0)
            gains[chosen] = -np.inf
            chosen.append(int(np.argmax(gains)))
            best = np.maximum(best, s[:, chosen[-1]])
        cluster = s[:, chosen].argmax(1)
        sizes = np.bincount(cluster, minlength=budget)
        small[rows] = sizes[cluster] <= threshold
    return small


# --- facility location ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_lazy_greedy_selects_exactly_the_naive_greedys_medoids(seed):
    g, y = proxies([7, 40, 133, 260, 3], seed)
    for c in range(5):
        sim = fl.similarity(g[y == c])
        n = len(sim)
        for budget in sorted({1, max(1, n // 10), n // 3, n}):
            naive, lazy = fl.naive_greedy(sim, budget), fl.lazy_greedy(sim, budget)
            assert torch.equal(lazy, naive), (c, budget)
            assert len(set(lazy.tolist())) == budget
            for batch in (1, 5):  # any round size gives the same order
                assert torch.equal(fl.lazy_greedy(sim, budget, batch=batch), naive)


def test_lazy_greedy_breaks_ties_like_the_naive_one():
    """Duplicated rows give equal gains (and zero gains once covered); both pick the lowest index."""
    g = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    sim = fl.similarity(g)
    assert torch.equal(fl.lazy_greedy(sim, 6), fl.naive_greedy(sim, 6))
    assert fl.naive_greedy(sim, 6).tolist()[:3] == [4, 0, 1]


def test_similarity_is_submodlibs_dense_euclidean_kernel():
    g, _ = proxies([30], 3)
    sim = fl.similarity(g)
    expected = torch.exp(-torch.linalg.vector_norm(g[:, None] - g[None], dim=2) / g.shape[1])
    assert torch.allclose(sim, expected, atol=1e-6)
    assert torch.equal(sim, sim.T) and torch.all(sim.diagonal() == 1)


def test_stochastic_greedy_reaches_95_percent_of_the_greedy_objective():
    g, _ = proxies([600], 5)
    sim = fl.similarity(g)
    budget = 60
    naive = fl.objective(sim, fl.naive_greedy(sim, budget))
    generator = torch.Generator().manual_seed(0)
    random_subset = fl.objective(sim, torch.randperm(len(sim), generator=generator)[:budget])
    for seed in range(3):
        chosen = fl.stochastic_greedy(sim, budget, torch.Generator().manual_seed(seed))
        assert len(set(chosen.tolist())) == budget
        value = fl.objective(sim, chosen)
        assert value >= 0.95 * naive
        # the kernel is flat (s_ij ≥ e^−0.28 for proxies): also most of what the greedy gains over a random subset
        assert value - random_subset >= 0.75 * (naive - random_subset)


# --- budgets and the drop ----------------------------------------------------------------------------------------


def test_class_budgets_are_proportional_ceilings_minus_a_random_surplus():
    counts = [500, 130, 7, 0, 363]
    for seed in range(5):
        budgets = class_budgets(counts, 0.1, torch.Generator().manual_seed(seed))
        ceilings = [math.ceil(c * 100 / 1000) for c in counts]  # B = ⌊0.1·1000⌋ = 100
        assert sum(budgets) == 100
        assert all(c - 1 <= b <= c for b, c in zip(budgets, ceilings, strict=True)) and budgets[3] == 0
    assert class_budgets([10, 10, 10], 1.0, torch.Generator()) == [10, 10, 10]


def test_exactly_the_small_clusters_are_dropped_with_unequal_classes():
    """Hand-built proxies: per class a tight blob, plus isolated points in classes 0 and 1. With budgets 3 / 2 / 1
    the medoids are each blob's centre and the isolated points: exactly the isolated points are dropped, as the
    per-class reference computes. The official global cluster ids (offset c·b_c, bug E1) would drop other rows."""
    g = torch.Generator().manual_seed(0)
    blob = lambda n, centre: torch.tensor(centre) + 0.01 * torch.randn(n, 3, generator=g)  # noqa: E731
    x = torch.cat([blob(30, [0.0, 0.0, 0.0]), torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]]),  # class 0
                   blob(12, [0.5, 0.5, 0.5]), torch.tensor([[0.0, 0.0, 2.5]]),  # class 1
                   blob(6, [1.0, 1.0, 0.0])])  # class 2
    y = torch.tensor([0] * 32 + [1] * 13 + [2] * 6)
    isolated = torch.zeros(len(y), dtype=torch.bool)
    isolated[[30, 31, 44]] = True
    order = torch.randperm(len(y), generator=g)  # classes interleaved, as in a train set
    x, y, isolated = x[order], y[order], isolated[order]
    budgets = [3, 2, 1]
    small, info = small_cluster_rows(x, y, budgets, 1.0, "lazy", torch.Generator())
    assert torch.equal(small, isolated)
    assert info == {"medoids": 6, "small_clusters": 3}
    assert np.array_equal(small.numpy(), reference_small_clusters(x, y, budgets, 1.0))
    assert not np.array_equal(official_e1_small(x, y, budgets), small.numpy())


def official_e1_small(g, y, budgets) -> np.ndarray:
    """The official bookkeeping (EPIC:utils/coreset.py:L42, L95-96, its bug E1): cluster ids local + c·b_c, sizes
    concatenated at cumulative offsets, rows kept whose id names a size > 1 in the concatenation."""
    cluster = np.zeros(len(y), dtype=int)
    sizes_all = []
    for c, budget in enumerate(budgets):
        rows = (y == c).nonzero().flatten()
        sim = fl.similarity(g[rows])
        local, sizes = fl.assign(sim, fl.naive_greedy(sim, budget))
        cluster[rows.numpy()] = local.numpy() + c * budget
        sizes_all.append(sizes.numpy())
    keep_ids = np.flatnonzero(np.concatenate(sizes_all) > 1)
    return ~np.isin(cluster, keep_ids)


@pytest.mark.parametrize("greedy", ["lazy", "naive"])
def test_small_clusters_match_the_reference_on_random_unequal_classes(greedy):
    g, y = proxies([90, 35, 140, 12], 2, dtype=torch.float64)
    budgets = class_budgets(torch.bincount(y).tolist(), 0.2, torch.Generator().manual_seed(1))
    assert len(set(budgets)) > 2  # unequal budgets: where the official ids go wrong
    small, info = small_cluster_rows(g, y, budgets, 1.0, greedy, torch.Generator())
    assert np.array_equal(small.numpy(), reference_small_clusters(g, y, budgets, 1.0))
    assert info["small_clusters"] > 0 and info["medoids"] == sum(budgets)
    bigger, _ = small_cluster_rows(g, y, budgets, 2.0, greedy, torch.Generator())
    assert np.array_equal(bigger.numpy(), reference_small_clusters(g, y, budgets, 2.0))
    assert bool((bigger | ~small).all()) and int(bigger.sum()) > int(small.sum())


# --- schedule -----------------------------------------------------------------------------------------------------


def test_schedule_of_the_paper_recipes_and_scaled_ones():
    mnist, cifar = resolve_recipe("mnist", "paper"), resolve_recipe("cifar10", "paper")
    d = build_defense("epic", "mnist", mnist)
    assert (d.params["interval"], d.params["warmup"], d.params["subset"]) == (2, 5, 0.1)
    assert d.schedule == list(range(6, 30, 2))  # official: e % T == 0 and e >= K (0-based epochs)
    c = build_defense("epic", "cifar10", cifar)
    assert (c.params["interval"], c.params["warmup"]) == (4, 10)
    assert c.schedule == list(range(12, 71, 4))  # ... and e <= the last LR milestone (70)
    six = resolve_recipe("mnist", "quick", epochs=6, milestones=(3,))
    assert build_defense("epic", "mnist", six).schedule == [1, 2, 3]  # T' = 1, K' = 1, up to the milestone
    assert build_defense("epic", "mnist", resolve_recipe("mnist", "quick", epochs=6)).schedule == [1, 2, 3, 4, 5]
    assert build_defense("epic", "mnist", resolve_recipe("mnist", "quick")).schedule == list(range(2, 10))
    assert build_defense("epic", "mnist", resolve_recipe("mnist", "paper", epochs=60)).schedule == list(
        range(12, 60, 4))  # T' = 4, K' = 10
    assert build_defense("epic", "mnist", mnist, stop_after=12).schedule == [6, 8, 10]
    assert build_defense("epic", "mnist", mnist, subset=1.0).schedule == []  # the official `subset_size < 1`
    assert build_defense("epic", "mnist", resolve_recipe("mnist", "paper", epochs=1)).schedule == []
    assert drop_epochs(10, 3, 0, None) == [0, 3, 6, 9]


@pytest.mark.parametrize("params", [
    {"interval": 0}, {"interval": -2}, {"subset": 0}, {"subset": 1.5}, {"subset": -0.1}, {"warmup": -1},
    {"stop_after": -1}, {"cluster_threshold": -1}, {"greedy": "fastest"}, {"warmup": 30}, {"stop_after": 3},
])
def test_bad_parameters_are_one_line_errors(params):
    with pytest.raises(PoisonbenchError) as err:
        build_defense("epic", "mnist", resolve_recipe("mnist", "paper"), **params)
    assert "\n" not in str(err.value)


def test_cli_interval_zero_exits_2(capsys):
    from poisonbench.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["defend", "--method", "epic", "--interval", "0", "--results", "/nonexistent-unused"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--interval" in err and "Traceback" not in err, err


# --- the hooks -----------------------------------------------------------------------------------------------------


class Linear(nn.Module):
    def __init__(self, dim=4, classes=3):
        super().__init__()
        self.head = nn.Linear(dim, classes)

    def features(self, x):
        return x.flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


def test_gradient_proxy_is_softmax_minus_onehot_with_or_without_the_bias():
    torch.manual_seed(0)
    model = Linear()
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    onehot = torch.nn.functional.one_hot(y, 3)
    expected = torch.softmax(model(x), 1) - onehot
    assert torch.allclose(gradient_proxy(model, x, y), expected, atol=1e-6)
    without = torch.softmax(x @ model.head.weight.T, 1) - onehot  # the official code's (bug E2)
    assert torch.allclose(gradient_proxy(model, x, y, omit_bias=True), without, atol=1e-6)
    assert model.training  # the caller's model is untouched


def context(n: int, classes: int = 3) -> TrainContext:
    recipe = Recipe("tiny", epochs=6, batch_size=16, lr=0.1)
    y = torch.arange(n) % classes
    return TrainContext(Linear(classes=classes), None, recipe, CPU, torch.Generator(), torch.zeros(n, 4), y,
                        torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), classes, 0)


def test_drops_are_permanent_and_computed_over_every_row(monkeypatch):
    """Row 0 is isolated at epoch 1 and dropped; at epoch 2 it sits in a blob (not small any more) and stays
    dropped, while the proxies of all rows, dropped ones included, are computed (official: over all N)."""
    ctx = context(60)
    seen = []

    def fake_proxy(model, x, y, omit_bias=False):
        num_classes = 3
        seen.append(len(x))
        g = 0.01 * torch.randn(len(y), num_classes, generator=torch.Generator().manual_seed(len(seen)))
        g[y == 1] += 0.3
        g[y == 2] -= 0.3
        if len(seen) == 1:
            g[0] += 5.0  # isolated in its class (0)
        else:
            g[3] += 5.0  # another class-0 row isolated instead
        return g

    monkeypatch.setattr(epic_module, "gradient_proxy", fake_proxy)
    defense = Epic("mnist", ctx.recipe, interval=1, warmup=1, subset=0.1)
    defense.prepare(ctx)
    defense.on_epoch_start(ctx, 0)  # warm-up: nothing happens
    assert ctx.active is None and seen == []
    defense.on_epoch_start(ctx, 1)
    assert 0 not in ctx.active.tolist() and len(ctx.active) == 59
    defense.on_epoch_start(ctx, 2)
    assert seen == [60, 60]
    active = ctx.active.tolist()
    assert 0 not in active and 3 not in active and len(active) == 58 and active == sorted(active)
    assert [(d["epoch"], d["rows_before"], d["kept"], d["dropped"]) for d in defense.drops] == [
        (1, 60, 59, 1), (2, 59, 58, 1)]
    poisoned = torch.zeros(60, dtype=torch.bool)
    poisoned[[0, 10]] = True
    summary = defense.summary(poisoned)
    assert summary["dropped"] == 2 and [d["poisons_dropped"] for d in summary["drops"]] == [1, 0]
    assert summary["removal"]["poisons_removed"] == 1 and summary["removal"]["clean_removed"] == 1


def test_trains_end_to_end_on_fewer_rows_after_drops(tiny_npz):
    data = load_dataset(str(tiny_npz))
    recipe = resolve_recipe("mnist", "quick", epochs=4, batch_size=64)
    defense = build_defense("epic", "mnist", recipe, subset=0.5)
    assert defense.schedule == [1, 2, 3]
    active_after = []

    class Recording(Epic):
        def on_epoch_start(self, ctx, epoch):
            super().on_epoch_start(ctx, epoch)
            active_after.append(None if ctx.active is None else ctx.active.clone())

    defense = Recording("mnist", recipe, subset=0.5)
    n = len(data.train)
    result = train(build_model("convnet", data, seed=0), to_float(data.train.x, CPU), data.train.y,
                   to_float(data.val.x, CPU), data.val.y, recipe, seed=0, device=CPU, num_classes=10,
                   defense=defense, compile="off")
    assert active_after[0] is None and len(result.history) == 4
    sets = [set(a.tolist()) for a in active_after[1:]]
    assert all(later <= earlier for earlier, later in zip(sets, sets[1:], strict=False))  # permanent
    assert len(result.context.active) < n
    summary = defense.summary(torch.zeros(n, dtype=torch.bool))
    assert summary["dropped"] == n - len(result.context.active) == sum(d["dropped"] for d in summary["drops"])
    assert [d["epoch"] for d in summary["drops"]] == [1, 2, 3]
    assert summary["removal"]["removed"] == summary["dropped"]
    assert result.cost["defense_epoch"] >= result.cost["epic_proxy"] > 0


def test_registered():
    assert DEFENSES.get("epic") is Epic
