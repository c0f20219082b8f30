"""REM's steps (Fu et al., ICLR'22; the module docstring of `poisonbench.attacks.rem`), one at a time on tiny data: the
random start fills the ε-ball from the generator, δ_a is the inner PGD's ascent (none at ρ_a = 0), one descent step
of δ_u is ε·`u_step_fraction` against the sign of the robust loss's gradient, each SGD step trains the source model
on T(x + δ_u) + δ_a with the model frozen during the searches, and a craft killed in its final noise resumes batch by
batch (issue 64: REM's mutation run)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poisonbench import poisons
from poisonbench.attacks import ATTACKS, em, rem
from poisonbench.attacks.base import AttackContext
from poisonbench.data import load_dataset
from poisonbench.poisons import craft_spec

from .conftest import craft_killed_at_call, write_npz

EPS = 8 / 255


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_dataset(str(write_npz(tmp_path_factory.mktemp("rem-steps"))))


def linear_model(pixels: int, classes: int = 4, ignored: int = 0) -> nn.Module:
    """A linear classifier of the flattened image, blind to its first `ignored` pixels (their gradient is 0)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(pixels, classes))
    with torch.no_grad():
        model[1].weight[:, :ignored] = 0
    return model.eval().requires_grad_(False)


def rows(n: int = 12, size: int = 6):
    g = torch.Generator().manual_seed(7)
    x = 0.3 + 0.4 * torch.rand((n, 1, size, size), generator=g)  # no pixel clipping within ε
    return x, torch.arange(n) % 4


def test_the_random_start_fills_the_eps_ball_from_the_generator_alone():
    """δ starts uniform in [−ρ, ρ] (REM's `torch.rand * 2 − 1` scaled), drawn from the generator handed in only."""
    torch.manual_seed(0)
    before = torch.rand(1)
    start = rem.uniform_start((20_000,), 0.25, torch.Generator().manual_seed(3), "cpu")
    assert start.shape == (20_000,) and start.abs().max() <= 0.25
    assert start.min() < -0.249 and start.max() > 0.249 and abs(float(start.mean())) < 0.01
    assert abs(float((start > 0).float().mean()) - 0.5) < 0.02
    assert torch.equal(start, rem.uniform_start((20_000,), 0.25, torch.Generator().manual_seed(3), "cpu"))
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), before)  # the global stream is untouched


def test_the_inner_adversary_ascends_from_its_random_start_and_is_absent_at_radius_or_steps_zero(monkeypatch):
    """δ_a = PGD ascent (maximize) of `steps` steps of `step` in the ρ_a-ball, started at uniform_start drawn from the
    generator; ρ_a = 0 or no steps: zero, with nothing drawn."""
    x, y = rows()
    model = linear_model(36)
    for radius, steps in ((0.0, 3), (0.1, 0)):
        g = torch.Generator().manual_seed(1)
        state = g.get_state()
        assert torch.equal(rem.adversarial(model, x, y, radius, steps, 0.01, g), torch.zeros_like(x))
        assert torch.equal(g.get_state(), state)
    calls = []

    def linf_pgd(model, x, y, radius, steps, step, init, maximize):
        calls.append((radius, steps, step, init, maximize))
        return torch.full_like(x, 0.5)

    monkeypatch.setattr(rem, "linf_pgd", linf_pgd)
    out = rem.adversarial(model, x, y, 0.1, 3, 0.02, torch.Generator().manual_seed(1))
    assert torch.equal(out, torch.full_like(x, 0.5))
    (radius, steps, step, init, maximize), = calls
    assert (radius, steps, step, maximize) == (0.1, 3, 0.02, True)
    assert torch.equal(init, rem.uniform_start(x.shape, 0.1, torch.Generator().manual_seed(1), "cpu"))


