"""Sleeper Agent (issue 85; attacks/sleeper_agent.py, docs/fidelity.md "sleeper-agent"): contracts against the
official code's rules, each built independently here: the poisons (target-class rows, labels kept, δ at the L∞
bound, no patch on any train row), the max-gradient selection, the objective (gm's matching loss against the
patched source images' gradient), the retraining schedule and its fresh initialisation, the patch's placement, the
ASR over the source class only, the resume, and `craft` / `defend` end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from poisonbench import poisons
from poisonbench.attacks import ATTACKS, backdoor_attacks
from poisonbench.attacks import sleeper_agent as sa
from poisonbench.attacks.base import AttackContext, budget_count
from poisonbench.attacks.gm import matching_loss
from poisonbench.core.errors import PoisonbenchError
from poisonbench.core.hashing import derived_seed
from poisonbench.core.seeds import is_attacker_seed
from poisonbench.data import load_dataset
from poisonbench.engine.models import build_model
from poisonbench.experiment.scenarios.backdoor import BackdoorPlan, attack_success_rate, backdoor_config
from poisonbench.poisons import craft_spec

from .conftest import craft_killed_at_call, one_line_error, write_npz
from .helpers import Lookup

SA_NAME = "sleeper-agent"
# tiny schedules: the quick recipe's surrogate (10 epochs on 160 rows), one-epoch retrains
FAST = {"surrogate_recipe": "quick", "retrain_epochs": 1}
EPS = 16 / 255


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 4-class 16×16 grey split (160 train rows, 40 a class) and a results root that caches its surrogate."""
    root = tmp_path_factory.mktemp("sleeper")
    return load_dataset(str(write_npz(root))), root / "results"


def context(data, results, budget=0.05, seed=1, **params):
    spec = craft_spec(data, SA_NAME, budget=budget, seed=seed, **{**FAST, **params})
    attack = ATTACKS.get(SA_NAME)(data.family, **spec.params)
    ctx = AttackContext(data, torch.empty(0, dtype=torch.long), spec.eps, budget, seed, torch.device("cpu"),
                        results_root=results, loader=attack.load_surrogate)
    return spec, attack, ctx


def test_it_is_a_clean_label_backdoor_with_the_official_defaults():
    assert SA_NAME in backdoor_attacks()
    cls = ATTACKS.get(SA_NAME)
    for family in ("mnist", "cifar10"):
        p = cls(family).params
        assert p == {"target_class": 0, "source_class": 1, "patch_size": 8, "pattern_seed": 0, "iterations": 250,
                     "restarts": 1, "lr": 0.1, "pbatch": 512, "augment": True, "retrain_iter": 50,
                     "retrain_epochs": None, "surrogate_recipe": "forest"}
        assert cls.default_eps(family, (1, 28, 28)) == 16 / 255  # SA --eps 16
    assert cls.default_budget() == 0.01 and cls.label_mode == "clean" and cls.uses_surrogate
    assert cls("mnist").side((1, 28, 28)) == 7 and cls("cifar10").side((3, 32, 32)) == 8


# ---- the poisons ------------------------------------------------------------------------------------------------

def test_poisons_are_target_rows_with_their_labels_at_the_bound_and_no_train_row_is_patched(tiny, tmp_path):
    data, results = tiny
    spec = craft_spec(data, SA_NAME, budget=0.05, seed=2, iterations=4, retrain_iter=2, **FAST)
    assert spec.eps == EPS
    poison, _ = poisons.craft(spec, data, results)
    k = budget_count(0.05, len(data.train))
    assert len(poison.indices) == k and (data.train.y[poison.indices] == 0).all()  # target class 0's rows only
    assert poison.labels is None  # clean label: every label kept
    size = poison.delta.abs().amax()
    assert size <= EPS + 1e-6 and size >= EPS - 1e-6  # within ε, and δ reaches it
    x = data.train.x.float() / 255
    assert (x[poison.indices] + poison.delta).min() >= -1e-6 and (x[poison.indices] + poison.delta).max() <= 1 + 1e-6
    # what the victim trains on: the clean split except x + δ on the poisons, and not one patched pixel anywhere
    plan = BackdoorPlan(data, spec, {"target_class": 0})
    trained = plan.apply(x.clone(), results_root=results)
    rows = poison.indices
    torch.testing.assert_close(trained[rows], (x[rows] + poison.delta).clamp(0, 1), rtol=0, atol=0)
    others = torch.ones(len(x), dtype=torch.bool)
    others[rows] = False
    assert torch.equal(trained[others], x[others])
    assert torch.equal(plan.relabel(data.train.y), data.train.y)
    assert poison.manifest["backdoor"]["hidden_trigger"] and not poison.manifest["backdoor"].get("train_trigger")
    assert poison.manifest["backdoor"]["source_class"] == 1 and poison.trigger.placement_seed is not None


