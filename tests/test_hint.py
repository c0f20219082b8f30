"""HINT defense invariants on tiny data: noise bound, valid pixels, ⌈r·n⌉ selected, noise only on selected rows,
updates only at scheduled epochs, determinism, parameter validation, the figure."""

from __future__ import annotations

import math

import pytest
import torch

from poisonbench.core.errors import PoisonbenchError
from poisonbench.defenses import DEFENSES, build_defense
from poisonbench.defenses import influence as inf
from poisonbench.defenses.hint import Hint, scale_schedule
from poisonbench.engine.models import Normalize
from poisonbench.engine.recipes import Recipe, resolve_recipe
from poisonbench.engine.training import TrainContext, make_optimizer, train

from .toys import SmallConvNet

pytestmark = pytest.mark.usefixtures("one_thread")


class Small(SmallConvNet):
    def __init__(self, classes=3):
        super().__init__(classes, channels=4)


class SmallNormalized(Small):
    """Small with the input normalisation inside, as poisonbench's models have (std ≠ 1, as CIFAR-10's)."""

    def __init__(self, classes=3, std=0.25):
        super().__init__(classes)
        self.normalize = Normalize((0.5,), (std,))

    def features(self, x):
        return self.conv(self.normalize(x)).flatten(1)


RECIPE = Recipe("tiny", epochs=4, batch_size=16, lr=0.05)


def data(seed=0, n=50):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n + 12,), generator=g)
    x = (torch.rand(n + 12, 1, 8, 8, generator=g) * 0.3 + y[:, None, None, None] * 0.3).clamp(0, 1)
    x[:5] = 1.0  # saturated rows: clipping at 1 must hold
    x[5:10] = 0.0
    return x[:n], y[:n], x[n:], y[n:]


def run(seed=0, model_class=None, **params):
    x, y, vx, vy = data()
    torch.manual_seed(seed)
    model = (model_class or Small)()
    defense = Hint("mnist", RECIPE, **{"schedule": [1, 3], **params})
    result = train(model, x.clone(), y, vx, vy, RECIPE, seed=seed, device=torch.device("cpu"), num_classes=3,
                   defense=defense, compile="off")
    return defense, result, x


def test_registered_and_defaults():
    assert "hint" in DEFENSES.names()
    paper = resolve_recipe("mnist", "paper")
    d = build_defense("hint", "mnist", paper)
    assert d.params["schedule"] == [5, 15]
    assert d.params["ratio"] == 0.5 and d.params["beta"] == 0.062 and d.params["gamma"] == 0.1
    assert build_defense("hint", "cifar10", resolve_recipe("cifar10", "paper")).params["schedule"] == [5, 15, 40]
    assert scale_schedule("mnist", 10) == [2, 5]
    assert scale_schedule("cifar10", 40) == [2, 8, 20]
    assert scale_schedule("mnist", 2) == [1]
    assert scale_schedule("mnist", 1) == [0]
    assert build_defense("hint", "mnist", paper, schedule="15, 5,5").params["schedule"] == [5, 15]


@pytest.mark.parametrize("params", [
    {"ratio": 0}, {"ratio": 1.5}, {"ratio": -0.1}, {"beta": 0}, {"beta": -1}, {"gamma": 0},
    {"schedule": ""}, {"schedule": "30"}, {"schedule": "-1"}, {"schedule": "a,b"}, {"ihvp": "newton"},
    {"grad_space": "x"}, {"hessian_data": "val"}, {"damping": 0}, {"eps": 1},
    {"ihvp": "lissa", "damping": 100},  # the LiSSA recursion diverges for λ ≥ 2·scale whatever H is
])
def test_bad_parameters_are_one_line_errors(params):
    with pytest.raises(PoisonbenchError) as err:
        build_defense("hint", "mnist", resolve_recipe("mnist", "paper"), **params)
    assert "\n" not in str(err.value)