def test_one_descent_step_of_delta_u_is_its_fraction_of_eps_against_the_gradient_sign():
    """No adversary, one draw, no augmentation: δ_u = clip_ε(start − ε·fraction·sign(∇_δ Σ CE(f(x + start + δ)))) with
    `start` the generator's first uniform draw in the ε-ball; two steps continue from the first. A pixel the model
    ignores (gradient 0) keeps its start."""
    x, y = rows()
    model = linear_model(36, ignored=6)
    p = {"adv_radius": 0.0, "samples": 1, "u_steps": 1, "a_steps": 0, "u_step_fraction": 0.25, "a_step_fraction": 0.2}

    def step(delta):
        delta = delta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y, reduction="sum"), delta)
        return (delta - EPS * 0.25 * grad.sign()).clamp(-EPS, EPS).detach()

    start = rem.uniform_start(x.shape, EPS, torch.Generator().manual_seed(4), "cpu")
    one = rem.robust_min(model, x, y, EPS, p, torch.Generator().manual_seed(4), "none")
    assert torch.allclose(one, step(start), atol=1e-6)
    assert (one - start).abs().max() == pytest.approx(EPS * 0.25, abs=1e-6)  # the step, where ε does not clip it
    assert torch.allclose(one[:, 0, 0], start[:, 0, 0], atol=1e-7)  # the first row of pixels: no gradient, no step
    two = rem.robust_min(model, x, y, EPS, {**p, "u_steps": 2}, torch.Generator().manual_seed(4), "none")
    assert torch.allclose(two, step(step(start)), atol=1e-6)


def test_the_noisy_rows_stay_in_the_pixel_box_from_the_random_start_on():
    """Black and white pixels: x + δ_u is in [0, 1] at the random start (the first draws), after every step and in
    the noise returned, so a row's δ at a black pixel is ≥ 0 and at a white one ≤ 0."""
    x = torch.zeros((8, 1, 6, 6))
    x[:, :, 3:] = 1
    y = torch.arange(8) % 4
    seen = []
    real = rem.augment

    def augment(name, xs, generator):
        seen.append(xs.detach().clone())
        return real(name, xs, generator)

    p = {"adv_radius": 0.0, "samples": 1, "u_steps": 3, "a_steps": 0, "u_step_fraction": 0.5, "a_step_fraction": 0.2}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rem, "augment", augment)
        delta = rem.robust_min(linear_model(36), x, y, EPS, p, torch.Generator().manual_seed(4), "none")
    assert len(seen) == 3 and all(0 <= float(xs.min()) and float(xs.max()) <= 1 for xs in seen)
    assert float((x + delta).min()) >= 0 and float((x + delta).max()) <= 1
    assert delta[:, :, :3].min() >= 0 and delta[:, :, 3:].max() <= 0 and delta.abs().max() > 0


def test_the_descent_loss_is_taken_at_each_draw_plus_its_adversary(monkeypatch):
    """The robust loss's forward pass sees T(x + δ_u) + δ_a (clipped), δ_a being the inner adversary's for those
    draws: δ_u is made robust to the adversary, not to its opposite."""
    x, y = rows()
    model = linear_model(36)
    draws, inputs = [], []
    model.register_forward_hook(lambda module, args, out: inputs.append(args[0].detach().clone()))
    real = rem.augment

    def augment(name, xs, generator):
        draws.append(xs.detach().clone())
        return real(name, xs, generator)

    monkeypatch.setattr(rem, "augment", augment)
    monkeypatch.setattr(rem, "adversarial", lambda model, xt, ys, *rest: torch.full_like(xt, 0.01))
    p = {"adv_radius": 0.05, "samples": 2, "u_steps": 2, "a_steps": 1, "u_step_fraction": 0.2, "a_step_fraction": 0.2}
    rem.robust_min(model, x, y, EPS, p, torch.Generator().manual_seed(4), "none")
    assert len(inputs) == len(draws) == 2
    for xs, seen in zip(draws, inputs, strict=True):
        assert torch.allclose(seen, (xs + 0.01).clamp(0, 1))


