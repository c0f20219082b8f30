"""The clean-label filters of the filter paper (§4.2-4.3): Deep k-NN, L2 centroid, one-class SVM, random. Their
cores on synthetic feature tensors (planted outliers, a brute-force reference, scikit-learn), the drop counts and
seeding, end to end through `defend` in both targeted scenarios, and bad input through the CLI."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from poisonbench.defenses import Threat, build_defense
from poisonbench.defenses.filtering import fraction_count
from poisonbench.defenses.knn import block_rows, knn_keep
from poisonbench.defenses.l2_filter import l2_remove
from poisonbench.defenses.ocsvm import ocsvm_remove
from poisonbench.defenses.random_filter import random_remove
from poisonbench.engine.hooks import TrainContext
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.experiment.defend import defend
from poisonbench.experiment.spec import DefendSpec

from .conftest import defend_refused

TOY = "toy-targeted"  # tests/conftest.py `toy` registers it


pytestmark = pytest.mark.usefixtures("one_thread")


def clusters(per_class: int, classes: int, dim: int = 6, spread: float = 0.1, seed: int = 0):
    """Tight Gaussian clusters, one per class, centres 10 apart (float64: no distance ties)."""
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.eye(classes, dim, dtype=torch.float64)
    labels = torch.arange(classes).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)
    return features, labels, centres


def planted(features, labels, centres, count: int, label: int, inside: int, spread: float = 0.1, seed: int = 1):
    """`count` points labelled `label` placed inside class `inside`'s cluster, appended; returns their mask too."""
    g = torch.Generator().manual_seed(seed)
    extra = centres[inside] + spread * torch.randn(count, features.shape[1], generator=g, dtype=torch.float64)
    mask = torch.cat([torch.zeros(len(labels), dtype=torch.bool), torch.ones(count, dtype=torch.bool)])
    return torch.cat([features, extra]), torch.cat([labels, torch.full((count,), label)]), mask


# ---------------------------------------------------------------------------------------------------------------
# Deep k-NN


@pytest.mark.parametrize("include_self", [True, False])
def test_knn_removes_planted_points_and_keeps_the_clean_clusters(include_self):
    features, labels, centres = clusters(60, 3)
    features, labels, poison = planted(features, labels, centres, count=4, label=0, inside=1)
    keep = knn_keep(features, labels, k=2 * 4 + 1, num_classes=3, include_self=include_self)  # paper: k = 2p + 1
    assert not keep[poison].any()
    assert (~keep[~poison]).sum() <= 1  # at most a tiny fraction of the 180 clean points


def brute_force_keep(features, labels, k, include_self):
    """Algorithm 1 written plainly: a full N×N distance matrix, a Python loop, a Counter per row."""
    n = len(labels)
    distances = torch.cdist(features, features)
    keep, ties = [], 0
    for i in range(n):
        others = [j for j in sorted(range(n), key=lambda j: distances[i, j].item()) if j != i]
        neighbours = ([i] + others)[:k] if include_self else others[:k]
        votes = Counter(labels[neighbours].tolist())
        best = max(votes.values())
        ties += sum(v == best for v in votes.values()) > 1
        keep.append(votes.get(int(labels[i]), 0) == best)
    return torch.tensor(keep), ties


@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("k", [4, 6, 7])
def test_chunked_knn_equals_the_brute_force_reference_for_every_block_size(include_self, k):
    g = torch.Generator().manual_seed(k)
    n = 90
    features = torch.randn(n, 5, generator=g, dtype=torch.float64)  # overlapping classes: many removals and ties
    labels = torch.randint(0, 3, (n,), generator=g)
    expected, ties = brute_force_keep(features, labels, k, include_self)
    assert ties > 0 and expected.any() and not expected.all()  # the vote ties are exercised, keep and remove both
    for max_floats in (1, 7 * n, 32 * n, n * n, 10 * n * n):
        assert block_rows(n, max_floats) * n <= max(max_floats, n)  # never more distances than the bound (≥ 1 row)
        got = knn_keep(features, labels, k, 3, include_self=include_self, max_floats=max_floats)
        assert torch.equal(got, expected), max_floats


