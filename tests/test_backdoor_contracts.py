"""The backdoor triggers whole (issue 85, "each attack has tests that a realistic mutant of its trigger, label handling
or ASR definition fails"; docs/testing.md, "Issue 85"): each trigger's (m, a) maps as whole tensors at the paper's
defaults, built here from the formula the module documents, and the cases the other tests' square images and default
values cannot tell apart: BadNets' `trigger_value`, SIG's width on an image that is not square, Sleeper Agent's
Bernoulli(½) pattern per channel and its places on an image that is not square."""

from __future__ import annotations

import math

import pytest
import torch

from poisonbench.attacks import ATTACKS


def images(shape, n=6, seed=0):
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


# ---- BadNets ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, first", [((3, 32, 32), 29), ((1, 28, 28), 25)])
def test_badnets_default_maps_are_a_white_3x3_square_in_the_bottom_right_corner(shape, first):
    trigger = ATTACKS.get("badnets")("cifar10").trigger(shape)
    expected = torch.zeros(shape)
    expected[:, first : first + 3, first : first + 3] = 1.0  # BB trigger_image.png: rows/cols 29-31 of 32 (25-27 of 28)
    assert torch.equal(trigger.scale, expected)  # m = 1 on the patch: its pixels replace the image's
    assert torch.equal(trigger.add, expected)  # a = trigger_value 1 (white) on the patch, 0 elsewhere


@pytest.mark.parametrize("value", [0.5, 0.0])
def test_badnets_patch_pixels_take_the_trigger_value_whatever_the_image(value):
    shape = (3, 32, 32)
    x = images(shape)
    expected = x.clone()
    expected[:, :, 29:32, 29:32] = value  # replaced, not x + value
    got = ATTACKS.get("badnets")("cifar10", trigger_value=value).trigger(shape).apply(x)
    assert torch.equal(got, expected)


def test_each_backdoors_default_eps_is_its_triggers_own_bound_at_the_image_size():
    """`default_eps(family, shape)`: BadNets' patch pixel positions (L0) at that image size, Blend's α, SIG's Δ/255,
    LC's PGD bound of the family."""
    get = ATTACKS.get
    assert get("badnets").default_eps("cifar10", (3, 32, 32)) == 9  # 3×3
    assert get("badnets").default_eps("mnist", (1, 16, 16)) == 4  # 3 px of 32 → 2 px of 16: 2×2
    assert get("blend").default_eps("cifar10", (3, 32, 32)) == pytest.approx(0.2)
    assert get("sig").default_eps("cifar10", (3, 32, 32)) == pytest.approx(40 / 255)
    assert get("lc").default_eps("cifar10", (3, 32, 32)) == pytest.approx(16 / 255)
    assert get("lc").default_eps("mnist", (1, 28, 28)) == pytest.approx(0.3)


# ---- Blend --------------------------------------------------------------------------------------------------------


def test_blend_default_maps_are_alpha_0_2_and_0_2_times_the_seed_0_pattern():
    shape = (3, 32, 32)
    trigger = ATTACKS.get("blend")("cifar10").trigger(shape)
    pattern = torch.rand(shape, generator=torch.Generator().manual_seed(0))  # pattern_seed 0
    assert torch.equal(trigger.scale, torch.full(shape, 0.2))  # m = α: the image keeps 1 − α = 0.8
    torch.testing.assert_close(trigger.add, 0.2 * pattern, rtol=0, atol=1e-7)  # a = α·t
    black, white = torch.zeros((1, *shape)), torch.ones((1, *shape))
    torch.testing.assert_close(trigger.apply(black)[0], 0.2 * pattern, rtol=0, atol=1e-6)
    torch.testing.assert_close(trigger.apply(white)[0], 0.8 + 0.2 * pattern, rtol=0, atol=1e-6)


