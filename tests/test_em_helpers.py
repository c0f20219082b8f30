"""The helpers EM and REM share (`poisonbench.attacks.em`): the batch stream of shuffled epochs, EM's optimizer, the
frozen crafting model, the interrupted craft's state file, and the class-wise options a sample-wise EM leaves out
of its poison id; with a class-wise EM craft killed and resumed (issue 64: EM's mutation run)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from poisonbench import poisons
from poisonbench.attacks import ATTACKS, em
from poisonbench.attacks.base import AttackContext
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.poisons import craft_spec

from .conftest import craft_killed_at_call, write_npz

EPS = 8 / 255


def test_the_batch_stream_cuts_a_fresh_permutation_of_each_epoch_into_batches():
    """Batch k of epoch e = k // ⌈n / size⌉ is the next `size` rows (the last batch of an epoch short) of a
    permutation drawn from the domain, the base and e: every epoch another order, every domain another stream, and
    a stream that starts in epoch 1 (a resumed craft) gives the batches of one that went through epoch 0."""
    stream = em.BatchStream(10, 4, "em-order", {"seed": 1}, "cpu")
    epoch0 = [stream.batch(k) for k in range(3)]
    epoch1 = [stream.batch(k) for k in range(3, 6)]
    for epoch in (epoch0, epoch1):
        assert [len(b) for b in epoch] == [4, 4, 2]
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(epoch0), torch.cat(epoch1))
    resumed = em.BatchStream(10, 4, "em-order", {"seed": 1}, "cpu")
    assert torch.equal(resumed.batch(4), epoch1[1]) and torch.equal(resumed.batch(0), epoch0[0])
    other = em.BatchStream(10, 4, "rem-order", {"seed": 1}, "cpu")
    assert not torch.equal(torch.cat([other.batch(k) for k in range(3)]), torch.cat(epoch0))
    assert em.BatchStream(3, 8, "em-order", {"seed": 1}, "cpu").batch(0).tolist() != []  # a batch of at most n


def test_ems_optimizer_and_frozen_model():
    """EM's `perturbation.py`: SGD with momentum 0.9 and weight decay 5e-4; the crafting model searched against is
    in eval mode with no parameter gradient (input gradients only)."""
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    (group,) = em.sgd(model, 0.025).param_groups
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.025, 0.9, 5e-4, False)
    frozen = em.frozen(model)
    assert frozen is model and not model.training and not any(p.requires_grad for p in model.parameters())


def test_the_state_file_restores_model_and_optimizer_and_hands_back_only_the_rest(tmp_path):
    """`save` then `load`: the model's and optimizer's tensors go back into them, the extra tensors and the counters
    come back as they were saved (none of the model's or optimizer's among them); no directory: no state; a state
    that cannot be written is a one-line error naming it and its path."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = em.sgd(model, 0.1)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    state = em.StateFile(tmp_path, "em.safetensors")
    state.save(model, opt, {"noise": torch.full((2, 3), 0.5)}, {"iteration": 3, "error": 0.25})
    fresh = nn.Linear(3, 2)
    fresh_opt = em.sgd(fresh, 0.1)
    tensors, counters = state.load(fresh, fresh_opt)
    assert set(tensors) == {"noise"} and torch.equal(tensors["noise"], torch.full((2, 3), 0.5))
    assert counters == {"iteration": 3, "error": 0.25}
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["momentum_buffer"],
                       opt.state_dict()["state"][0]["momentum_buffer"])
    assert em.StateFile(None, "em.safetensors").load(fresh, fresh_opt) is None
    assert em.StateFile(tmp_path / "none-yet", "em.safetensors").load(fresh, fresh_opt) is None
    (tmp_path / "a-file").write_text("")
    with pytest.raises(PoisonbenchError) as raised:
        em.StateFile(tmp_path / "a-file", "em.safetensors").save(model, opt, {}, {})
    assert str(raised.value).startswith(
        f"cannot write an interrupted craft's state to {str(tmp_path / 'a-file' / 'em.safetensors')!r}: ")


def test_sample_wise_em_leaves_the_class_wise_options_out_of_its_parameters():
    """`class_portion` (None) and `class_updates` (absent) do not reach a sample-wise poison id; class-wise keeps
    both, with the authors' values."""
    sample = ATTACKS.get("em")("mnist").params
    assert sample["granularity"] == "sample" and sample["class_portion"] is None and "class_updates" not in sample
    classes = ATTACKS.get("em")("mnist", granularity="class").params
    assert classes["class_portion"] == 0.2 and classes["class_updates"] == 19