def test_the_poisons_are_the_largest_gradient_rows_of_the_target_class(tiny):
    data, results = tiny
    spec, attack, ctx = context(data, results, budget=0.05)
    rows = attack.rows_for(ctx)
    model = copy.deepcopy(ctx.surrogate()).eval().requires_grad_(True)
    pool = (data.train.y == 0).nonzero().flatten()
    norms = []
    for r in pool.tolist():  # one image at a time, its own backward: SA kettle_base.py `select_poisons`
        image = data.train.x[r:r + 1].float() / 255
        loss = F.cross_entropy(model(image), data.train.y[r:r + 1])
        grads = torch.autograd.grad(loss, [p for p in model.parameters()])
        norms.append(float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads))))
    order = sorted(range(len(pool)), key=lambda i: norms[i])
    expected = pool[order[-budget_count(0.05, len(data.train)):]].sort().values
    assert torch.equal(rows, expected)
    direct = torch.tensor(norms, dtype=torch.float64)
    torch.testing.assert_close(sa.gradient_norms(ctx.surrogate(), data.train.x[pool].float() / 255,
                                                 data.train.y[pool]), direct, rtol=1e-4, atol=1e-7)


def test_the_raw_pool_is_at_most_5000_rows_drawn_from_the_seed(tiny, monkeypatch):
    data, _ = tiny
    attack = ATTACKS.get(SA_NAME)(data.family)
    assert torch.equal(attack.raw_pool(data, 3), (data.train.y == 0).nonzero().flatten())
    monkeypatch.setattr(sa, "RAW_POISONS", 10)  # SA --num_raw_poisons: a class larger than the pool
    pool = attack.raw_pool(data, 3)
    assert len(pool) == 10 and (data.train.y[pool] == 0).all() and torch.equal(pool, attack.raw_pool(data, 3))
    assert not torch.equal(pool, attack.raw_pool(data, 4))


# ---- the objective ----------------------------------------------------------------------------------------------

def pasted(images, pattern, positions):
    """The images with `pattern` (C×s×s) pasted at `positions` (row, col per image), one image at a time."""
    out = images.clone()
    s = pattern.shape[-1]
    for i, (r, c) in enumerate(positions.tolist()):
        out[i, :, r:r + s, c:c + s] = pattern
    return out


@pytest.mark.parametrize("chunk", [500, 7])  # one chunk, and uneven chunks of the 40 source rows (7·5 + 5)
def test_the_objective_is_gms_matching_loss_against_the_patched_source_gradient(tiny, monkeypatch, chunk):
    data, results = tiny
    monkeypatch.setattr(sa, "SOURCE_CHUNK", chunk)
    spec, attack, ctx = context(data, results, seed=5)
    surrogate = ctx.surrogate()
    sources = attack.patched_sources(ctx)
    matching = sa.SourceMatching(surrogate, sources, attack.target_class)

    # the patched source images, built here: class 1's train rows, the pattern pasted where the stream says
    rows = (data.train.y == 1).nonzero().flatten()
    clean = data.train.x[rows].float() / 255
    trigger = attack.trigger(tuple(data.shape), derived_seed(5, "sleeper-agent:source-patches"))
    expected_sources = pasted(clean, attack.pattern(tuple(data.shape)), trigger.positions(len(rows), (16, 16)))
    assert torch.equal(sources, expected_sources)

    model = copy.deepcopy(surrogate).eval().requires_grad_(True)
    params = list(model.parameters())
    target = torch.zeros(len(rows), dtype=torch.long)  # towards the target class 0, over every source image at once
    g_s = torch.autograd.grad(F.cross_entropy(model(expected_sources), target), params)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in g_s))
    x = data.train.x[:6].float() / 255 + 0.01
    y = torch.zeros(6, dtype=torch.long)
    g_p = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    expected = matching_loss(list(g_p), list(g_s), norm)
    torch.testing.assert_close(matching.loss(x, y), expected, rtol=1e-5, atol=1e-6)


