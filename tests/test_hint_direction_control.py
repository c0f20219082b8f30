"""The noise-direction control for HINT (experiments/plugins/hint-direction-control; experiments/table3_powered.md):
HINT's selection, schedule, step sizes and projection, with the sign of each pixel's step replaced by a random sign
drawn once per pixel at the selection. Stated against HINT's own Algorithm 3 computed here, with the model held
fixed, and end to end through the plugin's entry point."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from poisonbench.defenses import influence as inf
from poisonbench.defenses.hint import Hint
from poisonbench.engine.training import train

from .test_hint import RECIPE, data, direct_context
from .test_plugins import FAST, dist_info, poisonbench_in_child

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGIN = Path(__file__).resolve().parent.parent / "experiments" / "plugins" / "hint-direction-control"
sys.path.insert(0, str(PLUGIN))
from pb_hint_control.direction import HintRandomSign  # noqa: E402


def both(**params):
    """HINT and the control with the same parameters, each on its own copy of `direct_context()`."""
    (ctx_h, x), (ctx_c, _) = direct_context(), direct_context()
    hint, control = Hint("mnist", RECIPE, **params), HintRandomSign("mnist", RECIPE, **params)
    hint.prepare(ctx_h)
    control.prepare(ctx_c)
    return (hint, ctx_h), (control, ctx_c), x


@pytest.mark.parametrize("sign", [False, True])
def test_the_update_is_hints_with_a_random_fixed_sign(sign):
    """Same rows as HINT; δ ← Π_β(δ − γ·|step|·s) with step = sign(I_pert) (or I_pert) at the current x̂, s the
    control's signs, fixed across updates; HINT's own update is unchanged by the control's existence."""
    gamma, beta = (0.02, 0.05) if sign else (0.5, 0.05)
    (hint, ctx_h), (control, ctx_c), x = both(schedule=[1, 3], gamma=gamma, beta=beta, ratio=0.3, ihvp="exact",
                                              sign=sign)
    hint.on_epoch_start(ctx_h, 1)
    control.on_epoch_start(ctx_c, 1)
    assert torch.equal(control.selected, hint.selected)
    sel = control.selected
    y, x0, s = ctx_c.train_y[sel], x[sel], control.random_sign.clone()
    assert s.shape == x0.shape and set(s.unique().tolist()) == {-1.0, 1.0}
    i1 = inf.influence_pert(ctx_c.model, x0, y, control._s.s)
    direction1 = i1.sign() if sign else i1
    delta1 = (x0 + (-gamma * direction1.abs() * s).clamp(-beta, beta)).clamp(0, 1) - x0
    torch.testing.assert_close(ctx_c.train_x[sel] - x0, delta1, rtol=0, atol=1e-6)
    hint_delta1 = (x0 + (-gamma * direction1).clamp(-beta, beta)).clamp(0, 1) - x0  # same model, same s: same I
    torch.testing.assert_close(ctx_h.train_x[sel] - x0, hint_delta1, rtol=0, atol=1e-6)

    control.on_epoch_start(ctx_c, 3)  # a second update: the signs stay, the step is taken at the current x̂
    assert torch.equal(control.random_sign, s)
    i2 = inf.influence_pert(ctx_c.model, x0 + delta1, y, control._s.s)
    direction2 = i2.sign() if sign else i2
    delta2 = (x0 + (delta1 - gamma * direction2.abs() * s).clamp(-beta, beta)).clamp(0, 1) - x0
    torch.testing.assert_close(ctx_c.train_x[sel] - x0, delta2, rtol=0, atol=1e-6)
    assert len(control.agreement) == 2 and all(0 <= a <= 1 for a in control.agreement)
    moved = direction1 != 0
    assert control.agreement[0] == pytest.approx(((direction1.abs() * s == direction1) & moved).sum().item()
                                                 / moved.sum().item())


