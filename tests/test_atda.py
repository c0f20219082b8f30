"""ATDA on tiny data: x̃ within β (ℓ∞ and ℓ2) and [0, 1]; FAT's early stop (τ = 0 stops a misclassified example
at its random start, τ > 0 spends τ more steps) equals a per-example reference loop; the pgd variant raises the
loss; threat-dependent defaults; the engine's own random stream untouched; bad options are one-line errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from poisonbench.core.errors import PoisonbenchError
from poisonbench.defenses import DEFENSES, Threat, build_defense
from poisonbench.defenses.atda import (
    FAT_STEP_RATIO,
    Atda,
    FinishedFlags,
    adversarial_examples,
    compacts,
    distance,
    dynamic_tau,
    random_start,
    tau_bounds,
)
from poisonbench.engine.recipes import Recipe, resolve_recipe
from poisonbench.engine.training import train

from .toys import SmallConvNet

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
RECIPE = Recipe("tiny", epochs=3, batch_size=32, lr=0.05, momentum=0.9)


Small = SmallConvNet


def data(n=96, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = (torch.rand(n, 1, 8, 8, generator=g) * 0.4 + y[:, None, None, None] * 0.25).clamp(0, 1)
    return x.to(dtype), y


def model_in_eval(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = Small().to(dtype)
    x, _ = data(dtype=dtype)
    model.train()(x)  # BatchNorm statistics of the data, then eval mode: examples independent
    return model.eval()


def test_registered_and_threat_dependent_defaults():
    assert "atda" in DEFENSES.names()
    paper = resolve_recipe("cifar10", "paper")
    for threat in (Threat(), Threat("untargeted")):
        d = build_defense("atda", "cifar10", paper, threat)
        assert (d.params["beta"], d.params["norm"]) == (0.25, "l2")
    d = build_defense("atda", "cifar10", paper, Threat("targeted", budget=50, train_size=5000))
    assert (d.params["beta"], d.params["norm"]) == (0.062, "linf")
    assert d.params["variant"] == "fat" and d.params["steps"] == 10 and d.params["omega"] == 0.001
    assert d.params["tau"] is None and d.alpha == pytest.approx(0.062 * 0.007 / 0.031)
    assert build_defense("atda", "cifar10", paper, beta=0.5).params["norm"] == "l2"  # a given value wins
    pgd = build_defense("atda", "cifar10", paper, variant="pgd")
    assert (pgd.params["steps"], pgd.params["step_ratio"], pgd.params["omega"]) == (7, 0.2, None)
    assert build_defense("atda", "cifar10", paper, variant="pgd", steps=3).params["steps"] == 3
    assert Atda.defaults("cifar10", paper)["step_ratio"] == FAT_STEP_RATIO


def test_fat_dynamic_tau_scales_to_the_recipe():
    assert tau_bounds(120) == (50, 90)  # FAT: τ = 0 for 1-based epochs ≤ 50, 1 for ≤ 90, 2 after
    assert [dynamic_tau(e, 120) for e in (0, 49, 50, 89, 90, 119)] == [0, 0, 1, 1, 2, 2]
    assert tau_bounds(80) == (33, 60) and tau_bounds(30) == (12, 22)
    assert tau_bounds(1) == (1, 1) and dynamic_tau(0, 1) == 0


@pytest.mark.parametrize("norm, beta", [("linf", 0.062), ("l2", 0.25)])
@pytest.mark.parametrize("tau", [0, 2, None])
@pytest.mark.parametrize("compact", [False, True])
def test_adversarial_examples_stay_within_beta_and_valid_pixels(norm, beta, tau, compact):
    model = model_in_eval()
    x, y = data()
    x[:8] = 1.0  # saturated rows: clamped at 1
    g = torch.Generator().manual_seed(0)
    noise = 0.001 * torch.randn(10, *x.shape, generator=g)
    x_adv, taken, _ = adversarial_examples(model, x, y, beta=beta, alpha=beta / 4, steps=10, norm=norm, tau=tau,
                                           start=random_start(g, x, beta, norm), noise=noise, compact=compact)
    assert distance(x_adv - x, norm).max() <= beta + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert taken.max() <= 10 and (taken.sum() > 0)
    if norm == "l2":
        assert distance(random_start(g, x, beta, norm), norm) == pytest.approx(torch.full((len(x),), beta))


@pytest.mark.parametrize("compact", [False, True])
def test_tau_zero_stops_a_misclassified_example_at_its_random_start(compact):
    """Rows labelled against the model's confident prediction stop at step 0 and keep x + start; rows it
    classifies right with a margin a small β cannot cross take every step."""
    model = model_in_eval()
    x, _ = data()
    with torch.no_grad():
        logits = model(x)
    top2 = logits.topk(2, 1).values
    margin = top2[:, 0] - top2[:, 1]
    confident = margin > margin.median()
    y = logits.argmax(1)
    y[::2] = (y[::2] + 1) % 3  # even rows: misclassified
    start = random_start(torch.Generator().manual_seed(1), x, 0.002, "linf")
    x_adv, taken, stopped = adversarial_examples(model, x, y, beta=0.002, alpha=0.0005, steps=6, norm="linf",
                                                 tau=0, start=start, compact=compact)
    wrong = torch.zeros(len(x), dtype=torch.bool)
    wrong[::2] = True
    assert (taken[wrong] == 0).all() and stopped[wrong].all()
    assert torch.equal(x_adv[wrong], (x + start).clamp(0, 1)[wrong])
    kept_right = ~wrong & confident
    assert kept_right.sum() >= 10
    assert (taken[kept_right] == 6).all() and not stopped[kept_right].any()
    assert not torch.equal(x_adv[kept_right], (x + start).clamp(0, 1)[kept_right])


@pytest.mark.parametrize("compact", [False, True])
def test_tau_spends_tau_more_steps_after_the_first_misclassification(compact):
    model = model_in_eval()
    x, _ = data()
    with torch.no_grad():
        y = (model(x).argmax(1) + 1) % 3  # every row misclassified from the start (ascent keeps it so)
    zero = torch.zeros_like(x)
    for tau in (0, 1, 3):
        _, taken, stopped = adversarial_examples(model, x, y, beta=0.03, alpha=0.01, steps=8, norm="linf", tau=tau,
                                                 start=zero, compact=compact)
        assert (taken == tau).all() and stopped.all()
    _, taken, stopped = adversarial_examples(model, x, y, beta=0.03, alpha=0.01, steps=2, norm="linf", tau=3,
                                             start=zero, compact=compact)
    assert (taken == 2).all() and not stopped.any()  # budget left when the steps run out


def reference_fat(model, x, y, *, beta, alpha, steps, norm, tau, start, noise):
    """FAT's early-stopped PGD written per example (FAT earlystop.py's loop, one example at a time)."""
    out, counts = [], []
    for i in range(len(x)):
        x0, xa, control, taken = x[i:i + 1], (x[i:i + 1] + start[i:i + 1]).clamp(0, 1), tau, 0
        for k in range(steps):
            xa = xa.detach().requires_grad_(True)
            logits = model(xa)
            if logits.argmax(1).item() != y[i].item():
                if control == 0:
                    break
                control -= 1
            (grad,) = torch.autograd.grad(F.cross_entropy(logits, y[i:i + 1]), xa)
            with torch.no_grad():
                if norm == "linf":
                    xa = xa + alpha * grad.sign()
                else:
                    xa = xa + alpha * grad / (grad.norm() + 1e-10)
                xa = xa + noise[k, i:i + 1]
                d = xa - x0
                if norm == "linf":
                    d = d.clamp(-beta, beta)
                elif d.norm() > beta:  # torch.renorm's rule (ATDA attacks/step.py)
                    d = d * (beta / (d.norm() + 1e-7))
                xa = (x0 + d).clamp(0, 1)
            taken += 1
        out.append(xa.detach())
        counts.append(taken)
    return torch.cat(out), torch.tensor(counts)


@pytest.mark.parametrize("norm, beta", [("linf", 0.05), ("l2", 0.4)])
@pytest.mark.parametrize("tau", [0, 1])
def test_masked_fat_equals_a_per_example_reference_loop(norm, beta, tau):
    model = model_in_eval(dtype=torch.float64)
    x, _ = data(n=48, dtype=torch.float64)
    y = torch.randint(0, 3, (48,), generator=torch.Generator().manual_seed(3))  # random labels: every stop time
    g = torch.Generator().manual_seed(2)
    start = random_start(g, x, beta, norm)
    noise = 0.001 * torch.randn(6, *x.shape, generator=g, dtype=torch.float64)
    kw = dict(beta=beta, alpha=beta / 3, steps=6, norm=norm, tau=tau, start=start, noise=noise)
    x_adv, taken, stopped = adversarial_examples(model, x, y, **kw)
    ref_adv, ref_taken = reference_fat(model, x, y, **kw)
    assert torch.equal(taken, ref_taken)
    assert len(taken.unique()) >= 4 and stopped.any() and not stopped.all()  # early, late and no stops
    torch.testing.assert_close(x_adv, ref_adv, atol=1e-9, rtol=0)
    early, _, _ = adversarial_examples(model, x, y, **kw, early_exit=True)
    assert torch.equal(early, x_adv)


class RowsForwarded:
    """A forward that counts the rows it is given."""

    def __init__(self, model):
        self.model, self.rows = model, []

    def __call__(self, x):
        self.rows.append(len(x))
        return self.model(x)


@pytest.mark.parametrize("n", [1, 5, 48])
@pytest.mark.parametrize("norm, beta", [("linf", 0.05), ("l2", 0.4)])
@pytest.mark.parametrize("tau", [0, 1, 2])
def test_compacted_fat_equals_the_masked_loop_and_forwards_only_the_rows_still_moving(n, norm, beta, tau):
    """`compact` (the CPU's FAT): the masked loop's x̃, steps taken and stops, and the per-example reference's, for
    any batch size, including one row; each step forwards exactly the examples still moving, so an example that
    stopped after s steps was forwarded s + 1 times and one that never stopped `steps` times."""
    model = model_in_eval(dtype=torch.float64)
    x, _ = data(n=48, dtype=torch.float64)
    y = torch.randint(0, 3, (48,), generator=torch.Generator().manual_seed(3))
    x, y = x[:n], y[:n]
    g = torch.Generator().manual_seed(2)
    steps = 6
    kw = dict(beta=beta, alpha=beta / 3, steps=steps, norm=norm, tau=tau, start=random_start(g, x, beta, norm),
              noise=0.001 * torch.randn(steps, *x.shape, generator=g, dtype=torch.float64))
    counted = RowsForwarded(model)
    x_adv, taken, stopped = adversarial_examples(counted, x, y, **kw, compact=True)
    masked = adversarial_examples(model, x, y, **kw)
    assert torch.equal(taken, masked[1]) and torch.equal(stopped, masked[2])
    assert (taken.dtype, stopped.dtype, x_adv.dtype) == (masked[1].dtype, masked[2].dtype, x.dtype) == (
        torch.long, torch.bool, torch.float64)
    torch.testing.assert_close(x_adv, masked[0], atol=1e-12, rtol=0)
    ref_adv, ref_taken = reference_fat(model, x, y, **kw)
    assert torch.equal(taken, ref_taken)
    torch.testing.assert_close(x_adv, ref_adv, atol=1e-9, rtol=0)
    assert sum(counted.rows) == int((taken + stopped.long()).sum())
    assert counted.rows == sorted(counted.rows, reverse=True) and counted.rows[0] == n
    if n == 48:
        assert len(taken.unique()) >= 3 and stopped.any() and not stopped.all()  # early, late and no stops
        assert sum(counted.rows) < steps * n  # fewer rows than the masked loop forwards


def test_the_cpu_compacts_and_a_gpu_keeps_the_masked_loop():
    """The compacted loop reads the device at every step (how many rows are left): the CPU's choice only."""
    assert compacts(torch.device("cpu")) is True
    assert compacts(torch.device("cuda")) is False and compacts(torch.device("mps")) is False


def test_compact_leaves_plain_pgd_to_the_masked_loop():
    """Plain PGD (τ None) stops no example: `compact` changes nothing, and every step forwards the whole batch."""
    model = model_in_eval()
    x, y = data(n=20)
    start = random_start(torch.Generator().manual_seed(1), x, 0.1, "linf")
    counted = RowsForwarded(model)
    out = adversarial_examples(counted, x, y, beta=0.1, alpha=0.02, steps=3, norm="linf", tau=None, start=start,
                               compact=True)
    ref = adversarial_examples(model, x, y, beta=0.1, alpha=0.02, steps=3, norm="linf", tau=None, start=start)
    assert all(torch.equal(a, b) for a, b in zip(out, ref, strict=True)) and counted.rows == [20, 20, 20]


class LaggingFlags(FinishedFlags):
    """The CUDA rule on the CPU: a device `lag` steps behind the host, whose flag k arrives once the host has sent
    flag k + lag (`FinishedFlags.arrived`: a CUDA event completed)."""

    def __init__(self, steps: int, lag: int):
        super().__init__(steps, CPU)
        self.lag = lag

    def arrived(self, step: int) -> bool:
        return step + self.lag < self.posted


class Forwards:
    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x):
        self.calls += 1
        return self.model(x)