# ---- the retraining -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("iterations, every, after", [
    (7, 2, [2, 4]),  # never after iteration 0 nor the last (6)
    (5, 1, [1, 2, 3]),
    (6, 50, []),
])
def test_the_surrogate_is_retrained_from_scratch_every_retrain_iter_iterations(tiny, monkeypatch, iterations,
                                                                                 every, after):
    from poisonbench.engine import training

    data, results = tiny
    spec, attack, ctx = context(data, results, seed=7, iterations=iterations, retrain_iter=every)
    ctx.indices = attack.rows_for(ctx)
    surrogate = ctx.surrogate()
    done = []  # iterations finished, from the progress reports
    ctx.progress = lambda description, completed, total: done.append(completed) if " · restart " in description \
        else None
    calls, real = [], training.train

    def recorded(model, tx, ty, *args, **kwargs):
        calls.append({"after": done[-1] - 1, "init": copy.deepcopy(model.state_dict()), "seed": kwargs["seed"],
                      "tx": tx.clone(), "ty": ty.clone(), "epochs": args[2].epochs})
        return real(model, tx, ty, *args, **kwargs)

    monkeypatch.setattr(training, "train", recorded)
    delta = attack.perturb(ctx)
    assert [c["after"] for c in calls] == after  # SA witch_base.py: step % retrain_iter == 0, not 0, not T − 1
    assert attack.training_summary["retrains"] == len(after)
    assert [sa.retrain_due(i, iterations, every) for i in range(iterations)] == [i in after for i in range(iterations)]
    seeds = [c["seed"] for c in calls]
    assert len(set(seeds)) == len(seeds) and all(is_attacker_seed(s) for s in seeds)
    x = data.train.x.float() / 255
    for k, call in enumerate(calls, start=1):
        assert call["seed"] == attack.retrain_seed(data, 7, 0, k)
        fresh = build_model("convnet", data, seed=call["seed"]).state_dict()  # a new init from its own seed
        assert all(torch.equal(call["init"][name], fresh[name]) for name in fresh)
        assert not all(torch.equal(call["init"][name], v) for name, v in surrogate.state_dict().items())
        assert call["epochs"] == 1  # retrain_epochs
        # trained on the poisoned split: x + δ (of that moment) on the poisons, the rest and every label clean
        others = torch.ones(len(x), dtype=torch.bool)
        others[ctx.indices] = False
        assert torch.equal(call["tx"][others], x[others]) and torch.equal(call["ty"], data.train.y)
        moved = (call["tx"][ctx.indices] - x[ctx.indices]).abs().amax()
        assert 0 < moved <= EPS + 1e-6
    assert delta.abs().amax() <= EPS + 1e-6


def test_without_a_retrain_the_loop_is_the_brews(tiny):
    """Retraining off, the attack's loop is forest's brew step for step (same stream, draws, step and loss)."""
    from poisonbench.attacks.forest import Brew

    data, results = tiny
    spec, attack, ctx = context(data, results, seed=9, iterations=5, retrain_iter=50)
    ctx.indices = attack.rows_for(ctx)
    x = data.train.x[ctx.indices].float() / 255
    y = data.train.y[ctx.indices]
    sources = attack.patched_sources(ctx)
    matching = sa.SourceMatching(ctx.surrogate(), sources, 0)
    ours = attack.restart(ctx, x, y, sources, ctx.surrogate(), 0)
    brew = Brew(5, 1, 0.1, 512, True, "forest")
    theirs = brew.restart(ctx, SA_NAME, x, lambda inputs, a, b: matching.loss(inputs, y[a:b]), 0)
    assert torch.equal(ours[0], theirs[0]) and ours[1] == theirs[1]


