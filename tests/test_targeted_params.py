"""The targeted attacks' parameters in their canonical form (`TargetedAttack.settle_surrogate`: what reaches the
poison id): the surrogate's model and recipe overrides recorded only where they change something, the threat only in
transfer, the crafting augmentation from the attack's implementation and the resolved recipe; `aim`'s refusal of
nearest bases with fixed ones (issue 64: targeted.py's mutation run of 2026-11-28, commit 8c501ff)."""

from __future__ import annotations

import pytest
import torch

from poisonbench.attacks import ATTACKS
from poisonbench.attacks.base import AttackContext, Target
from poisonbench.attacks.targets import base_pool, draw_target, nearest_rows
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import resolve_recipe

from .conftest import write_npz


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_dataset(str(write_npz(tmp_path_factory.mktemp("targeted-params"), n=400)))


def test_the_surrogate_model_is_recorded_only_when_it_is_not_the_familys_default():
    assert ATTACKS.get("bp")("mnist").params["surrogate_model"] is None
    assert ATTACKS.get("bp")("mnist", surrogate_model="convnet").params["surrogate_model"] is None
    assert ATTACKS.get("bp")("mnist", surrogate_model="resnet18").params["surrogate_model"] == "resnet18"


def test_a_surrogate_override_is_recorded_only_where_it_changes_the_named_recipe():
    """The named recipe's own value is no override (None: one poison id for both spellings); another value is kept,
    a tuple as a list; the resolved recipe is the named one with the overrides."""
    quick, paper = resolve_recipe("mnist", "quick"), resolve_recipe("mnist", "paper")
    assert quick.epochs != paper.epochs
    for name, recipe in (("quick", quick), ("paper", paper)):
        same = ATTACKS.get("bp")("mnist", surrogate_recipe=name, surrogate_epochs=recipe.epochs)
        assert same.params["surrogate_epochs"] is None and same.surrogate_recipe() == recipe
    other = ATTACKS.get("bp")("mnist", surrogate_recipe="quick", surrogate_epochs=paper.epochs,
                              surrogate_milestones="5,8")
    assert other.params["surrogate_epochs"] == paper.epochs and other.params["surrogate_milestones"] == [5, 8]
    assert other.surrogate_recipe().epochs == paper.epochs and other.surrogate_recipe().name == "quick"
    assert other.params["surrogate_lr"] is None  # the fields not given stay unset


def test_the_threat_is_a_transfer_option_refused_elsewhere_in_one_line():
    assert ATTACKS.get("bp")("mnist").params["threat"] == "gray"
    assert ATTACKS.get("gm")("mnist").params.get("threat") is None
    with pytest.raises(PoisonbenchError) as raised:
        ATTACKS.get("gm")("mnist", threat="gray")
    assert str(raised.value) == ("--threat applies to the transfer scenario (a frozen pre-trained extractor), not "
                                 "--victim scratch")


def test_the_crafting_augmentation_follows_the_implementation_and_the_resolved_recipe():
    """forest's brew takes the crafting augmentation (on when the surrogate's recipe augments: forest's does, quick's
    does not); the toxic implementations have none."""
    for name in ("bp", "fc"):
        forest = ATTACKS.get(name)("mnist")
        assert forest.crafting_augment_applies() and forest.params["augment"] is True
        assert ATTACKS.get(name)("mnist", surrogate_recipe="quick").params["augment"] is False
        toxic = ATTACKS.get(name)("mnist", impl="toxic")
        assert not toxic.crafting_augment_applies() and toxic.params.get("augment") is None
    assert ATTACKS.get("gm")("mnist").crafting_augment_applies()


def test_nearest_bases_drop_the_drawn_rows_and_refuse_fixed_ones_in_one_line():
    attack = ATTACKS.get("bp")("mnist", bases="nearest")
    target = Target(3, 1, 2, rows=(5, 6))
    assert attack.aim(target) == Target(3, 1, 2)
    with pytest.raises(PoisonbenchError) as raised:
        attack.aim(target, fixed=True)
    assert str(raised.value) == ("bases=nearest chooses the poisons' bases; a setup file fixes them (give one or the "
                                 "other)")
    assert ATTACKS.get("bp")("mnist").aim(target, fixed=True) == target


@pytest.mark.parametrize("name", ["bp", "gm"])
def test_a_targets_bases_are_drawn_from_the_intended_class_of_the_scenarios_pool_or_kept_when_fixed(tiny, name):
    """`choose_rows`: ⌊budget·n⌋ rows of the intended class, drawn from the seed in the pool of the attack's scenario
    (BP: transfer's, GM: scratch's), as `draw_target` draws them; a target's fixed rows are its rows, sorted."""
    data = tiny
    attack = ATTACKS.get(name)("mnist")
    scenario = attack.params["scenario"]
    true_class = int(data.test.y[7])
    intended = (true_class + 1) % data.num_classes
    rows = attack.choose_rows(data, 0.02, 5, Target(7, true_class, intended))
    assert rows.tolist() == list(draw_target(data, 5, scenario, 0.02, 7, intended).rows)
    assert len(rows) == int(0.02 * len(data.train)) and set(data.train.y[rows].tolist()) == {intended}
    assert set(rows.tolist()) <= set(base_pool(data, intended, scenario).tolist())
    assert attack.choose_rows(data, 0.02, 5, Target(7, true_class, intended, rows=(9, 2))).tolist() == [2, 9]


def test_nearest_bases_come_from_the_scenarios_pool_nearest_the_target(tiny):
    """`bases` nearest (transfer): the ⌊budget·n⌋ rows of the intended class in the transfer set (the pool BP's
    victim fine-tunes on) nearest the target in the crafting model's features, never rows outside that pool."""
    data = tiny
    attack = ATTACKS.get("bp")("mnist", bases="nearest")
    true_class = int(data.test.y[7])
    intended = (true_class + 1) % data.num_classes
    pool = base_pool(data, intended, "transfer")
    assert len(pool) < int((data.train.y == intended).sum())  # the transfer set is part of the split
    ctx = AttackContext(data, torch.arange(0), 0.3, 0.02, 5, torch.device("cpu"),
                        target=Target(7, true_class, intended))
    ctx._surrogate = build_model("convnet", data, seed=11).eval().requires_grad_(False)
    rows = attack.rows_for(ctx)
    assert len(rows) == int(0.02 * len(data.train)) and set(rows.tolist()) <= set(pool.tolist())
    nearest, _ = nearest_rows(ctx._surrogate, data, pool, 7, len(rows), ctx.device)
    assert sorted(rows.tolist()) == sorted(nearest.tolist())