def test_invariants():
    poisoned = torch.zeros(50, dtype=torch.bool)
    poisoned[::3] = True
    defense, result, x0 = run(gamma=5.0, beta=0.05, ratio=0.3)
    assert not hasattr(result.context, "poisoned")  # the hooks that decide never see the ground truth
    ctx = result.context
    k = math.ceil(0.3 * 50)
    sel = defense.selected
    assert len(sel) == k == len(set(sel.tolist()))
    delta = ctx.train_x - x0
    assert delta.abs().max() <= 0.05 + 1e-6
    assert ctx.train_x.min() >= 0 and ctx.train_x.max() <= 1
    mask = torch.zeros(50, dtype=torch.bool)
    mask[sel] = True
    assert delta[~mask].abs().max() == 0  # noise only on selected rows
    assert delta[mask].abs().sum() > 0
    assert [u["epoch"] for u in defense.updates] == [1, 3]
    assert "selected_poisoned" not in defense.summary()  # without the mask: no poison statistics
    s = defense.summary(poisoned)
    assert s["noise"]["selected"] == k and s["noise"]["delta_abs_max"] <= 0.05 + 1e-6
    assert s["selection"]["selected_poisoned"] == int(poisoned[sel].sum())
    assert 0 < len(s["examples"]) <= 8
    assert any(e["poisoned"] for e in s["examples"]) and any(not e["poisoned"] for e in s["examples"])
    assert {"hint_select", "hint_update", "train"} <= set(result.cost)


def test_updates_only_at_scheduled_epochs():
    x, y, vx, vy = data()
    torch.manual_seed(0)
    model = Small()
    opt, _ = make_optimizer(model, RECIPE)
    ctx = TrainContext(model, opt, RECIPE, torch.device("cpu"), torch.Generator().manual_seed(0), x.clone(), y,
                       vx, vy, 3, 0)
    defense = Hint("mnist", RECIPE, schedule=[1, 3], gamma=5.0)
    defense.prepare(ctx)
    changed = []
    for epoch in range(RECIPE.epochs):
        before = ctx.train_x.clone()
        defense.on_epoch_start(ctx, epoch)
        changed.append(bool((ctx.train_x != before).any()))
        with torch.no_grad():  # move the model a bit, as training would
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    assert changed == [False, True, False, True]


def test_deterministic():
    a, ra, _ = run(seed=3, gamma=2.0)
    b, rb, _ = run(seed=3, gamma=2.0)
    assert torch.equal(a.selected, b.selected)
    assert torch.equal(ra.context.train_x, rb.context.train_x)
    assert [h["train_loss"] for h in ra.history] == [h["train_loss"] for h in rb.history]


def test_sign_variant_saturates_and_quantize_is_uint8():
    d, r, x0 = run(sign=True, gamma=1.0, beta=0.05)
    delta = (r.context.train_x - x0)[d.selected]
    moved = delta.abs() > 0
    # sign steps of γ > β land on ±β unless the pixel clipped at 0 or 1
    inner = moved & (r.context.train_x[d.selected] > 0) & (r.context.train_x[d.selected] < 1)
    assert inner.sum() > 0.5 * moved.sum() > 0  # an empty `inner` would pass allclose vacuously
    assert torch.allclose(delta[inner].abs(), torch.tensor(0.05), atol=1e-6)
    x, y, vx, vy = data()
    xq = (x * 255).round() / 255
    torch.manual_seed(0)
    model = Small()
    defense = Hint("mnist", RECIPE, schedule=[1, 3], gamma=3.0, quantize=True)
    res = train(model, xq.clone(), y, vx, vy, RECIPE, seed=0, device=torch.device("cpu"), num_classes=3,
                defense=defense, compile="off")
    q = res.context.train_x * 255
    assert torch.allclose(q, q.round(), atol=1e-3)
    # β = 0.062 is off the 1/255 grid: truncation must not step below x0 − β (it would reach 16/255 = 0.0627)
    noise = (res.context.train_x - xq)[defense.selected]
    assert noise.abs().max() <= 0.062 + 1e-6 and noise.min() < -0.058
    # on the grid, 15/255 is as far as β = 0.062 reaches: such pixels count as at β
    at_bound = (noise.abs() > 0.062 - 1 / 255 + 1e-6).flatten(1)
    stats = defense.summary()["noise"]
    assert stats["reached_beta"] == int(at_bound.any(1).sum()) > 0
    assert stats["pixels_at_beta_fraction"] == pytest.approx(at_bound.float().mean().item())