@pytest.mark.parametrize("norm, beta", [("linf", 0.3), ("l2", 3.0)])
def test_early_exit_at_any_lag_gives_the_full_loops_results(norm, beta):
    """Every row stops within the steps, at different steps. The loop ends `lag` steps after the step at which no
    row was left (the CPU's exit: lag 0), or runs every step when the flag arrives too late; the results are the
    full loop's, bit for bit."""
    model = model_in_eval(dtype=torch.float64)
    x, _ = data(n=48, dtype=torch.float64)
    y = torch.randint(0, 3, (48,), generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(2)
    steps = 8
    kw = dict(beta=beta, alpha=beta / 3, steps=steps, norm=norm, tau=1, start=random_start(g, x, beta, norm),
              noise=0.001 * torch.randn(steps, *x.shape, generator=g, dtype=torch.float64))
    full = Forwards(model)
    ref = adversarial_examples(full, x, y, **kw)
    taken, stopped = ref[1], ref[2]
    assert stopped.all() and len(taken.unique()) >= 2 and full.calls == steps
    last = int(taken.max())  # 0-based: the step whose forward finds the last row done, no row left after it
    assert last + 1 < steps  # the exit saves forwards
    for lag in range(steps + 1):
        for early_exit in ([True, LaggingFlags(steps, 0)] if lag == 0 else [LaggingFlags(steps, lag)]):
            counted = Forwards(model)
            out = adversarial_examples(counted, x, y, **kw, early_exit=early_exit)
            assert all(torch.equal(a, b) for a, b in zip(out, ref, strict=True)), lag
            assert counted.calls == min(last + 1 + lag, steps), lag


def test_pgd_variant_takes_every_step_and_raises_the_loss():
    x, y = data()
    torch.manual_seed(0)
    model = Small()
    train(model, x.clone(), y, x, y, RECIPE, seed=0, device=CPU, num_classes=3, compile="off")
    model.eval()
    beta = 0.1
    start = random_start(torch.Generator(), x, beta, "linf")
    x_adv, taken, stopped = adversarial_examples(model, x, y, beta=beta, alpha=beta / 5, steps=7, norm="linf",
                                                 tau=None, start=start)
    assert (taken == 7).all() and not stopped.any()
    with torch.no_grad():
        clean, at_start, adv = (F.cross_entropy(model(v), y, reduction="none") for v in (x, (x + start).clamp(0, 1),
                                                                                        x_adv))
    assert (adv > clean).all() and (adv > at_start).all() and adv.mean() > 1.3 * clean.mean()


def engine_run(method="atda", seed=0, **params):
    x, y = data()
    torch.manual_seed(seed)
    model = Small()
    defense = build_defense(method, "mnist", RECIPE, **params)
    result = train(model, x.clone(), y, x[:12], y[:12], RECIPE, seed=seed, device=CPU, num_classes=3,
                   defense=defense, compile="off")
    return defense, result, model


@pytest.mark.parametrize("params", [{}, {"variant": "pgd", "norm": "linf", "beta": 0.062}])
def test_training_records_the_attack_and_leaves_the_engines_stream_alone(params):
    defense, result, model = engine_run(**params)
    s = defense.summary()
    assert [e["epoch"] for e in s["epochs"]] == [0, 1, 2] and s["last_epoch"] == s["epochs"][-1]
    steps = 10 if not params else 7
    p = defense.params
    assert {k: v for k, v in s.items() if k not in ("epochs", "last_epoch", "tau")} == {
        "method": "atda", "variant": p["variant"], "norm": p["norm"], "beta": p["beta"], "steps": steps,
        "alpha": pytest.approx(p["beta"] * p["step_ratio"])}
    for e in s["epochs"]:
        assert set(e) == {"epoch", "tau", "examples", "mean_steps", "stopped_early_fraction", "mean_distance"}
        assert e["examples"] == 96 and 0 <= e["mean_steps"] <= steps
        assert 0 <= e["stopped_early_fraction"] <= 1 and (e["stopped_early_fraction"] * 96) == pytest.approx(
            round(e["stopped_early_fraction"] * 96))  # a count of the 96 examples
        assert 0 < e["mean_distance"] <= s["beta"] + 1e-6
    if params:
        assert all(e["mean_steps"] == 7 and e["stopped_early_fraction"] == 0 for e in s["epochs"])
        assert "tau" not in s
    else:
        assert s["tau"] == {"dynamic_from_epochs": [1, 2]} and [e["tau"] for e in s["epochs"]] == [0, 1, 2]
    _, plain, _ = engine_run("none")
    assert torch.equal(result.context.generator.get_state(), plain.context.generator.get_state())
    again, _, model_again = engine_run(**params)
    assert again.summary() == s
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model_again.state_dict().values(),
                                                 strict=True))