def test_knn_with_self_vote_agrees_with_scikit_learn_where_the_vote_has_no_tie():
    """The official code: KNeighborsClassifier(algorithm='brute') fit and predict on the same points, keep iff the
    prediction is the row's label. scikit-learn breaks a plurality tie towards the smallest label; Algorithm 1 keeps
    the row ("l ∈ mode"): compared where there is no tie."""
    from sklearn.neighbors import KNeighborsClassifier

    g = torch.Generator().manual_seed(3)
    features = torch.randn(150, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (150,), generator=g)
    k = 9
    official = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(features.numpy(), labels.numpy())
    official_keep = torch.from_numpy(official.predict(features.numpy()) == labels.numpy())
    ours = knn_keep(features, labels, k, 4)
    distances = torch.cdist(features, features)
    neighbours = distances.topk(k, largest=False).indices
    votes = torch.nn.functional.one_hot(labels[neighbours], 4).sum(1)
    no_tie = (votes == votes.max(1, keepdim=True).values).sum(1) == 1
    assert no_tie.sum() > 100 and (~official_keep[no_tie]).sum() > 10
    assert torch.equal(ours[no_tie], official_keep[no_tie])


def test_knn_clamps_k_to_the_rows_there_are():
    features, labels, _ = clusters(3, 2)
    assert knn_keep(features, labels, 1000, 2).all()  # k = n: every row sees its class's 3 and the other's 3: tie
    assert knn_keep(features[:1], labels[:1], 5, 2, include_self=False).all()  # no neighbour at all: kept


# ---------------------------------------------------------------------------------------------------------------
# L2, one-class SVM, random


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.25, 0.5])
def test_l2_removes_the_ceil_eps_share_of_each_class_farthest_from_its_centroid(eps):
    g = torch.Generator().manual_seed(0)
    sizes = [30, 17, 50, 1]
    labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    features = torch.randn(len(labels), 8, generator=g) + 3 * labels[:, None]
    removed = l2_remove(features, labels, eps, 4)
    for c, s in enumerate(sizes):
        members = labels == c
        assert removed[members].sum() == math.ceil(round(eps * s, 9))  # ⌈ε·s_l⌉ (0.1·30 = 3, not 4)
        distance = (features[members] - features[members].mean(0)).norm(dim=1)
        if 0 < removed[members].sum() < s:
            assert distance[removed[members]].min() >= distance[~removed[members]].max()


def test_fraction_count_is_the_ceiling_without_float_noise():
    assert [fraction_count(0.1, 30), fraction_count(0.1, 31), fraction_count(0.01, 100), fraction_count(0, 9)] == \
        [3, 4, 1, 0]
    assert fraction_count(6 / 320, 320) == 6 and fraction_count(6 / 32, 32) == 6


def test_ocsvm_removes_planted_outliers():
    """ν = 0.01 (the paper's) bounds the share of outliers: 2 planted per class of 400 (0.5 %), 8σ off-centre."""
    features, labels, centres = clusters(400, 3, dim=4, spread=1.0)
    g = torch.Generator().manual_seed(5)
    planted_labels = torch.arange(3).repeat_interleave(2)
    directions = torch.nn.functional.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    features = torch.cat([features, centres[planted_labels] + 8 * directions])
    labels = torch.cat([labels, planted_labels])
    outlier = torch.arange(len(labels)) >= 1200
    removed = ocsvm_remove(features, labels, nu=0.01)
    assert removed[outlier].all()
    assert removed[~outlier].float().mean() <= 0.02
    assert torch.equal(removed, ocsvm_remove(features, labels, nu=0.01))  # deterministic


def fake_context(n: int, seed: int) -> TrainContext:
    """What the random filter reads: rows, labels, the device and the run's seed (no model)."""
    x = torch.zeros(n, 1, 2, 2)
    y = torch.arange(n) % 4
    return TrainContext(None, None, resolve_recipe("mnist", "quick"), torch.device("cpu"),
                        torch.Generator().manual_seed(seed), x, y, x[:0], y[:0], 4, seed)


def test_random_removes_exactly_the_fraction_reproducibly_per_seed():
    recipe = resolve_recipe("mnist", "quick")
    threat = Threat("targeted", budget=10, train_size=400)

    def kept(seed, **params):
        ctx = fake_context(200, seed)
        before = ctx.generator.get_state()
        rows = build_defense("random", "mnist", recipe, threat, **params).prepare(ctx)
        assert torch.equal(ctx.generator.get_state(), before)  # the engine's stream is left alone
        assert torch.equal(rows, rows.sort().values)
        return rows

    assert len(kept(0)) == 200 - 10  # default: the budget's share of the 200 rows in use, 10 / 200
    assert len(kept(0, drop=0.13)) == 200 - 26
    assert torch.equal(kept(1, drop=0.13), kept(1, drop=0.13))
    assert not torch.equal(kept(1, drop=0.13), kept(2, drop=0.13))
    g = torch.Generator().manual_seed(0)
    assert random_remove(31, 0.1, g).sum() == 4  # ⌈3.1⌉


# ---------------------------------------------------------------------------------------------------------------
# end to end