def test_each_descent_step_averages_its_draws_each_with_its_own_inner_adversary(monkeypatch):
    """`samples` draws are one tensor of samples × rows with the labels repeated; each gets δ_a of ρ_a, `a_steps`
    steps of ρ_a·`a_step_fraction` on the detached draws (no gradient through the inner search)."""
    x, y = rows()
    model = linear_model(36)
    seen = []
    real = rem.adversarial

    def adversarial(model, xt, ys, radius, steps, step, generator):
        seen.append((xt.shape, xt.requires_grad, ys.clone(), radius, steps, step))
        return real(model, xt, ys, radius, steps, step, generator)

    monkeypatch.setattr(rem, "adversarial", adversarial)
    p = {"adv_radius": 0.05, "samples": 3, "u_steps": 2, "a_steps": 4, "u_step_fraction": 0.2, "a_step_fraction": 0.3}
    delta = rem.robust_min(model, x, y, EPS, p, torch.Generator().manual_seed(4), "shift")
    assert delta.shape == x.shape and delta.abs().max() <= EPS + 1e-6 and not delta.requires_grad
    assert len(seen) == 2
    for shape, grad, ys, radius, steps, step in seen:
        assert shape == (36, 1, 6, 6) and not grad and torch.equal(ys, y.repeat(3))
        assert (radius, steps) == (0.05, 4) and step == pytest.approx(0.05 * 0.3)