def test_a_killed_craft_resumes_after_its_last_retrain_to_the_same_poisons(tiny, tmp_path, monkeypatch):
    data, results = tiny
    spec = craft_spec(data, SA_NAME, budget=0.05, seed=4, iterations=6, retrain_iter=2, **FAST)
    whole, _ = poisons.craft(spec, data, tmp_path / "whole")
    work = tmp_path / "interrupted"
    (work / "surrogates").mkdir(parents=True)
    for f in (tmp_path / "whole" / "surrogates").iterdir():
        (work / "surrogates" / f.name).write_bytes(f.read_bytes())
    # the 3rd objective is built after retrain 2 (at iteration 4), before its state is saved: retrain 1's is kept
    craft_killed_at_call(monkeypatch, sa, "SourceMatching", 3, spec, data, work)
    partial = work / "partial" / spec.poison_id
    assert [p.name for p in partial.glob("segment-*.safetensors")] == ["segment-0000.safetensors"]
    resumed, cached = poisons.craft(spec, data, work)
    assert not cached and torch.equal(resumed.delta, whole.delta) and torch.equal(resumed.indices, whole.indices)
    assert resumed.manifest["attack_info"]["retrains"] == 1  # only the one after the resume point ran again


# ---- the trigger ------------------------------------------------------------------------------------------------

def test_the_patch_goes_to_a_seeded_uniform_place_per_image_inside_the_image():
    attack = ATTACKS.get(SA_NAME)("mnist")
    shape = (1, 16, 16)
    trigger = attack.trigger(shape, placement_seed=11)
    s = attack.side(shape)
    at = trigger.positions(3000, (16, 16))
    assert at.min() >= 0 and at.max() <= 16 - s  # in bounds
    assert set(at[:, 0].tolist()) == set(at[:, 1].tolist()) == set(range(16 - s + 1))  # every place, both axes
    assert len({tuple(p) for p in at[:50].tolist()}) > 30  # a place per image, not one for all
    assert torch.equal(at, trigger.positions(3000, (16, 16)))  # the seed fixes them
    assert not torch.equal(at, attack.trigger(shape, placement_seed=12).positions(3000, (16, 16)))
    x = torch.rand((40, *shape), generator=torch.Generator().manual_seed(0))
    out = trigger.apply(x)
    assert torch.equal(out, pasted(x, attack.pattern(shape), trigger.positions(40, (16, 16))))
    pattern = attack.pattern(shape)  # a Bernoulli(½) patch from pattern_seed
    assert set(pattern.unique().tolist()) <= {0.0, 1.0} and 0 < pattern.mean() < 1
    assert torch.equal(pattern, ATTACKS.get(SA_NAME)("mnist").pattern(shape))
    assert not torch.equal(pattern, ATTACKS.get(SA_NAME)("mnist", pattern_seed=1).pattern(shape))


def test_each_craft_draws_its_test_places_from_its_own_seed(tiny):
    data, results = tiny
    seeds = []
    for seed in (1, 1, 2):
        spec, attack, ctx = context(data, results, seed=seed, iterations=1)
        ctx.indices = attack.choose_rows(data, 0.05, seed)
        seeds.append(attack.craft(ctx).trigger.placement_seed)
    assert seeds[0] == seeds[1] != seeds[2]
    assert seeds[0] == derived_seed(1, "sleeper-agent:test-patches") != derived_seed(1, "sleeper-agent:source-patches")


def test_the_placed_trigger_roundtrips_through_the_store(tiny, tmp_path):
    from poisonbench.attacks.backdoor import Trigger

    data, results = tiny
    spec = craft_spec(data, SA_NAME, budget=0.05, seed=2, iterations=4, retrain_iter=2, **FAST)
    poison, _ = poisons.craft(spec, data, results)
    back = poisons.load(results, spec.poison_id, data).trigger
    assert back.placement_seed == poison.trigger.placement_seed and back.patch == poison.trigger.patch == (4, 4)
    x = data.test.x.float() / 255
    assert torch.equal(back.apply(x), poison.trigger.apply(x))
    assert Trigger.from_tensors({k: v for k, v in back.tensors().items()}).patch == (4, 4)
    assert "trigger_scale" not in back.tensors()  # a reader without placements finds no trigger, and refuses


# ---- the attack success rate ------------------------------------------------------------------------------------