def test_an_interrupted_class_wise_em_craft_resumes_with_its_class_noise(rows300, tmp_path, monkeypatch,
                                                                         one_thread):
    """Class-wise EM keeps its class noise (not a per-row δ) after each outer iteration: killed in the second, the craft
    resumes from the first's noise and ends with the δ of an uninterrupted craft."""
    data = rows300
    spec = craft_spec(data, "em", eps=EPS, budget=1.0, seed=3, granularity="class", max_iterations=2,
                      stop_error=0.0, train_batches=2, lr=1e-4)  # a slow model: the error stays above 0
    whole, _ = poisons.craft(spec, data, tmp_path / "whole")
    work = tmp_path / "interrupted"
    craft_killed_at_call(monkeypatch, em, "train_step", 4, spec, data, work)  # the second iteration's second batch
    resumed, _ = poisons.craft(spec, data, work)
    assert resumed.manifest["attack_info"]["resumed_iterations"] == 1
    assert torch.equal(resumed.delta, whole.delta)


@pytest.mark.parametrize("granularity", ["sample", "class"])
def test_every_draw_of_em_comes_from_an_attacker_seed_of_the_craft_inputs(rows300, monkeypatch, granularity):
    """The crafting model's initialisation, each epoch's batch order and, class-wise, the stratified subset and each
    iteration's order over it are seeded by `attacker_seed(domain, inputs)`, inputs = the crafting seed, the data's
    name, the number of rows and every parameter (so two crafts share a stream only when they are the same craft,
    and no stream is a victim's: core.seeds)."""
    data = rows300
    calls, subsets, real, real_subset = [], [], em.attacker_seed, em.stratified_subset
    monkeypatch.setattr(em, "attacker_seed", lambda domain, inputs: calls.append((domain, inputs)) or real(domain,
                                                                                                         inputs))
    monkeypatch.setattr(em, "stratified_subset", lambda y, portion, g: subsets.append(g.initial_seed()) or
                        real_subset(y, portion, g))
    attack = ATTACKS.get("em")(data.family, granularity=granularity, max_iterations=1, train_batches=1,
                               batch_size=64, steps=1)
    ctx = AttackContext(data, attack.choose_rows(data, 0.5, 3), EPS, 0.5, 3, torch.device("cpu"))
    attack.perturb(ctx)
    inputs = {"seed": 3, "dataset": data.name, "rows": len(ctx.indices), "params": dict(sorted(attack.params.items()))}
    expected = [("em-model", inputs)]
    if granularity == "class":
        expected.append(("em-subset", inputs))
    expected.append(("em-order", {**inputs, "epoch": 0}))
    if granularity == "class":
        expected.append(("em-subset-order", {**inputs, "iteration": 0}))
    assert calls == expected
    assert subsets == ([real("em-subset", inputs)] if granularity == "class" else [])


def em_context(data, attack, portion=0.5, progress=None):
    return AttackContext(data, attack.choose_rows(data, portion, 3), EPS, portion, 3, torch.device("cpu"),
                         progress=progress)


@pytest.fixture(scope="module")
def rows300(tmp_path_factory):
    return load_dataset(str(write_npz(tmp_path_factory.mktemp("em-helpers"), n=300)))


def test_class_wise_em_trains_each_iteration_on_the_rows_its_last_error_was_measured_on(rows300, monkeypatch):
    """Min-min, class-wise: the first iteration's model batches are the clean rows (the class noise starts at 0);
    each later one's are rows of the x + noise[y] whose error ended the iteration before; the batches are the
    stream's 0, 1, 2, ... in order."""
    events, asked = [], []
    real_batch, real_train, real_error = em.BatchStream.batch, em.train_step, em.error_rate

    def batch(self, k):
        asked.append(k)
        idx = real_batch(self, k)
        events.append(("batch", idx))
        return idx

    monkeypatch.setattr(em.BatchStream, "batch", batch)
    monkeypatch.setattr(em, "train_step", lambda model, opt, x, y: events.append(("train", x.clone())) or
                        real_train(model, opt, x, y))
    monkeypatch.setattr(em, "error_rate", lambda model, x, y: events.append(("error", x.clone())) or
                        real_error(model, x, y))
    attack = ATTACKS.get("em")(rows300.family, granularity="class", max_iterations=3, stop_error=0.0, lr=1e-4,
                               train_batches=2, batch_size=32)
    ctx = em_context(rows300, attack)
    attack.perturb(ctx)
    assert attack.training_summary["iterations"] == 3 and asked == list(range(6))
    x = rows300.train.x[ctx.indices].float().div(255)
    current, trained = x, 0
    for (kind, value), nxt in zip(events, events[1:] + [(None, None)], strict=True):
        if kind == "batch":
            assert nxt[0] == "train" and torch.allclose(nxt[1], current[value], atol=1e-7)
            trained += 1
        elif kind == "error":
            assert not torch.allclose(value, x)  # the class noise moved the rows
            current = value
    assert trained == 6