def test_normalized_grad_space_scales_the_pixel_gradient_by_std():
    # official CIFAR quirk Q2: ∇ w.r.t. the normalised input z = (x − m)/σ is σ·∇_x, applied in pixel space
    pixel, _, _ = run(model_class=SmallNormalized)
    normalized, _, _ = run(model_class=SmallNormalized, grad_space="normalized")
    assert torch.equal(pixel.selected, normalized.selected)  # same training up to the first update
    first_p, first_n = pixel.updates[0], normalized.updates[0]
    assert first_n["i_pert_abs_mean"] == pytest.approx(0.25 * first_p["i_pert_abs_mean"], rel=1e-4)
    with pytest.raises(PoisonbenchError, match="--grad-space normalized needs a model that normalises"):
        run(grad_space="normalized")  # no `normalize` to take σ from: an error, not the pixel gradient


def test_lissa_and_selected_hessian_run():
    d, r, _ = run(ihvp="lissa", hessian_data="selected", gamma_decay_epoch=3, grad_space="normalized",
                  model_class=SmallNormalized)
    assert [u["gamma"] for u in d.updates] == [0.1, 0.1 / 10]
    assert d.updates[1]["ihvp"]["method"] == "lissa"
    assert d.updates[0]["ihvp"] is None  # the first update reuses the selection's s: no solve to report


def test_the_later_solve_uses_the_selected_rows_only_with_hessian_data_selected(monkeypatch):
    """Q4: the official code's later-epoch Hessian comes from the selected subset; ours from the whole pool."""
    rows = []
    solve = Hint._solve

    def spy(self, ctx, epoch, hx, hy, inputs=None):
        rows.append((epoch, len(hx)))
        return solve(self, ctx, epoch, hx, hy, inputs)

    monkeypatch.setattr(Hint, "_solve", spy)
    selected, _, x = run(hessian_data="selected")
    assert rows == [(1, len(x)), (3, len(selected.selected))] and len(selected.selected) < len(x)
    rows.clear()
    run()
    assert rows == [(1, len(x)), (3, len(x))]


def test_needs_validation_split():
    x, y, vx, vy = data()
    model = Small()
    with pytest.raises(PoisonbenchError, match="validation"):
        train(model, x, y, vx[:0], vy[:0], RECIPE, seed=0, device=torch.device("cpu"), num_classes=3,
              defense=Hint("mnist", RECIPE, schedule=[1]), compile="off")


def test_noise_figure(tmp_path):
    from poisonbench.report.figures import noise_figure

    poisoned = torch.zeros(50, dtype=torch.bool)
    poisoned[1::2] = True
    d, _, _ = run(gamma=3.0)
    record = {"run_id": "abc", "defense": d.summary(poisoned)}
    out = noise_figure(record, tmp_path / "f.png")
    assert out.stat().st_size > 1000
    with pytest.raises(PoisonbenchError):
        noise_figure({"run_id": "x", "defense": {}}, tmp_path / "g.png")