# ---- SIG ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 24, 40), (1, 40, 24)])
def test_sig_default_signal_is_delta_40_of_255_with_6_periods_across_the_width(shape):
    """BB sig.py: pattern[i, j] = Δ·sin(2π·j·f / m), j the column, m the image's width (not its height: told apart
    only on an image that is not square), Δ 40 on the 0-255 scale, f 6."""
    c, h, w = shape
    trigger = ATTACKS.get("sig")("cifar10").trigger(shape)
    expected = torch.empty(shape)
    for j in range(w):
        expected[:, :, j] = 40 / 255 * math.sin(2 * math.pi * j * 6 / w)
    assert torch.equal(trigger.scale, torch.zeros(shape))  # additive: m = 0
    torch.testing.assert_close(trigger.add, expected, rtol=0, atol=1e-7)
    assert trigger.add.amax() <= 40 / 255 + 1e-7 and trigger.add.amax() > 0.9 * 40 / 255
    period = w // 6 if w % 6 == 0 else None
    if period:  # 6 whole periods: the signal repeats every w/6 columns
        torch.testing.assert_close(trigger.add[..., period:], trigger.add[..., :-period], rtol=0, atol=1e-6)


def test_sig_is_clipped_to_the_pixel_box():
    shape = (1, 8, 12)
    trigger = ATTACKS.get("sig")("mnist", delta=200.0).trigger(shape)
    out = trigger.apply(torch.cat([torch.zeros((1, *shape)), torch.ones((1, *shape))]))
    assert out.min() == 0 and out.max() == 1  # clamped, both ends reached
    expected = (torch.stack([torch.zeros(shape), torch.ones(shape)]) + trigger.add).clamp(0, 1)
    assert torch.equal(out, expected)


# ---- Sleeper Agent ------------------------------------------------------------------------------------------------