def test_the_asr_counts_only_the_source_class_test_images(tiny):
    data, _ = tiny
    attack = ATTACKS.get(SA_NAME)(data.family)
    x, y = data.test.x.float() / 255, data.test.y
    trigger = attack.trigger(tuple(data.shape), 3)
    sources = int((y == 1).sum())
    assert 0 < sources < int((y != 0).sum())
    out = attack_success_rate(Lookup(x, y, 0), x, y, trigger, 0, source=1)
    assert out["asr_n"] == sources and out["asr_hits"] == sources and out["asr"] == 1.0
    assert out["clean_target_hits"] == 0
    # through the scenario: the config names the source class, and the metrics count its images
    spec = craft_spec(data, SA_NAME, budget=0.05, seed=0, **FAST)
    config = backdoor_config(spec, len(data.train), 2)
    assert config["source_class"] == 1 and "from class 1" in config["label"]
    from poisonbench.experiment.scenarios.backdoor import Backdoor

    plan = BackdoorPlan(data, spec, config)
    plan.trigger = trigger
    metrics = Backdoor().metrics(Lookup(x, y, 0), {"test": (x, y)}, plan)
    assert metrics["asr_n"] == sources and metrics["source_class"] == 1
    # another backdoor's config has no source class: its ASR stays over every non-target image
    badnets = craft_spec(data, "badnets", budget=0.1, seed=0)
    assert "source_class" not in backdoor_config(badnets, len(data.train), 16)


@pytest.mark.parametrize("params, needle", [
    ({"source_class": 0}, "both 0"),
    ({"source_class": 7}, "--source-class 7 is not a class"),
    ({"patch_size": 32, "pattern_seed": 0}, None),
])
def test_bad_classes_are_refused_in_one_line(tiny, params, needle):
    data, _ = tiny
    if needle is None:  # a 16-pixel patch on 16×16 images fits (one place)
        assert ATTACKS.get(SA_NAME)(data.family, **params).side(tuple(data.shape)) == 16
        craft_spec(data, SA_NAME, budget=0.05, **params)
        return
    with pytest.raises(PoisonbenchError, match=needle):
        craft_spec(data, SA_NAME, budget=0.05, **params)


# ---- the CLI end to end -----------------------------------------------------------------------------------------

def test_craft_and_defend_record_the_source_class_asr(cli, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    npz = write_npz(root, n=400)
    results = tmp_path / "results"
    schedule = ["--iterations", "3", "--retrain-iter", "1", "--retrain-epochs", "1", "--surrogate-recipe", "quick"]
    code, out, err = cli("craft", "--attack", SA_NAME, "--dataset", npz, "--results", results, *schedule)
    assert code == 0, err
    (manifest,) = [json.loads(p.read_text()) for p in (results / "poisons").glob("*/manifest.json")]
    data = load_dataset(str(npz))
    assert manifest["attack"] == SA_NAME and manifest["count"] == budget_count(0.01, len(data.train)) == 3
    assert manifest["attack_info"]["retrains"] == 1 and manifest["backdoor"]["source_class"] == 1
    code, out, err = cli("defend", "--attack", SA_NAME, "--dataset", npz, "--recipe", "quick", "--epochs", "1",
                         "--results", results, "--json", "--attack-params",
                         "iterations=3,retrain_iter=1,retrain_epochs=1,surrogate_recipe=quick")
    assert code == 0, err
    (record,) = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert record["config"]["scenario"] == "backdoor" and record["config"]["poison"]["source_class"] == 1
    assert record["config"]["poison"]["poison_id"] == manifest["poison_id"]  # trial 0 reused the craft
    metrics = record["metrics"]
    assert metrics["asr_n"] == int((data.test.y == 1).sum()) and metrics["source_class"] == 1
    assert metrics["asr"] == pytest.approx(metrics["asr_hits"] / metrics["asr_n"])


def test_a_source_class_equal_to_the_target_is_a_one_line_cli_error(cli, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    npz = write_npz(root)
    code, _, err = cli("craft", "--attack", SA_NAME, "--source-class", "0", "--dataset", npz, "--results",
                       tmp_path / "r")
    one_line_error(code, err, "--source-class", "--target-class")