def test_linf_beta_one_is_the_largest_accepted():
    assert Atda("mnist", RECIPE, norm="linf", beta=1.0).params["beta"] == 1.0  # "(0, 1]": 1 itself is valid


def test_distance_is_each_examples_norm():
    delta = torch.randn(7, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flat = delta.reshape(7, -1)
    assert torch.equal(distance(delta, "linf"), flat.abs().max(dim=1).values)
    torch.testing.assert_close(distance(delta, "l2"), torch.linalg.vector_norm(flat, dim=1), atol=1e-12, rtol=0)


def test_every_row_misclassified_at_the_start_with_tau_zero_ends_after_one_forward():
    """τ 0 and every row wrong at its start: all stop at step 0, and the early exit (the CPU's flags) or the
    compacted loop forwards the batch once."""
    model = model_in_eval()
    x, _ = data()
    with torch.no_grad():
        y = (model(x).argmax(1) + 1) % 3
    for kw in ({"early_exit": True}, {"compact": True}):
        counted = RowsForwarded(model)
        _, taken, stopped = adversarial_examples(counted, x, y, beta=0.03, alpha=0.01, steps=8, norm="linf", tau=0,
                                                 start=torch.zeros_like(x), **kw)
        assert (taken == 0).all() and stopped.all() and counted.rows == [len(x)], kw


def test_an_untrained_defense_summarises_no_epoch_and_a_fixed_tau_as_given():
    fresh = Atda("mnist", RECIPE)
    s = fresh.summary()
    assert s["epochs"] == [] and s["last_epoch"] is None and s["tau"] == {"dynamic_from_epochs": [1, 2]}
    assert Atda("mnist", RECIPE, tau=3).summary()["tau"] == 3
    assert Atda("mnist", RECIPE, tau=0).summary()["tau"] == 0


def test_random_start_is_the_papers_draw_from_its_own_generator():
    """ℓ∞: U(±β) per pixel, `torch.rand` on the generator scaled to [−β, β); ℓ2: a Gaussian direction `torch.randn`
    on the generator scaled to norm β. Both in x's dtype and shape, reproducible from the generator's seed, and the
    generator advances (two draws differ)."""
    x = torch.rand(64, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for norm, beta in (("linf", 0.1), ("l2", 0.5)):
        start = random_start(torch.Generator().manual_seed(5), x, beta, norm)
        g = torch.Generator().manual_seed(5)
        if norm == "linf":
            expected = (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * beta
        else:
            r = torch.randn(x.shape, generator=g, dtype=x.dtype)
            expected = beta * r / r.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        torch.testing.assert_close(start, expected, atol=1e-9, rtol=0)  # ℓ2: up to the norm's 1e-10 guard
        assert start.dtype == torch.float64 and start.shape == x.shape
        g = torch.Generator().manual_seed(5)
        assert not torch.equal(random_start(g, x, beta, norm), random_start(g, x, beta, norm))
    linf = random_start(torch.Generator().manual_seed(5), x, 0.1, "linf")
    assert linf.min() < -0.099 and linf.max() > 0.099 and linf.abs().max() <= 0.1  # the whole box, both signs
    assert linf.flatten(1).norm(dim=1).min() > 0.3  # not an ℓ2 sphere of radius β (0.1·√(64/3) ≈ 0.46 expected)


def test_a_pixel_the_loss_does_not_depend_on_stays_at_its_start():
    """sign(0) = 0: an ℓ∞ step moves no pixel whose gradient is exactly 0 (a model that reads the left half of the
    image only), with no ω noise; the right half keeps x + start, the left half moves."""

    class LeftHalf(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(32, 3, dtype=torch.float64)

        def forward(self, v):
            return self.linear(v[:, :, :, :4].flatten(1))

    torch.manual_seed(0)
    model = LeftHalf()
    x, y = data(n=24, dtype=torch.float64)
    start = random_start(torch.Generator().manual_seed(1), x, 0.05, "linf")
    for compact in (False, True):
        x_adv, taken, _ = adversarial_examples(model, x, y, beta=0.05, alpha=0.01, steps=4, norm="linf", tau=2,
                                               start=start, compact=compact)
        begun = (x + start).clamp(0, 1)
        assert torch.equal(x_adv[..., 4:], begun[..., 4:])
        moved = taken > 0
        assert moved.any() and (x_adv[moved][..., :4] != begun[moved][..., :4]).any()


@pytest.mark.parametrize("params, message", [
    ({"beta": 0}, "--beta of method 'atda' must be > 0"),
    ({"beta": 2.0, "norm": "linf"}, "--beta of method 'atda' with --norm linf must be in (0, 1]"),
    ({"steps": 0}, "--steps of method 'atda' must be in [1, 1000]"),
    ({"variant": "trades"}, "unknown --variant value of method 'atda' 'trades'; valid choices: fat, pgd"),
    ({"norm": "l1"}, "valid choices: linf, l2"),
    ({"variant": "pgd", "tau": 1}, "--tau of method 'atda' applies to --variant fat only"),
    ({"tau": -1}, "--tau of method 'atda' must be >= 0"),
    ({"variant": "pgd", "omega": 0.01}, "--omega of method 'atda' applies to --variant fat only"),
    ({"step_ratio": 0}, "--step-ratio of method 'atda' must be > 0"),
])
def test_bad_options_are_one_line_errors(params, message):
    with pytest.raises(PoisonbenchError) as err:
        Atda("mnist", RECIPE, **params)
    assert message in str(err.value) and "\n" not in str(err.value)
