"""The helpers EM and REM share (`poisonbench.attacks.em`): the batch stream of shuffled epochs, EM's optimizer, the
frozen crafting model, the interrupted craft's state file, and the class-wise options a sample-wise EM leaves out
of its poison id; with a class-wise EM craft killed and resumed (issue 64: EM's mutation run)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from poisonbench.attacks import ATTACKS, em
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


def test_an_interrupted_class_wise_em_craft_resumes_with_its_class_noise(tmp_path, monkeypatch, one_thread):
    """Class-wise EM keeps its class noise (not a per-row δ) after each outer iteration: killed in the second, the craft
    resumes from the first's noise and ends with the δ of an uninterrupted craft."""
    from poisonbench import poisons

    data = load_dataset(str(write_npz(tmp_path, n=300)))
    spec = craft_spec(data, "em", eps=EPS, budget=1.0, seed=3, granularity="class", max_iterations=2,
                      stop_error=0.0, train_batches=2, lr=1e-4)  # a slow model: the error stays above 0
    whole, _ = poisons.craft(spec, data, tmp_path / "whole")
    work = tmp_path / "interrupted"
    craft_killed_at_call(monkeypatch, em, "train_step", 4, spec, data, work)  # the second iteration's second batch
    resumed, _ = poisons.craft(spec, data, work)
    assert resumed.manifest["attack_info"]["resumed_iterations"] == 1
    assert torch.equal(resumed.delta, whole.delta)


@pytest.mark.parametrize("granularity", ["sample", "class"])
def test_every_draw_of_em_comes_from_an_attacker_seed_of_the_craft_inputs(tmp_path, monkeypatch, granularity):
    """The crafting model's initialisation, each epoch's batch order and, class-wise, the stratified subset and each
    iteration's order over it are seeded by `attacker_seed(domain, inputs)`, inputs = the crafting seed, the data's
    name, the number of rows and every parameter (so two crafts share a stream only when they are the same craft,
    and no stream is a victim's: core.seeds)."""
    from poisonbench.attacks.base import AttackContext

    data = load_dataset(str(write_npz(tmp_path, n=300)))
    calls, real = [], em.attacker_seed
    monkeypatch.setattr(em, "attacker_seed", lambda domain, inputs: calls.append((domain, inputs)) or real(domain,
                                                                                                         inputs))
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