def test_each_sgd_step_trains_on_the_noisy_rows_plus_their_adversary_the_model_frozen_while_searching(tiny,
                                                                                                     monkeypatch):
    """Step 2 of the module docstring: the source model's SGD step sees (T(x + δ_u) + δ_a) clipped to the pixel box,
    δ_a the inner PGD's on those rows; δ_u and δ_a are searched with the model in eval mode and frozen, and each
    step's δ_u is a fresh search for its batch. The summary names the schedule and its steps; the progress counts the
    steps, then the final noise batches."""
    events, shown = [], []
    real_min, real_adv, real_train = rem.robust_min, rem.adversarial, rem.train_step

    def robust_min(model, x, y, eps, p, generator, transform):
        assert not model.training and not any(q.requires_grad for q in model.parameters())
        delta = real_min(model, x, y, eps, p, generator, transform)
        events.append(("min", x, delta))
        return delta

    def adversarial(model, xt, ys, radius, steps, step, generator):
        da = real_adv(model, xt, ys, radius, steps, step, generator)
        events.append(("adv", xt, da, radius, steps, step))
        return da

    def train_step(model, opt, x, y, clip=5.0):
        events.append(("train", x, None))
        return real_train(model, opt, x, y, clip)

    monkeypatch.setattr(rem, "robust_min", robust_min)
    monkeypatch.setattr(rem, "adversarial", adversarial)
    monkeypatch.setattr(rem, "train_step", train_step)
    attack = ATTACKS.get("rem")(tiny.family, schedule="budget", train_steps=3, batch_size=16, u_steps=2, a_steps=2,
                                adv_radius=0.1)
    ctx = AttackContext(tiny, attack.choose_rows(tiny, 0.3, 3), EPS, 0.3, 3, torch.device("cpu"),
                        progress=lambda *shown_now: shown.append(shown_now))
    attack.perturb(ctx)
    trains = [i for i, e in enumerate(events) if e[0] == "train"]
    assert len(trains) == 3
    for i in trains:
        (kind_min, xb, delta), (kind_adv, xt, da, radius, steps, step) = events[i - 2], events[i - 1]
        assert (kind_min, kind_adv) == ("min", "adv") and da.abs().max() > 0
        assert (radius, steps) == (0.1, 2) and step == pytest.approx(0.1 * 0.2)  # ρ_a, a_steps, ρ_a·a_step_fraction
        assert torch.equal(xt, (xb + delta).clamp(0, 1))  # T is the identity on the MNIST family
        assert torch.equal(events[i][1], (xt + da).clamp(0, 1))
    assert not torch.equal(events[trains[0] - 2][2], events[trains[1] - 2][2])
    assert attack.training_summary == {"schedule": "budget", "train_steps": 3}
    n = len(ctx.indices)
    batches = -(-n // 16)
    name = f"rem · {tiny.name}"
    assert shown == [(name, k, 3 + batches) for k in range(1, 4 + batches)]


def test_an_rem_craft_killed_in_its_final_noise_resumes_with_the_batches_it_finished(tiny, tmp_path, monkeypatch):
    """The final noise is kept batch by batch: killed in its third batch, the craft resumes with the first two from
    disk (counted as resumed rows) and ends with the δ of an uninterrupted craft."""
    spec = craft_spec(tiny, "rem", eps=EPS, budget=1.0, seed=3, schedule="budget", train_steps=2, u_steps=2,
                      a_steps=1, batch_size=48)
    whole, _ = poisons.craft(spec, tiny, tmp_path / "whole")
    work = tmp_path / "interrupted"
    craft_killed_at_call(monkeypatch, rem, "robust_min", 2 + 3, spec, tiny, work)  # 2 training steps, then batch 3
    resumed, _ = poisons.craft(spec, tiny, work)
    assert resumed.manifest["resumed_rows"] == 2 * 48 and resumed.manifest["attack_info"]["resumed_steps"] == 2
    assert torch.equal(resumed.delta, whole.delta)


def test_every_draw_of_rem_comes_from_an_attacker_seed_of_the_craft_inputs(tiny, monkeypatch):
    """The source model's initialisation, the random starts and augmentations of training, each epoch's batch order
    and each batch of the final noise are seeded by `attacker_seed(domain, inputs)`, inputs = the crafting seed, the
    data's name, the number of rows and every parameter (core.seeds: no stream is a victim's)."""
    calls = []
    for module in (rem, em):
        real = module.attacker_seed
        monkeypatch.setattr(module, "attacker_seed",
                            lambda domain, inputs, real=real: calls.append((domain, inputs)) or real(domain, inputs))
    attack = ATTACKS.get("rem")(tiny.family, schedule="budget", train_steps=2, batch_size=32, u_steps=1, a_steps=1)
    ctx = AttackContext(tiny, attack.choose_rows(tiny, 0.3, 3), EPS, 0.3, 3, torch.device("cpu"))
    attack.perturb(ctx)
    inputs = {"seed": 3, "dataset": tiny.name, "rows": len(ctx.indices), "params": dict(sorted(attack.params.items()))}
    assert calls == [("rem-model", inputs), ("rem-draws", inputs), ("rem-order", {**inputs, "epoch": 0})] + [
        ("rem-noise", {**inputs, "batch": a}) for a in range(0, len(ctx.indices), 32)]


def test_every_augmentation_draws_from_the_crafts_generator(tiny, monkeypatch):
    """With an augmentation that draws (`shift`), every T of the crafting, inside the δ_u search and at the SGD
    step, gets the craft's generator (an attacker seed's), never the global stream."""
    generators = []
    real = rem.augment

    def augment(name, xs, generator):
        generators.append(generator)
        return real(name, xs, generator)

    monkeypatch.setattr(rem, "augment", augment)
    attack = ATTACKS.get("rem")(tiny.family, schedule="budget", train_steps=2, batch_size=32, u_steps=1, a_steps=1,
                                eot_augment="shift")
    attack.perturb(AttackContext(tiny, attack.choose_rows(tiny, 0.2, 3), EPS, 0.2, 3, torch.device("cpu")))
    assert len(generators) == 2 * 2 + 1 and all(isinstance(g, torch.Generator) for g in generators)
    assert generators[0] is generators[1] is generators[3]  # the training draws' one generator