@pytest.mark.parametrize("scenario", ["scratch", "transfer"])
def test_filters_end_to_end_record_removals_against_the_poisoned_rows(tiny_root, toy, tmp_path, scenario,
                                                                      train_calls):
    records, active = {}, {}
    for method in ("knn", "l2", "ocsvm", "random"):
        spec = DefendSpec(dataset=str(tiny_root / "tiny.npz"), recipe="quick", recipe_overrides={"epochs": 1},
                          scenario=scenario, attack=toy, budget=0.02, method=method, results=str(tmp_path))
        (outcome,) = defend(spec)
        records[method] = outcome.record
        active[method] = train_calls[-1][2].context.active  # the rows the engine trained on
    for method, r in records.items():
        s, poisons = {**r["defense"], **r["defense"]["removal"]}, r["config"]["poison"]["poisoned"]
        assert s["poisons"] == poisons and s["poisons"] + s["clean"] == s["rows"]
        assert s["poisons_removed"] + s["clean_removed"] == s["removed"] == s["rows"] - s["kept"]
        assert s["poisons_removed_fraction"] == s["poisons_removed"] / poisons
        assert sum(s["removed_per_class"]) == s["removed"]
        assert len(active[method]) == s["kept"] and torch.equal(active[method], active[method].unique())
        if method == "random":
            assert "features" not in s and s["removed"] == fraction_count(s["drop"], s["rows"])
            continue
        expected = "extractor" if scenario == "transfer" else "trained"
        assert s["features"] == expected and s["feature_dim"] > 0
        assert (f"{method}_feature_model" in r["cost"]) == (expected == "trained")  # transfer: no extra training
        assert ("feature_model" in s["seconds"]) == (expected == "trained")
    knn, l2 = ({**records[m]["defense"], **records[m]["defense"]["removal"]} for m in ("knn", "l2"))
    poisons = records["knn"]["config"]["poison"]["poisoned"]
    assert knn["k"] == 2 * poisons + 1 and knn["k_used"] == min(knn["k"], knn["rows"]) and knn["self_vote"]
    assert records["knn"]["config"]["defense"] == {"method": "knn", "k": 2 * poisons + 1, "knn_self": True,
                                                    "features": "auto"}
    # ε = the budget's share of the rows trained on: in transfer the 10 % transfer set with the poisons
    assert l2["drop"] == pytest.approx(poisons / l2["rows"]) and l2["drop_source"] == "budget share"
    if scenario == "transfer":
        assert l2["rows"] < records["l2"]["config"]["poison"]["poisoned"] / records["l2"]["config"]["poison"]["ratio"]


def test_a_filters_given_values_win_and_land_in_the_run_id(tiny_root, toy, tmp_path):
    spec = DefendSpec(dataset=str(tiny_root / "tiny.npz"), recipe="quick", recipe_overrides={"epochs": 1},
                      scenario="transfer", attack=toy, budget=0.02, method="knn",
                      method_params={"k": 3, "knn_self": False, "features": "trained"}, results=str(tmp_path))
    (outcome,) = defend(spec)
    s = outcome.record["defense"]
    assert (s["k"], s["k_used"], s["self_vote"], s["features"]) == (3, 3, False, "trained")
    assert outcome.record["cost"]["knn_feature_model"] > 0


# ---------------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(("args", "needle"), [
    (["--method", "knn", "--k", "0"], "--k of method 'knn' must be >= 1, got 0"),
    (["--method", "knn"], "method 'knn' needs --k"),
    (["--method", "l2"], "method 'l2' needs --drop"),
    (["--method", "l2", "--drop", "1"], "--drop of method 'l2' must be in [0, 1), got 1"),
    (["--method", "random", "--drop", "-0.1"], "--drop of method 'random' must be in [0, 1), got -0.1"),
    (["--method", "ocsvm", "--nu", "0"], "--nu of method 'ocsvm' must be in (0, 1], got 0"),
    (["--method", "ocsvm", "--features", "extractor"], "--features extractor of method 'ocsvm'"),
    (["--method", "l2", "--features", "pixels", "--drop", "0.1"], "unknown --features value of method 'l2' 'pixels'"),
    (["--method", "random", "--features", "trained"], "option --features does not apply to method 'random'"),
    (["--method", "knn", "--k", "3", "--features", "extractor", "--attack", TOY, "--scenario", "scratch"],
     "--features extractor of method 'knn'"),
    (["--method", "knn", "--k", "0", "--attack", TOY, "--scenario", "transfer"], "--k of method 'knn' must be >= 1"),
])
def test_bad_filter_input_is_one_line_exit_2_nothing_written(cli, toy, tiny_root, tmp_path, monkeypatch, args,
                                                              needle):
    monkeypatch.chdir(tmp_path)
    defend_refused(cli, tiny_root / "tiny.npz", tmp_path, args, needle)