def test_em_stops_at_the_first_iteration_whose_error_reaches_the_stop_error(rows300):
    """The stop condition is checked after each iteration (never before the first) and holds at equality; the
    recorded error is the final crafting model's on the returned x + δ."""
    attack = ATTACKS.get("em")(rows300.family, granularity="class", max_iterations=3, stop_error=0.0,
                               train_batches=2)
    ctx = em_context(rows300, attack, portion=1.0)
    delta = attack.perturb(ctx)
    # class_batch: the subset's batch, ⌊subset rows / 19⌋ (a departure where below batch_size: issue 83)
    assert attack.training_summary == {"iterations": 1, "final_train_error": 0.0, "stopped": True,
                                       "class_batch": 2}
    x, y = rows300.train.x[ctx.indices].float().div(255), rows300.train.y[ctx.indices]
    assert em.error_rate(attack.crafting_model, (x + delta).clamp(0, 1), y) == 0.0
    attack = ATTACKS.get("em")(rows300.family, max_iterations=3, stop_error=1.0, steps=1, train_batches=1)
    delta = attack.perturb(em_context(rows300, attack, portion=1.0))
    summary = attack.training_summary
    assert summary["iterations"] == 1 and summary["stopped"]
    assert summary["final_train_error"] == em.error_rate(attack.crafting_model, (x + delta).clamp(0, 1), y)


def test_sample_wise_em_continues_each_rows_noise_from_the_iteration_before(rows300, monkeypatch):
    """Sample-wise, each iteration's PGD on a batch of rows starts from their δ of the iteration before (δ is
    carried, not restarted from 0); the progress bar counts the iterations, once per noise batch."""
    calls, shown = [], []
    real = em.linf_pgd

    def linf_pgd(model, x, y, eps, steps, step, init, maximize):
        out = real(model, x, y, eps, steps, step, init, maximize=maximize)
        calls.append((init.clone(), out.clone()))
        return out

    monkeypatch.setattr(em, "linf_pgd", linf_pgd)
    attack = ATTACKS.get("em")(rows300.family, max_iterations=2, stop_error=0.0, steps=2, train_batches=1,
                               batch_size=64, lr=1e-4)
    ctx = em_context(rows300, attack, progress=lambda *now: shown.append(now))
    attack.perturb(ctx)
    assert attack.training_summary["iterations"] == 2
    per_iteration = -(-len(ctx.indices) // 64)
    assert len(calls) == 2 * per_iteration
    for j in range(per_iteration):
        assert not calls[j][0].any()  # the first iteration starts from 0
        assert torch.equal(calls[per_iteration + j][0], calls[j][1])
    name = f"em · {rows300.name}"
    assert shown == [(name, 0, 2)] + [(name, 0, 2)] * per_iteration + [(name, 1, 2)] + [
        (name, 1, 2)] * per_iteration + [(name, 2, 2)]


@pytest.mark.parametrize("granularity", ["sample", "class"])
def test_an_em_craft_killed_after_its_last_saved_iteration_resumes_without_training(rows300, tmp_path, monkeypatch,
                                                                                   granularity):
    """Killed after the state of its last iteration was saved (before the PoisonSet was written), the craft
    resumes with nothing left to train and returns the δ of an uninterrupted craft, sample-wise and class-wise."""
    data = rows300
    spec = craft_spec(data, "em", eps=EPS, budget=0.5, seed=3, granularity=granularity, max_iterations=2,
                      stop_error=0.0, train_batches=1, steps=2, lr=1e-4)
    whole, _ = poisons.craft(spec, data, tmp_path / "whole")
    real_save = em.StateFile.save

    def save(self, model, opt, tensors, counters):
        real_save(self, model, opt, tensors, counters)
        if counters["iteration"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(em.StateFile, "save", save)
    with pytest.raises(KeyboardInterrupt):
        poisons.craft(spec, data, tmp_path / "interrupted")
    monkeypatch.setattr(em.StateFile, "save", real_save)
    monkeypatch.setattr(em, "train_step", lambda *args: pytest.fail("a finished craft trained again"))
    resumed, _ = poisons.craft(spec, data, tmp_path / "interrupted")
    assert resumed.manifest["attack_info"]["resumed_iterations"] == 2
    assert torch.equal(resumed.delta, whole.delta)


@pytest.mark.parametrize("accel", ["auto", "off"])
def test_the_noise_is_searched_on_an_inference_copy_of_the_crafting_model_in_the_crafts_mode(rows300, monkeypatch,
                                                                                             accel):
    """Each iteration's δ search runs on `inference_copy` of the frozen crafting model, handed one row of the data
    (its shape picks the kernels) and the craft's `--accel` mode (`off`: the model's own modules)."""
    copies, real = [], em.inference_copy

    def inference_copy(model, sample, mode):
        copies.append((model.training, sample.shape, mode))
        return real(model, sample, mode)

    monkeypatch.setattr(em, "inference_copy", inference_copy)
    attack = ATTACKS.get("em")(rows300.family, granularity="class", max_iterations=2, stop_error=0.0, lr=1e-4,
                               train_batches=1)
    ctx = em_context(rows300, attack)
    ctx.accel = accel
    attack.perturb(ctx)
    assert copies == [(False, (1, 1, 16, 16), accel)] * 2