def test_cli_bad_ratio_exits_2(capsys):
    from poisonbench.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["defend", "--method", "hint", "--ratio", "0", "--results", "/nonexistent-unused"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "ratio" in err and "0" in err and "Traceback" not in err, err


def direct_context():
    """A TrainContext on `data()` around a Small model in eval mode (BatchNorm statistics from one pass), for
    calling HINT's hooks directly with the model held fixed."""
    x, y, vx, vy = data()
    torch.manual_seed(0)
    model = Small()
    model.train()(x)
    model.eval()
    optimizer, _ = make_optimizer(model, RECIPE)
    return TrainContext(model, optimizer, RECIPE, torch.device("cpu"), torch.Generator().manual_seed(0), x.clone(),
                        y, vx, vy, 3, 0), x


def test_selection_and_noise_updates_follow_algorithms_2_and_3():
    """Algorithm 2 keeps the ⌈r·n⌉ rows of largest |I_up,loss|; Algorithm 3 moves each selected row by
    δ ← Π_β(δ − γ·I_pert,loss(x̂)) from its accumulated noise, with I_pert taken at the current x̂ = clip(x + δ)
    and s re-solved on the current (noisy) rows at a later scheduled epoch."""
    ctx, x = direct_context()
    gamma, beta, ratio = 0.5, 0.05, 0.3
    hint = Hint("mnist", RECIPE, schedule=[1, 3], gamma=gamma, beta=beta, ratio=ratio, ihvp="exact")
    hint.prepare(ctx)
    damping = hint.params["damping"]
    hint.on_epoch_start(ctx, 1)
    s1 = inf.influence_vector(ctx.model, x, ctx.train_y, ctx.val_x, ctx.val_y, "exact", damping).s
    i_up = inf.influence_up(*inf.head_inputs(ctx.model, x), ctx.train_y, s1)
    largest = torch.argsort(-i_up.abs(), stable=True)[:math.ceil(ratio * len(x))]
    assert torch.equal(hint.selected, torch.sort(largest).values)

    sel, y = hint.selected, ctx.train_y[hint.selected]
    x0 = x[sel]
    step1 = -gamma * inf.influence_pert(ctx.model, x0, y, s1)
    delta1 = (x0 + step1.clamp(-beta, beta)).clamp(0, 1) - x0
    torch.testing.assert_close(ctx.train_x[sel] - x0, delta1, rtol=0, atol=1e-5)

    s2 = inf.influence_vector(ctx.model, ctx.train_x.clone(), ctx.train_y, ctx.val_x, ctx.val_y, "exact", damping).s
    hint.on_epoch_start(ctx, 3)
    step2 = -gamma * inf.influence_pert(ctx.model, x0 + delta1, y, s2)
    delta2 = (x0 + (delta1 + step2).clamp(-beta, beta)).clamp(0, 1) - x0
    torch.testing.assert_close(ctx.train_x[sel] - x0, delta2, rtol=0, atol=1e-5)


def test_healthy_noise_lowers_the_selected_rows_influence():
    """The sign of Algorithm 3, behaviourally: a small step along −I_pert,loss lowers I_up,loss(x̂) of the moved
    rows (to first order), with θ and s held fixed."""
    ctx, x = direct_context()
    hint = Hint("mnist", RECIPE, schedule=[1], gamma=1e-3, beta=0.05, ratio=0.5, ihvp="exact")
    hint.prepare(ctx)
    hint.on_epoch_start(ctx, 1)
    s = inf.influence_vector(ctx.model, x, ctx.train_y, ctx.val_x, ctx.val_y, "exact", hint.params["damping"]).s
    sel, y = hint.selected, ctx.train_y[hint.selected]
    before = inf.influence_up(*inf.head_inputs(ctx.model, x[sel]), y, s)
    after = inf.influence_up(*inf.head_inputs(ctx.model, ctx.train_x[sel]), y, s)
    moved = (ctx.train_x[sel] != x[sel]).flatten(1).any(1)
    assert moved.sum() > 10
    assert (after[moved] < before[moved]).float().mean() > 0.9


def test_ratio_one_is_allowed_and_a_negative_decay_epoch_is_not():
    """r = 1.0 is a Table V column (R_GRID); --gamma-decay-epoch −1 would silently divide γ from epoch 0."""
    recipe = resolve_recipe("mnist", "paper")
    assert build_defense("hint", "mnist", recipe, ratio=1.0).params["ratio"] == 1.0
    with pytest.raises(PoisonbenchError, match="--gamma-decay-epoch of method 'hint' must be >= 0"):
        build_defense("hint", "mnist", recipe, gamma_decay_epoch=-1)


def test_recorded_noise_statistics_are_those_of_the_applied_noise():
    beta = 0.05
    d, r, x0 = run(gamma=5.0, beta=beta, ratio=0.3)
    delta = (r.context.train_x - x0)[d.selected].flatten(1)
    noise = d.summary()["noise"]
    assert noise["delta_abs_mean"] == pytest.approx(delta.abs().mean().item(), rel=1e-5)
    assert noise["delta_abs_max"] == pytest.approx(delta.abs().max().item(), rel=1e-5)
    assert noise["changed"] == int((delta != 0).any(1).sum())
    at = delta.abs() >= beta * (1 - 1e-6)
    assert noise["reached_beta"] == int(at.any(1).sum())
    assert noise["pixels_at_beta_fraction"] == pytest.approx(at.float().mean().item())
    assert {k: d.updates[-1][k] for k in noise if k in d.updates[-1]} == {k: noise[k] for k in noise
                                                                           if k in d.updates[-1]}
    # a row with some noise but not every pixel moved: `changed` counts rows, not rows moved everywhere
    assert 0 < noise["changed"] <= len(d.selected)
    assert ((delta != 0).any(1) & ~(delta != 0).all(1)).any()
