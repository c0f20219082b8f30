"""The targeted clean-label attacks gm, bp and fc (both impls): invariants on tiny data, determinism, resuming a
killed craft, the GM loss going down, toxic FC's batching against PB's per-poison loop, toxic BP's pixel-space
Adam against PB's normalised-space Adam, and forest's crafting augmentation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from poisonbench import poisons
from poisonbench.attacks import ATTACKS
from poisonbench.attacks.base import EPS_TOLERANCE, AttackContext, Target
from poisonbench.attacks.crafting_augment import CraftingAugment, crafting_augment
from poisonbench.attacks.forest import Adam, Brew, lr_factor, milestones
from poisonbench.attacks.gm import GradientMatching
from poisonbench.attacks.targets import draw_target
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.engine.models import build_model

from .conftest import write_npz

EPS = 0.1
FAST = {"iterations": 3, "restarts": 2, "surrogate_epochs": 1}
CASES = {  # id -> (attack, budget, params): the transfer set of the tiny split has 4 rows per class
    "gm": ("gm", 0.05, FAST),
    "bp-forest": ("bp", 0.02, FAST),
    "fc-forest": ("fc", 0.02, FAST),
    "bp-toxic": ("bp", 0.02, {"impl": "toxic", "iterations": 20, "surrogate_epochs": 1}),
    "fc-toxic": ("fc", 0.02, {"impl": "toxic", "lr": 10.0, "surrogate_epochs": 1}),
}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("targeted")
    return load_dataset(str(write_npz(root))), root / "results"


def spec_for(data, case, seed=1, **extra):
    name, budget, params = CASES[case]
    scenario = params.get("scenario", ATTACKS.get(name)(data.family).params["scenario"])
    target = draw_target(data, seed, scenario, budget)
    return poisons.craft_spec(data, name, eps=EPS, budget=budget, seed=seed, target=target,
                              **{**params, **extra}), target


@pytest.mark.parametrize("case", list(CASES))
def test_invariants_and_determinism(case, tiny, one_thread):
    data, results = tiny
    spec, target = spec_for(data, case)
    poison, _ = poisons.craft(spec, data, results, CPU, force=True)
    assert len(poison) == len(target.rows) == len(poison.delta)
    assert poison.indices.tolist() == sorted(target.rows)
    assert (data.train.y[poison.indices] == target.intended_class).all()
    assert poison.delta.abs().max().item() <= EPS + EPS_TOLERANCE
    assert poison.delta.abs().max().item() > 0.2 * EPS  # it does perturb
    xp = data.train.x[poison.indices].float() / 255 + poison.delta
    assert xp.min().item() >= -EPS_TOLERANCE and xp.max().item() <= 1 + EPS_TOLERANCE
    again, _ = poisons.craft(spec, data, results, CPU, force=True)
    assert torch.equal(again.delta, poison.delta) and torch.equal(again.indices, poison.indices)
    impl = spec.params.get("impl", "forest")
    info = poison.manifest["attack_info"]
    if impl == "forest":
        assert len(info["restart_losses"]) == 2 and info["best_restart"] == min(
            range(2), key=info["restart_losses"].__getitem__)
    other, _ = poisons.craft(spec_for(data, case, seed=2)[0], data, results, CPU)
    assert not torch.equal(other.delta, poison.delta)


class Killed(Exception):
    pass


@pytest.mark.parametrize("case", ["gm", "bp-forest", "fc-forest"])
def test_a_killed_craft_resumes_from_its_finished_restarts(case, tiny, one_thread):
    """Killed in its second restart, the craft keeps the first (results/partial/<id>/restart-0000.safetensors);
    crafted again, it crafts only the second and ends with exactly the δ of an uninterrupted craft."""
    data, results = tiny
    spec, _ = spec_for(data, case, seed=4)
    whole, _ = poisons.craft(spec, data, results, CPU, force=True)
    assert whole.manifest["attack_info"]["resumed_restarts"] == 0

    def kill_in_restart_2(description, done, total):
        if "restart 2/" in description:
            raise Killed

    with pytest.raises(Killed):
        poisons.craft(spec, data, results, CPU, force=True, progress=kill_in_restart_2)
    partial = results / "partial" / spec.poison_id
    assert [p.name for p in partial.glob("restart-*")] == ["restart-0000.safetensors"]
    resumed, _ = poisons.craft(spec, data, results, CPU, force=True)
    assert resumed.manifest["attack_info"]["resumed_restarts"] == 1
    assert resumed.manifest["attack_info"]["restart_losses"] == whole.manifest["attack_info"]["restart_losses"]
    assert torch.equal(resumed.delta, whole.delta)
    assert not partial.exists()


def tiny_model(data):
    return build_model("convnet", data, seed=0).eval().requires_grad_(False)


def bases_and_target(data, k):
    true_class = int(data.test.y[0])
    intended = (true_class + 1) % data.num_classes
    rows = (data.train.y == intended).nonzero().flatten()[:k]
    return rows, data.train.x[rows].float() / 255, data.test.x[:1].float() / 255, Target(0, true_class, intended)


def test_the_gradient_matching_loss_decreases(tiny, one_thread):
    data, _ = tiny
    rows, x, target, aim = bases_and_target(data, 8)
    matching = GradientMatching(tiny_model(data), target, aim.intended_class)
    y = data.train.y[rows]
    ctx = AttackContext(data, rows, EPS, 0.05, 0, CPU, target=aim)
    losses = []

    def objective(inputs, start, stop):
        loss = matching.loss(inputs, y[start:stop])
        losses.append(loss.item())
        return loss

    delta, final = Brew(20, 1, 0.1, 512, False).restart(ctx, "gm", x, objective, 0)
    assert final == losses[-1] and 0 <= final <= 2
    assert sum(losses[-3:]) / 3 < losses[0] - 0.05
    assert delta.abs().max() <= EPS + EPS_TOLERANCE


def pb_feature_collision(model, base, target, eps, step_size, iterations, watermark):
    """PB craft_poisons_fc.py's loop, one poison after another, as written there (no early stop on a rejection)."""
    out, stops = [], []
    with torch.no_grad():
        target_features = model.features(target)
    for b in base:
        b = b[None]
        x = b + ((watermark * target + (1 - watermark) * b) - b).clamp(-eps, eps)
        x = x.clamp(0, 1)
        objective_vals, lr, i, done, last_move = [10e8], step_size, 0, False, 0
        while not done and i < iterations:
            x = x.detach().requires_grad_(True)
            loss = (model.features(x) - target_features).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, x)
            x_hat = x.detach() - lr * grad
            x_new = (b + (x_hat - b).clamp(-eps, eps)).clamp(0, 1)
            if loss.detach() > objective_vals[-1]:
                lr *= 0.2
            else:
                if torch.norm(x.detach() - x_new) / torch.norm(x.detach()) < 1e-5:
                    done = True
                x, last_move = x_new, i
                objective_vals.append(loss.detach())
            i += 1
        out.append(x.detach()[0] - b[0])
        stops.append(last_move)
    return torch.stack(out), stops