def test_signs_are_a_fair_coin_from_the_runs_seed_and_drawn_again_on_a_resume():
    (_, _), (control, ctx), _ = both(schedule=[1, 3], ratio=0.5, ihvp="exact", sign=True)
    control.on_epoch_start(ctx, 1)
    s = control.random_sign
    n = s.numel()
    assert abs((s > 0).sum().item() - n / 2) < 4 * (n / 4) ** 0.5  # 4 standard deviations of a fair coin
    # the control's own stream (seed·1,000,003 + 6), never HINT's LiSSA sampler's (+ 4) nor the training order's
    own = torch.Generator().manual_seed(ctx.seed * 1_000_003 + 6)
    torch.testing.assert_close(s, (torch.randint(0, 2, s.shape, generator=own) * 2 - 1).float(), rtol=0, atol=0)
    # the same seed draws the same signs; another seed others
    (_, _), (again, ctx_again), _ = both(schedule=[1, 3], ratio=0.5, ihvp="exact", sign=True)
    again.on_epoch_start(ctx_again, 1)
    assert torch.equal(again.random_sign, s)
    (_, _), (other, ctx_other), _ = both(schedule=[1, 3], ratio=0.5, ihvp="exact", sign=True)
    ctx_other.seed = 1
    other.prepare(ctx_other)
    other.on_epoch_start(ctx_other, 1)
    assert torch.equal(other.selected, control.selected) and not torch.equal(other.random_sign, s)
    # a resume: state, a fresh defense, load_state → the same signs and agreement history
    tensors, state = control.state(ctx)
    (_, _), (resumed, ctx_resumed), _ = both(schedule=[1, 3], ratio=0.5, ihvp="exact", sign=True)
    resumed.load_state(ctx_resumed, tensors, json.loads(json.dumps(state)))
    assert torch.equal(resumed.random_sign, s) and resumed.agreement == control.agreement


def test_trained_with_the_signed_step_the_noise_is_hints_in_size_and_the_signs_in_direction():
    """Signed steps of γ ≥ β put every moved pixel that did not clip at 0 or 1 on ±β with the control's sign: the
    noise HINT's signed update makes, in a random direction."""
    x, y, vx, vy = data()
    torch.manual_seed(0)
    from .test_hint import Small

    control = HintRandomSign("mnist", RECIPE, schedule=[1, 3], sign=True, gamma=1.0, beta=0.05)
    result = train(Small(), x.clone(), y, vx, vy, RECIPE, seed=0, device=torch.device("cpu"), num_classes=3,
                   defense=control, compile="off")
    sel = control.selected
    x_hat = result.context.train_x[sel]
    delta = x_hat - x[sel]
    inner = (delta != 0) & (x_hat > 0) & (x_hat < 1)
    assert inner.sum() > 0.5 * (delta != 0).sum() > 0
    assert torch.allclose(delta[inner].abs(), torch.tensor(0.05), atol=1e-6)
    assert torch.equal(delta[inner].sign(), -control.random_sign[inner])  # δ ← δ − γ·s
    summary = control.summary()
    assert summary["direction"] == {"kind": "random sign per pixel, fixed at the selection",
                                    "agreement_with_influence_sign": control.agreement}
    assert summary["noise"]["beta"] == 0.05 and len(control.agreement) == 2


def test_the_plugins_declaration_and_an_end_to_end_run_through_its_entry_point(tiny_npz, tmp_path):
    import tomllib

    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    entry = {"hint-random-sign": "pb_hint_control.direction:HintRandomSign"}
    assert project["entry-points"] == {"poisonbench.defenses": entry} and HintRandomSign.name == "hint-random-sign"
    site = tmp_path / "site"
    dist_info(site, project["name"], project["version"], {"poisonbench.defenses": entry})
    done = poisonbench_in_child(tmp_path, "defend", "--dataset", str(tiny_npz), *FAST, "--method", "hint-random-sign",
                                "--sign", "--beta", "0.3", "--schedule", "0", "--results", "r", "--json",
                                path=[site, PLUGIN])
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "r" / "runs" / f"{json.loads(done.stdout)['run_id']}.json").read_text())
    assert record["config"]["defense"]["method"] == "hint-random-sign"
    assert (record["config"]["defense"]["sign"], record["config"]["defense"]["beta"]) == (True, 0.3)
    assert record["env"]["plugins"] == {project["name"]: project["version"]}
    assert record["defense"]["direction"]["kind"] == "random sign per pixel, fixed at the selection"
    assert len(record["defense"]["direction"]["agreement_with_influence_sign"]) == 1


@pytest.mark.parametrize("sign, expected", [(True, [1.0, -1.0, 0.0, -1.0]), (False, [0.5, -0.5, 0.0, -2.0])])
def test_the_step_and_its_agreement_with_hint_on_a_known_influence(sign, expected):
    """|step|·s, a pixel of zero influence left unmoved, and the agreement counted over the moved pixels only."""
    control = HintRandomSign("mnist", RECIPE, sign=sign)
    control.random_sign = torch.tensor([1.0, -1.0, 1.0, -1.0])
    step = control._step(torch.tensor([0.5, 0.5, 0.0, -2.0]))
    assert torch.equal(step, torch.tensor(expected))
    assert control.agreement == [2 / 3]  # pixels 0 and 3 of the 3 moved agree with HINT's own step
