"""Issue 54 items 5 and 6: the poisons' bases (`bases` random | nearest) and GM's surrogate ensembles (`ensemble N`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from poisonbench import poisons
from poisonbench.attacks import ATTACKS
from poisonbench.attacks.base import Target
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset

from .conftest import write_npz

GM_FAST = {"iterations": 2, "restarts": 1, "surrogate_recipe": "quick", "surrogate_epochs": 1}
TARGET_INDEX, SEED, BUDGET = 5, 3, 0.05


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(write_npz(tmp_path_factory.mktemp("bases"), n=400))


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return load_dataset(tiny_path)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("bases-results")


def aim(data, intended: int | None = None) -> Target:
    from poisonbench.attacks.targets import draw_target

    return draw_target(data, SEED, "scratch", BUDGET, TARGET_INDEX, intended)


def craft(data, results, **params):
    cls = ATTACKS.get("gm")
    target = cls(data.family, **{**GM_FAST, **params}).aim(aim(data))
    spec = poisons.craft_spec(data, "gm", budget=BUDGET, seed=SEED, target=target, **{**GM_FAST, **params})
    poison, _ = poisons.craft(spec, data, results, torch.device("cpu"))
    return spec, poison


def test_random_bases_are_todays_draw(tiny):
    target = aim(tiny)
    # the rows `draw_target` gave for this dataset, seed and budget at HEAD 2574d2a (bases random: unchanged)
    assert target.rows == (11, 54, 68, 117, 162, 172, 179, 200, 210, 236, 248, 254, 279, 308, 315, 318)
    gm = ATTACKS.get("gm")(tiny.family, **GM_FAST)
    assert gm.params["bases"] == "random"
    assert gm.aim(target) == target  # the drawn rows stay in the planned target
    drawn = gm.choose_rows(tiny, BUDGET, SEED, Target(target.index, target.true_class, target.intended_class))
    assert tuple(drawn.tolist()) == target.rows


def test_nearest_bases_are_the_k_nearest_in_the_surrogates_features(tiny, results, one_thread):
    from poisonbench.attacks.surrogate import load_or_train_surrogate
    from poisonbench.attacks.targets import base_pool

    spec, poison = craft(tiny, results, bases="nearest")
    drawn = aim(tiny)
    assert spec.params["bases"] == "nearest" and "rows" not in spec.target  # rows: the attack's, at craft time
    assert poison.manifest["params"]["bases"] == "nearest"
    gm = ATTACKS.get("gm")(tiny.family, **GM_FAST, bases="nearest")
    recipe, overrides, model_name = gm.surrogate_training()
    model, _ = load_or_train_surrogate(tiny, results, torch.device("cpu"), model_name=model_name, recipe=recipe,
                                       overrides=overrides)
    model.eval()
    pool = base_pool(tiny, drawn.intended_class, "scratch")
    with torch.no_grad():  # brute force: one image at a time, every distance, a full sort
        t = model.features(tiny.test.x[TARGET_INDEX:TARGET_INDEX + 1].float() / 255).flatten()
        dist = [float((model.features(tiny.train.x[int(r):int(r) + 1].float() / 255).flatten() - t).norm())
                for r in pool]
    k = len(drawn.rows)
    want = sorted(int(pool[i]) for i in sorted(range(len(pool)), key=lambda i: (dist[i], i))[:k])
    assert poison.indices.tolist() == want
    assert all(int(tiny.train.y[r]) == drawn.intended_class for r in want)
    assert tuple(want) != drawn.rows
    random_spec = poisons.craft_spec(tiny, "gm", budget=BUDGET, seed=SEED, target=drawn, **GM_FAST)
    assert random_spec.poison_id != spec.poison_id


def test_nearest_bases_refuse_a_setup_files_fixed_rows(tiny):
    gm = ATTACKS.get("gm")(tiny.family, **GM_FAST, bases="nearest")
    with pytest.raises(PoisonbenchError, match="setup file"):
        gm.aim(aim(tiny), fixed=True)


def test_nearest_bases_reach_the_record(tiny, tiny_path, tmp_path, one_thread):
    from poisonbench.experiment.defend import defend
    from poisonbench.experiment.spec import DefendSpec

    spec = DefendSpec(dataset=tiny_path, recipe="quick",
                      recipe_overrides={"epochs": 1}, attack="gm", budget=BUDGET, results=str(tmp_path),
                      attack_params={"iterations": 1, "restarts": 1, "bases": "nearest"})
    (outcome,) = defend(spec)
    poison = outcome.record["config"]["poison"]
    assert poison["params"]["bases"] == "nearest"
    assert poison["poisoned"] == int(BUDGET * len(tiny.train) + 1e-9)


def member_models(data, seeds=(1, 2)):
    from poisonbench.engine.models import build_model

    return [build_model("convnet", data, seed=s).eval().requires_grad_(False) for s in seeds]


def test_ensemble_loss_is_forests_mean_of_the_members_matching_losses(tiny):
    from poisonbench.attacks.gm import EnsembleMatching

    models = member_models(tiny)
    target = tiny.test.x[:1].float() / 255
    x = (tiny.train.x[:6].float() / 255).requires_grad_(True)
    y = tiny.train.y[:6]
    matching = EnsembleMatching(models, target, 1)
    loss = matching.loss(x, y)
    (grad,) = torch.autograd.grad(loss, x)

    def flat_grad(model, inputs, labels, create_graph):
        params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
        names = [n for n, _ in model.named_parameters()]
        out = torch.func.functional_call(model, dict(zip(names, params, strict=True)), (inputs,))
        return torch.cat([g.flatten() for g in torch.autograd.grad(F.cross_entropy(out, labels), params,
                                                                    create_graph=create_graph)])

    x2 = x.detach().clone().requires_grad_(True)
    by_hand = [1 - F.cosine_similarity(flat_grad(m, x2, y, True), flat_grad(m, target, torch.tensor([1]), False),
                                       dim=0) for m in models]
    assert torch.allclose(loss, (by_hand[0] + by_hand[1]) / 2, atol=1e-6)
    member_grads = [torch.autograd.grad(h, x2, retain_graph=True)[0] for h in by_hand]
    assert torch.allclose(grad, (member_grads[0] + member_grads[1]) / 2, atol=1e-6)
    # forest sums the members' gradients (one backward per model): the signed step is the same
    assert torch.equal(grad.sign(), (member_grads[0] + member_grads[1]).sign())


def test_ensemble_of_two_trains_two_distinct_surrogates_and_names_them(tiny, results, monkeypatch, one_thread):
    from safetensors.torch import load_file

    from poisonbench.attacks import forest

    lrs = []
    run = forest.Brew.run

    def spy(self, *args, **kwargs):
        lrs.append(self.lr)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(forest.Brew, "run", spy)
    one, _ = craft(tiny, results)
    two, poison = craft(tiny, results, ensemble=2)
    assert one.params["ensemble"] == 1 and two.params["ensemble"] == 2
    assert one.poison_id != two.poison_id and one.surrogate != two.surrogate
    assert lrs == [0.1, 0.05]  # forest's tau0 = tau / ensemble
    gm = ATTACKS.get("gm")(tiny.family, **GM_FAST, ensemble=2)
    specs = gm.member_specs(tiny)
    assert len(specs) == 2 and specs[0]["seed"] != specs[1]["seed"]
    from poisonbench.attacks.surrogate import surrogate_path
    from poisonbench.core.hashing import short_hash

    weights = []
    for s in specs:
        directory = surrogate_path(results, short_hash(s))
        files = sorted(directory.glob("*.safetensors")) if directory.is_dir() else [directory]
        weights.append(load_file(files[0]))
    assert weights[0].keys() == weights[1].keys()
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert len(poison.manifest["attack_info"]["ensemble_info"]) == 1


def test_ensemble_of_one_is_todays_gm(tiny, results, monkeypatch, one_thread):
    from poisonbench.attacks import gm as gm_module

    default, mine = craft(tiny, results)
    explicit, _ = craft(tiny, results, ensemble=1)
    assert explicit.poison_id == default.poison_id
    monkeypatch.setattr(gm_module, "EnsembleMatching",  # today's objective: one GradientMatching
                        lambda models, target, intended: gm_module.GradientMatching(models[0], target, intended))
    today, _ = poisons.craft(default, tiny, results, torch.device("cpu"), force=True)
    assert torch.equal(mine.delta, today.delta)


def test_ensemble_needs_the_scratch_victim(tiny):
    with pytest.raises(PoisonbenchError, match="scratch"):
        ATTACKS.get("gm")(tiny.family, scenario="transfer", ensemble=2)