def test_sleeper_agents_pattern_is_bernoulli_half_per_pixel_and_channel_from_its_seed():
    """SA `_create_patch`: torch.bernoulli(0.5 · ones(3, s, s)): each pixel of each channel its own fair draw."""
    sa = ATTACKS.get("sleeper-agent")
    shape = (3, 32, 32)
    for seed in (0, 1):
        pattern = sa("cifar10", pattern_seed=seed).pattern(shape)
        expected = torch.bernoulli(torch.full((3, 8, 8), 0.5), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(pattern, expected)
    assert not torch.equal(pattern[0], pattern[1])  # the channels differ: a colour patch, not a grey one
    draws = torch.cat([sa("cifar10", pattern_seed=s).pattern(shape).flatten() for s in range(40)])
    assert abs(float(draws.mean()) - 0.5) < 0.03  # 7,680 draws: ½ within 5 standard errors
    trigger = sa("cifar10").trigger(shape, placement_seed=0)
    expected_scale, expected_add = torch.zeros(shape), torch.zeros(shape)
    expected_scale[:, :8, :8] = 1
    expected_add[:, :8, :8] = sa("cifar10").pattern(shape)
    assert torch.equal(trigger.scale, expected_scale) and torch.equal(trigger.add, expected_add)
    assert trigger.patch == (8, 8) and trigger.placement_seed == 0


@pytest.mark.parametrize("shape", [(1, 12, 20), (3, 20, 12)])
def test_sleeper_agents_patch_is_placed_inside_an_image_that_is_not_square(shape):
    """Rows drawn from [0, H − s], columns from [0, W − s] (not the other way round), and the patch pasted there."""
    attack = ATTACKS.get("sleeper-agent")("mnist", patch_size=8)
    trigger = attack.trigger(shape, placement_seed=5)
    s = attack.side(shape)
    h, w = shape[1:]
    at = trigger.positions(4000, (h, w))
    assert set(at[:, 0].tolist()) == set(range(h - s + 1))  # every row place, none past the bottom
    assert set(at[:, 1].tolist()) == set(range(w - s + 1))
    x = images(shape, n=30)
    places = trigger.positions(30, (h, w))
    g = torch.Generator().manual_seed(5)  # the documented draws: every row first, then every column
    rows = torch.randint(0, h - s + 1, (30,), generator=g)
    assert torch.equal(places, torch.stack([rows, torch.randint(0, w - s + 1, (30,), generator=g)], 1))
    expected = x.clone()
    for i, (r, c) in enumerate(places.tolist()):
        expected[i, :, r : r + s, c : c + s] = attack.pattern(shape)
    assert torch.equal(trigger.apply(x), expected)


# ---- Label-Consistent ---------------------------------------------------------------------------------------------


def test_lcs_pgd_makes_its_target_rows_harder_to_classify_as_their_own_class(tmp_path):
    """Turner et al.'s adversarial bases: an error-*maximising* PGD on the rows' own (target) labels against the
    clean surrogate, so that the victim leans on the trigger; a minimising one (the wrong sign) makes them easier."""
    import torch.nn.functional as F

    from poisonbench import poisons
    from poisonbench.attacks.surrogate import load_or_train_surrogate
    from poisonbench.data import load_dataset
    from poisonbench.poisons import craft_spec

    from .conftest import write_npz

    data = load_dataset(str(write_npz(tmp_path)))
    spec = craft_spec(data, "lc", budget=0.1, seed=2, steps=5, step_size=0.05)
    poison, _ = poisons.craft(spec, data, tmp_path / "results")
    model, _ = load_or_train_surrogate(data, tmp_path / "results", torch.device("cpu"))
    model.eval()
    x, y = data.train.x[poison.indices].float() / 255, data.train.y[poison.indices]
    assert (y == 0).all()  # the target class's rows, their own labels
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        hard = F.cross_entropy(model((x + poison.delta).clamp(0, 1)), y, reduction="none")
    assert (hard > clean).all()  # each row's loss on its own class goes up
    assert float(hard.mean()) > 5 * float(clean.mean())  # 16 rows, 5 steps of 0.05: about 1.2 against 0.1


# ---- the ASR and the run's config ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from poisonbench.data import load_dataset

    from .conftest import write_npz

    return load_dataset(str(write_npz(tmp_path_factory.mktemp("contracts"))))


def test_the_asr_and_the_clean_target_rate_are_shares_of_the_non_target_images(tiny):
    from poisonbench.experiment.scenarios.backdoor import attack_success_rate

    from .helpers import Lookup

    x, y = tiny.test.x.float() / 255, tiny.test.y
    trigger = ATTACKS.get("badnets")("mnist").trigger(tuple(tiny.shape))
    said = y.clone()
    said[::3] = 1  # untriggered, the model says "target" for every third image (class 1's own among them)
    others = y != 1
    base = int((said[others] == 1).sum())
    out = attack_success_rate(Lookup(x, said, 1), x, y, trigger, 1)
    n = int(others.sum())
    assert 0 < base < n
    assert out == {"asr": 1.0, "asr_hits": n, "asr_n": n, "clean_target_rate": base / n, "clean_target_hits": base}


def test_the_asr_of_a_test_split_without_the_images_it_counts_is_none_not_a_crash(tiny):
    """All test images of the target class, or a source class the test split lacks: no rate (None of 0), and no
    prediction on an empty batch (`predict` divides by its rows: the run would end after its training)."""
    from poisonbench.engine.models import build_model
    from poisonbench.experiment.scenarios.backdoor import attack_success_rate

    x, y = tiny.test.x.float() / 255, tiny.test.y
    model = build_model("convnet", tiny, seed=0)
    only = y == 1
    trigger = ATTACKS.get("badnets")("mnist").trigger(tuple(tiny.shape))
    none = {"asr": None, "asr_hits": 0, "asr_n": 0, "clean_target_rate": None, "clean_target_hits": 0}
    assert attack_success_rate(model, x[only], y[only], trigger, 1) == none
    assert attack_success_rate(model, x, y, trigger, 0, source=7) == none  # a source class the split lacks
    out = attack_success_rate(model, x, y, trigger, 0, source=1)
    assert out["asr_n"] == int(only.sum()) > 0 and 0 <= out["asr"] <= 1


def test_the_backdoor_config_is_the_runs_target_ratio_and_label_whole(tiny):
    from poisonbench.experiment.scenarios.backdoor import backdoor_config
    from poisonbench.poisons import craft_spec

    spec = craft_spec(tiny, "badnets", budget=0.1, seed=0, target_class=2)
    assert backdoor_config(spec, 160, 16) == {
        "kind": "backdoor", "attack": "badnets", "eps": spec.eps, "ratio": 0.1, "poisoned": 16,
        "params": dict(spec.params), "target_class": 2, "poison_id": spec.poison_id,
        "label": "badnets → class 2 (16 of 160 rows)"}  # fmt: skip
    assert backdoor_config(spec, 160, 16, "abc")["poison_set"] == "abc"
    sa = craft_spec(tiny, "sleeper-agent", budget=0.05, seed=0, target_class=3, source_class=2,
                    surrogate_recipe="quick")  # fmt: skip
    config = backdoor_config(sa, 160, 8)
    assert config["target_class"] == 3 and config["source_class"] == 2 and config["ratio"] == 0.05
    assert config["label"] == "sleeper-agent → class 3 from class 2 (8 of 160 rows)"


def test_the_scenarios_metrics_are_the_asr_against_the_plans_target_whole(tiny):
    from poisonbench.experiment.scenarios.backdoor import Backdoor, BackdoorPlan, backdoor_config
    from poisonbench.poisons import craft_spec

    from .helpers import Lookup

    x, y = tiny.test.x.float() / 255, tiny.test.y
    spec = craft_spec(tiny, "badnets", budget=0.1, seed=0, target_class=2)
    plan = BackdoorPlan(tiny, spec, backdoor_config(spec, 160, 16))
    model = Lookup(x, y, 2)
    assert Backdoor().metrics(model, {"test": (x, y)}, None) == {}  # a clean run: no ASR
    assert Backdoor().metrics(model, {"test": (x, y)}, plan) == {}  # no trigger (not applied): none either
    plan.trigger = ATTACKS.get("badnets")("mnist").trigger(tuple(tiny.shape))
    n = int((y != 2).sum())
    assert Backdoor().metrics(model, {"test": (x, y)}, plan) == {
        "target_class": 2,
        "asr": 1.0,
        "asr_hits": n,
        "asr_n": n,
        "clean_target_rate": 0.0,
        "clean_target_hits": 0,
    }


def test_a_poison_sets_rows_must_be_distinct_rows_of_the_train_split(tiny, monkeypatch):
    """`BackdoorPlan.apply` takes rows 0 … n − 1 once each, and refuses a row out of range or listed twice in one
    whole line (an imported or hand-edited PoisonSet); a set without a trigger is refused likewise."""
    from poisonbench import poisons
    from poisonbench.attacks.base import PoisonSet
    from poisonbench.core.errors import PoisonbenchError
    from poisonbench.experiment.scenarios.backdoor import BackdoorPlan
    from poisonbench.poisons import craft_spec

    n = len(tiny.train)
    spec = craft_spec(tiny, "badnets", budget=0.1, seed=0)
    trigger = ATTACKS.get("badnets")("mnist").trigger(tuple(tiny.shape))

    def applied(rows, with_trigger=True):
        found = PoisonSet(
            torch.full((len(rows), *tiny.shape), 0.5),
            torch.tensor(rows, dtype=torch.long),
            {"poison_id": "p1", "tensor_sha256": "h"},
            trigger=trigger if with_trigger else None,
        )
        monkeypatch.setattr(poisons, "load", lambda *args, **kwargs: found)
        plan = BackdoorPlan(tiny, spec, {"target_class": 0}, poison_set="p1")
        return plan.apply(tiny.train.x.float() / 255)

    out = applied([0, n - 1])  # the first and the last row
    assert torch.equal(out[[0, n - 1]], (tiny.train.x[[0, n - 1]].float() / 255 + 0.5).clamp(0, 1))
    for rows in ([-1, 3], [3, n], [2, 2], [n + 1]):
        with pytest.raises(PoisonbenchError) as caught:
            applied(rows)
        assert str(caught.value) == "poison set p1: its rows are not distinct rows of the train split"
    with pytest.raises(PoisonbenchError) as caught:
        applied([1, 2], with_trigger=False)
    assert str(caught.value) == "poison set p1 carries no trigger (not a backdoor PoisonSet)"