def test_toxic_fc_batched_equals_pb_per_poison_loop(tiny, one_thread):
    from poisonbench.attacks.fc import feature_collision

    data, _ = tiny
    _, base, target, _ = bases_and_target(data, 3)
    model = tiny_model(data)
    delta, info = feature_collision(model, base, target, EPS, 10.0, 120, 0.3)
    reference, stops = pb_feature_collision(model, base, target, EPS, 10.0, 120, 0.3)
    assert len(set(stops)) > 1  # the poisons stop moving at different iterations: the masks matter
    torch.testing.assert_close(delta, reference, rtol=0, atol=1e-6)
    assert info["iterations_run"] == max(stops) + 2  # the last move, then the rejection that stops it


def test_toxic_bp_in_pixel_units_equals_pbs_adam_in_normalised_space(one_thread):
    """PB steps torch.optim.Adam (lr 0.04) on (x − μ)/σ and projects in pixels; our pixel-space δ with the
    normalised gradient σ·∇ and step lr·σ must follow the same path."""
    from poisonbench.attacks.bp import toxic_bp, toxic_bp_loss

    torch.manual_seed(0)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    model = SimpleNamespace(features=lambda x: net((x - mean) / std))
    x, target = torch.rand(5, 3, 6, 6), torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        target_features = model.features(target)
    eps, steps = 8 / 255, 15
    ctx = SimpleNamespace(dataset=SimpleNamespace(std=(0.2, 0.25, 0.3)), eps=eps, report=lambda *a: None)
    ours, _ = toxic_bp(ctx, model, x, target_features, steps, 0.04, "bp")

    poison = torch.nn.Parameter((x - mean) / std)
    optimizer = torch.optim.Adam([poison], lr=0.04, betas=(0.9, 0.999))
    for _ in range(steps):
        optimizer.zero_grad()
        toxic_bp_loss(net(poison), target_features).backward()
        optimizer.step()
        with torch.no_grad():
            pert = ((poison - (x - mean) / std) * std).clamp(-eps, eps)
            poison.copy_(((x + pert).clamp(0, 1) - mean) / std)
    torch.testing.assert_close(ours, (poison.detach() * std + mean) - x, rtol=0, atol=1e-5)
    assert ours.abs().max() > 0.5 * eps


