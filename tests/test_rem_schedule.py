"""REM's schedule (issue 67): the authors' `gen_rem.sh` schedule is the default in both families and reaches the
source model (its optimizer steps, the learning rate at each step, the inner steps and draws of each step); the
former CPU schedule is `--schedule budget`, recorded in the parameters (the poison id)."""

from __future__ import annotations

import pytest
import torch

from poisonbench.attacks import ATTACKS, rem
from poisonbench.attacks.base import AttackContext
from poisonbench.data import load_dataset

from .conftest import write_npz

EPS = 8 / 255


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_dataset(str(write_npz(tmp_path_factory.mktemp("rem-schedule"))))


def context(data, attack):
    return AttackContext(data, attack.choose_rows(data, 1.0, 3), EPS, 1.0, 3, torch.device("cpu"))


class Stop(Exception):
    pass


def test_the_official_schedule_reaches_the_source_model(tiny, monkeypatch, one_thread):
    """With no option given, the source model's loop runs gen_rem.sh's 5000 SGD steps (then the final noise), at lr
    0.1 until step 2000, 0.01 until 4000, then 0.001 (the budget schedule took 40, decayed every 16). The noise
    searches, the augmentation and the model's freezing are stubbed out, and the loop is stopped after step 4001:
    only the training loop's schedule is observed."""
    lrs, totals = [], set()

    def train_step(model, opt, x, y, clip=5.0):
        lrs.append(opt.param_groups[0]["lr"])
        if len(lrs) == 4001:
            raise Stop

    monkeypatch.setattr(rem, "train_step", train_step)
    monkeypatch.setattr(rem, "robust_min", lambda model, x, *a: torch.zeros_like(x))
    monkeypatch.setattr(rem, "adversarial", lambda model, x, *a: torch.zeros_like(x))
    monkeypatch.setattr(rem, "augment", lambda name, x, generator: x)
    monkeypatch.setattr(rem, "frozen", lambda model: model)
    attack = ATTACKS.get("rem")(tiny.family)
    assert attack.params["schedule"] == "official"
    ctx = context(tiny, attack)
    ctx.progress = lambda description, done, total: totals.add(total)
    with pytest.raises(Stop):
        attack.perturb(ctx)
    assert totals == {5000 + -(-len(ctx.indices) // 128)}  # the training steps, then the final noise batches
    assert lrs[0] == lrs[1999] == pytest.approx(0.1)
    assert lrs[2000] == lrs[3999] == pytest.approx(0.01)
    assert lrs[4000] == pytest.approx(0.001)


@pytest.mark.parametrize("schedule,u_steps,a_steps,samples", [("official", 10, 10, 5), ("budget", 5, 2, 1)])
def test_each_step_takes_the_schedules_inner_steps_and_draws(tiny, monkeypatch, one_thread, schedule, u_steps,
                                                             a_steps, samples):
    """One training step of the source model: δ_u takes `u_steps` descent steps, each on `samples` draws of the
    batch with an inner δ_a of `a_steps` ascent steps; then δ_a of the SGD step (official: 10, 5 draws, 10)."""
    calls = []

    def linf_pgd(model, x, y, radius, steps, step, init, maximize):
        calls.append((len(x), steps))
        return torch.zeros_like(x)

    def train_step(model, opt, x, y, clip=5.0):
        calls.append(("train", len(x)))
        raise Stop

    monkeypatch.setattr(rem, "linf_pgd", linf_pgd)
    monkeypatch.setattr(rem, "train_step", train_step)
    attack = ATTACKS.get("rem")(tiny.family, schedule=schedule, batch_size=8)
    with pytest.raises(Stop):
        attack.perturb(context(tiny, attack))
    assert calls == [(8 * samples, a_steps)] * u_steps + [(8, a_steps), ("train", 8)]


def test_the_budget_schedule_is_named_and_explicit_options_win():
    cls = ATTACKS.get("rem")
    budget = cls("mnist", schedule="budget").params
    assert {k: budget[k] for k in rem.OFFICIAL} == {"train_steps": 40, "lr_decay_every": 16, "u_steps": 5,
                                                    "a_steps": 2, "samples": 1}
    assert cls("cifar10", schedule="budget").params["samples"] == 2
    official = cls("mnist", u_steps=3).params
    assert {k: official[k] for k in rem.OFFICIAL} == {**rem.OFFICIAL, "u_steps": 3}
    assert cls("mnist").params != cls("mnist", schedule="budget").params  # two poison ids


def test_a_cut_or_altered_schedule_is_never_labelled_as_the_schedule_itself():
    """The label records and tables carry (`Attack.schedule_label`): the schedule's name, then each option it sets
    that has another value; a family-dependent option (the budget's draws) is compared only for a known family."""
    cls = ATTACKS.get("rem")
    assert cls.schedule_label(cls("mnist").params, "mnist") == "official"
    assert cls.schedule_label(cls("mnist", u_steps=10).params, "mnist") == "official"  # given, but the official 10
    assert cls.schedule_label(cls("mnist", train_steps=2590).params, "mnist") == "official+train_steps=2590"
    assert (cls.schedule_label(cls("mnist", train_steps=9, samples=2).params, "mnist")
            == "official+train_steps=9+samples=2")
    assert cls.schedule_label(cls("mnist", schedule="budget").params, "mnist") == "budget"
    two = cls("mnist", schedule="budget", samples=2).params
    assert cls.schedule_label(two, "mnist") == "budget+samples=2"
    assert cls.schedule_label(two, "cifar10") == "budget" and cls.schedule_label(two, None) == "budget"
    assert cls.schedule_label({}, "mnist") is None  # a PoisonSet made before REM had a schedule
    assert ATTACKS.get("pgd").schedule_label(ATTACKS.get("pgd")("mnist").params, "mnist") is None


def test_a_runs_record_names_the_cut_schedule_of_its_poisons():
    """`poison_entry` (the record's inputs) labels a PoisonSet by `schedule_label`, with the family of the dataset
    it was crafted on; an attack no longer registered keeps its `schedule` parameter as it is."""
    from poisonbench.experiment.run_inputs import poison_entry

    cut = {"dataset": "mnist-5k", "params": ATTACKS.get("rem")("mnist", train_steps=2590).params}
    assert poison_entry("rem", cut)["schedule"] == "official+train_steps=2590"
    two = {"dataset": "mnist-5k", "params": ATTACKS.get("rem")("mnist", schedule="budget", samples=2).params}
    assert poison_entry("rem", two)["schedule"] == "budget+samples=2"
    assert poison_entry("rem", {**two, "dataset": "cifar10"})["schedule"] == "budget"
    assert poison_entry("rem", {**two, "dataset": "mine.npz"})["schedule"] == "budget"
    assert poison_entry("gone", {"params": {"schedule": "fast"}})["schedule"] == "fast"
    assert "schedule" not in poison_entry("pgd", {"dataset": "mnist-5k", "params": {"steps": 10}})