def test_adam_equals_torch_adam():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(10))
    ours = p.detach().clone()
    optimizer, adam = torch.optim.Adam([p], lr=0.1), Adam(ours)
    for _ in range(5):
        grad = torch.randn(10)
        p.grad = grad.clone()
        optimizer.step()
        ours -= 0.1 * adam.direction(grad)
    torch.testing.assert_close(ours, p.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family, model_std, forest_std", [
    ("mnist", (1.0,), (0.30810782313346863,)),
    ("cifar10", (0.2023, 0.1994, 0.2010), (0.24703224003314972, 0.24348513782024384, 0.26158785820007324))])
def test_the_brew_steps_in_forests_normalised_space(family, model_std, forest_std, one_thread):
    """Forest's δ and lr live in its normalised space with its own σ (GM:forest/consts.py), so its first signed-Adam
    step moves each pixel by lr·σ_forest, whatever our model normalises with (σ 1 on the MNIST family, where the
    step used to be 3.25× forest's); `lr_space` model keeps the old step, lr·σ_model."""
    torch.manual_seed(0)
    channels = len(model_std)
    x = 0.4 + 0.2 * torch.rand(4, channels, 6, 6)  # with ε 0.2, x + δ never leaves [0, 1]
    weight = torch.randn(1, channels, 6, 6)
    ctx = AttackContext(SimpleNamespace(family=family, std=model_std, name="t"), torch.arange(4), 0.2, 0.01, 3,
                        torch.device("cpu"))

    def objective(inputs, start, stop):
        return (inputs * weight).sum()

    start = Brew(0, 1, 0.01, 512, False).restart(ctx, "gm", x, objective, 0)[0]  # the restart's randn init
    inside = start.abs() < 0.2 - 0.0101  # pixels the ε-ball's clipping cannot reach in one step

    def moved(lr_space):
        return (Brew(1, 1, 10.0, 512, False, lr_space).restart(ctx, "gm", x, objective, 0)[0] - start).abs()

    assert inside.float().mean() > 0.5
    lr = 10.0 * lr_factor(0, milestones(1))  # a 1-iteration brew has all three decays at step 0
    for lr_space, std in {"forest": forest_std, "model": model_std}.items():
        expected = (lr * torch.tensor(std)).view(1, -1, 1, 1).expand_as(x)
        torch.testing.assert_close(moved(lr_space)[inside], expected[inside], rtol=1e-3, atol=0)


def test_forest_step_schedule():
    assert milestones(250) == (93, 156, 218)
    factors = [lr_factor(i, milestones(250)) for i in (0, 92, 93, 155, 156, 217, 218, 249)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_crafting_augmentation_shifts_flips_and_follows_its_generator():
    assert crafting_augment("cifar10", 32) == CraftingAugment(4.0, True)  # forest: ±4 px on CIFAR-10
    assert crafting_augment("mnist", 28) == CraftingAugment(2.0, False)  # ±2 px on MNIST, never a flip
    x = torch.rand(64, 1, 12, 12, requires_grad=True)
    mnist = crafting_augment("mnist", 12)
    first = mnist(x, torch.Generator().manual_seed(5))
    assert torch.equal(first, mnist(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, mnist(x, torch.Generator().manual_seed(6)))
    first.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # differentiable
    draws = torch.rand(64, 3, generator=torch.Generator().manual_seed(1))
    still = torch.rand(64, 1, 12, 12)
    no_shift = CraftingAugment(0.0, False).apply(still, draws)  # no shift: the image itself, never mirrored
    torch.testing.assert_close(no_shift, still)
    flips = CraftingAugment(0.0, True).apply(still, draws)
    mirrored = (draws[:, 2] > 0.5)
    assert 0 < mirrored.sum() < 64
    torch.testing.assert_close(flips[mirrored], still[mirrored].flip(-1))
    torch.testing.assert_close(flips[~mirrored], still[~mirrored])
    shifted = CraftingAugment(2.0, False).apply(still, torch.tensor([[1.0, 0.5, 0.9]]).expand(64, 3))
    torch.testing.assert_close(shifted[..., 2:], still[..., :-2])  # +2 px in x, zero padding
    assert shifted[..., :2].abs().max() == 0


@pytest.mark.parametrize("params, needle", [
    ({"impl": "toxic", "restarts": 2}, "--restarts of attack 'bp' applies to --impl forest, not --impl toxic"),
    ({"impl": "toxic", "augment": False}, "--augment of attack 'bp' applies to --impl forest"),
    ({"impl": "nope"}, "valid choices: forest, toxic"),
])
def test_bad_bp_options(tiny, params, needle):
    data, _ = tiny
    with pytest.raises(PoisonbenchError) as info:
        ATTACKS.get("bp")(data.family, **params)
    assert needle in str(info.value)


def test_fc_watermark_is_toxic_only(tiny):
    data, _ = tiny
    with pytest.raises(PoisonbenchError, match="--watermark of attack 'fc' applies to --impl toxic"):
        ATTACKS.get("fc")(data.family, watermark=0.2)
    assert ATTACKS.get("fc")(data.family, impl="toxic").params["watermark"] == 0.3


def test_surrogate_milestones_parse_from_text_or_a_list_and_refuse_anything_else():
    """`--surrogate-milestones 14,25,35` ('' or blanks: none); a list of ints from code; each refusal is its whole
    line (the mutation run left the split, the int() and both messages untested)."""
    from poisonbench.attacks.targeted import parse_milestones
    from poisonbench.core.errors import PoisonbenchError

    assert parse_milestones("14,25,35") == [14, 25, 35]
    assert parse_milestones(" 3, ,5 ") == [3, 5] and parse_milestones("") == []
    assert parse_milestones((4, 8)) == [4, 8]
    with pytest.raises(PoisonbenchError) as text:
        parse_milestones("4;8")
    assert str(text.value) == "--surrogate-milestones must be comma-separated integers, got '4;8'"
    for bad in ([1, True], [1.5], {"x": 1}):
        with pytest.raises(PoisonbenchError) as listed:
            parse_milestones(bad)
        assert str(listed.value).startswith("--surrogate-milestones must be a list of epochs, got ")


@pytest.mark.parametrize("scenario,threat", [("transfer", "gray"), ("transfer", "white"), ("scratch", None)])
def test_the_model_crafted_against_is_loaded_with_the_attacks_own_training_and_the_runs_workspace(
        monkeypatch, scenario, threat):
    """A transfer attack crafts on the extractor of its threat's role (gray: its own; white: the victim's), a scratch
    one on its surrogate; each is trained (or found) with the attack's surrogate recipe, overrides and model, in the
    run's workspace, with its progress bar and accelerator settings (the mutation run dropped each of these, and
    swapped the branch, without a test noticing)."""
    import types

    from poisonbench.attacks import surrogate
    from poisonbench.engine import pretrained

    calls = []
    monkeypatch.setattr(pretrained, "load_or_train_extractor", lambda *a, **k: calls.append(("extractor", a, k)))
    monkeypatch.setattr(surrogate, "load_or_train_surrogate", lambda *a, **k: calls.append(("surrogate", a, k)))
    params = {"scenario": scenario, "surrogate_model": "convnet-gn", "surrogate_epochs": 3}
    attack = ATTACKS.get("bp")("mnist", **params, **({"threat": threat} if threat else {}))
    ctx = types.SimpleNamespace(dataset="DATA", device="DEV", results_root="ROOT", progress="BAR", accel="ACCEL")
    attack.load_surrogate(ctx)
    ((kind, args, kwargs),) = calls
    recipe, overrides, model = attack.surrogate_training()
    assert overrides["epochs"] == 3 and model == "convnet-gn"
    shared = {"model_name": model, "recipe": recipe, "overrides": overrides, "progress": "BAR", "accel": "ACCEL"}
    if scenario == "transfer":
        assert kind == "extractor" and args == ("DATA", "DEV")
        assert kwargs == {**shared, "results_root": "ROOT", "role": {"gray": "attacker", "white": "victim"}[threat]}
    else:
        assert kind == "surrogate" and args == ("DATA", "ROOT", "DEV") and kwargs == shared
