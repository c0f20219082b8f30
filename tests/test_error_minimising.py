"""The error-minimising attacks `em` (Huang et al.) and `rem` (Fu et al.): their mechanisms on tiny data, resuming
after a kill, and a bad option (docs/fidelity.md). The registry-wide invariants are tests/test_attacks.py's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poisonbench.attacks import ATTACKS, em, rem
from poisonbench.attacks.base import AttackContext
from poisonbench.data import load_dataset
from poisonbench.engine.models import build_model
from poisonbench.poisons import craft_spec

from .conftest import class_images, craft_killed_at_call, files_under, one_line_error, write_npz

EPS = 8 / 255


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("em")
    return load_dataset(str(write_npz(root))), root / "results"


def craft(name, data, results, seed=3, budget=1.0, **params):
    attack = ATTACKS.get(name)(data.family, **params)
    ctx = AttackContext(data, attack.choose_rows(data, budget, seed), EPS, budget, seed, torch.device("cpu"),
                        results_root=results)
    return attack, attack.craft(ctx)


def ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def clean_rows(data, indices):
    return data.train.x[indices].float().div(255), data.train.y[indices]


def test_em_noise_lowers_the_loss_of_the_crafting_model(tiny):
    """The crafting model's loss on x + δ is well below its loss on x (δ descends it; an ascent would raise it)."""
    data, results = tiny
    attack, poison = craft("em", data, results, max_iterations=2, stop_error=0.0)
    x, y = clean_rows(data, poison.indices)
    model = attack.crafting_model
    assert ce(model, x + poison.delta, y) < 0.9 * ce(model, x, y)


def test_sample_wise_noise_is_per_row_and_class_wise_noise_is_per_class(tiny):
    data, results = tiny
    _, sample = craft("em", data, results, max_iterations=2, stop_error=0.0)
    _, klass = craft("em", data, results, granularity="class", max_iterations=2, stop_error=0.0)
    y = data.train.y[sample.indices]
    x, _ = clean_rows(data, sample.indices)
    for c in range(data.num_classes):
        rows = (y == c).nonzero().flatten()[:2]
        a, b = sample.delta[rows[0]], sample.delta[rows[1]]
        assert (a - b).abs().max() > EPS / 8  # issue #7: one noise per row, not one per label
        da, db = klass.delta[rows[0]], klass.delta[rows[1]]
        inside = ((x[rows[0]] + da > 1e-6) & (x[rows[0]] + da < 1 - 1e-6) &
                  (x[rows[1]] + db > 1e-6) & (x[rows[1]] + db < 1 - 1e-6))
        assert inside.float().mean() > 0.5
        assert torch.allclose(da[inside], db[inside], atol=1e-6) and da[inside].abs().max() > 0
    # different classes get different noise
    first = [klass.delta[(y == c).nonzero()[0, 0]] for c in range(2)]
    assert (first[0] - first[1]).abs().max() > EPS / 20


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    """`tiny`'s class bands in mid-grey (pixels in [64, 184)): x + δ is never clipped by the pixel box at ε = 8/255,
    so the δ of a class-wise row is its class's noise exactly."""
    root = tmp_path_factory.mktemp("em-grey")
    x, y = class_images(200, 16, classes=4)
    np.savez(root / "grey.npz", x=(64 + x // 2).astype(np.uint8), y=y)
    return load_dataset(str(root / "grey.npz")), root / "results"


def test_class_wise_em_noise_lowers_the_loss_of_the_crafting_model(grey, one_thread):
    """Class-wise EM minimises the error too: the crafting model's loss on x + noise[y] is below its loss on x (an
    error-maximising class noise, the step's sign flipped, raises it above)."""
    data, results = grey
    attack, poison = craft("em", data, results, granularity="class", batch_size=16, max_iterations=1)
    x, y = clean_rows(data, poison.indices)
    model = attack.crafting_model  # the model the noise was crafted against
    assert poison.delta.abs().max() > 0
    assert ce(model, x + poison.delta, y) < 0.95 * ce(model, x, y)


def test_class_wise_em_noise_is_the_clipped_mean_of_its_rows_steps(grey, monkeypatch, one_thread):
    """Batch by batch, each class's noise becomes the mean (clipped to ε) of the one-step δ of its rows in the batch
    (EM's class-wise update), not their sum; every row's step starts from its class's current noise, and the
    returned δ of a row is its class's final noise (mid-grey: nothing clipped by the box)."""
    data, results = grey
    calls = []
    real = em.linf_pgd

    def spy(model, x, labels, eps, steps, step, init, maximize):
        out = real(model, x, labels, eps, steps, step, init, maximize=maximize)
        calls.append((labels.clone(), init.clone(), out.clone()))
        return out

    monkeypatch.setattr(em, "linf_pgd", spy)
    attack, poison = craft("em", data, results, granularity="class", batch_size=16, max_iterations=2,
                           stop_error=0.0, lr=1e-4, class_updates=2)
    # 32 rows in the stratified 20 % subset: two batches of 16 per outer iteration
    assert attack.training_summary["iterations"] == 2 and len(calls) == 4
    noise = torch.zeros((data.num_classes, *data.shape))
    for labels, init, out in calls:
        assert torch.equal(init, noise[labels])
        for c in labels.unique():
            rows = out[labels == c]
            assert len(rows) > 1  # a mean of several rows' steps, which a sum is not
            noise[c] = rows.mean(0).clamp(-EPS, EPS)
    assert noise.abs().max() > 0
    y = data.train.y[poison.indices]
    assert torch.allclose(poison.delta, noise[y], atol=1e-6)


def test_em_crafting_model_trains_on_the_perturbed_rows(tiny, monkeypatch, one_thread):
    """Min-min: every training batch of the crafting model is x + δ (clamped to the box) with the δ of the last
    update, from the second outer iteration on a non-zero δ (training on the clean rows would not be min-min)."""
    data, results = tiny
    events = []
    real_batch, real_train, real_pgd = em.BatchStream.batch, em.train_step, em.linf_pgd

    def batch(self, k):
        idx = real_batch(self, k)
        events.append(("batch", idx.clone()))
        return idx

    def train_step(model, opt, x, y):
        events.append(("train", x.clone()))
        real_train(model, opt, x, y)

    def pgd(*args, **kwargs):
        out = real_pgd(*args, **kwargs)
        events.append(("delta", out.clone()))
        return out

    monkeypatch.setattr(em.BatchStream, "batch", batch)
    monkeypatch.setattr(em, "train_step", train_step)
    monkeypatch.setattr(em, "linf_pgd", pgd)
    attack, poison = craft("em", data, results, steps=2, batch_size=64, train_batches=3, max_iterations=2,
                           stop_error=0.0, lr=1e-4)
    assert attack.training_summary["iterations"] == 2
    x, _ = clean_rows(data, poison.indices)  # the crafted rows, in the attack's order
    delta, start, checked = torch.zeros_like(x), 0, 0
    for (kind, value), nxt in zip(events, events[1:] + [(None, None)], strict=True):
        if kind == "batch":
            assert nxt[0] == "train"
            assert torch.allclose(nxt[1], (x[value] + delta[value]).clamp(0, 1), atol=1e-7)
            checked += bool(delta[value].abs().max() > 0)
        elif kind == "delta":  # sample-wise: the rows in order, batch by batch
            delta[start:start + len(value)] = value
            start = (start + len(value)) % len(x)
    assert checked == 3  # the second iteration's three batches, on a non-zero δ


def test_em_records_whether_it_stopped(tiny):
    data, results = tiny
    attack, _ = craft("em", data, results, granularity="class", max_iterations=1, stop_error=0.0, lr=1e-5)
    info = attack.training_summary
    assert info["iterations"] == 1 and info["stopped"] is False and info["final_train_error"] > 0


def test_rem_inner_adversary_raises_the_loss_and_the_outer_noise_lowers_the_robust_loss(tiny):
    data, _ = tiny
    x, y = clean_rows(data, torch.arange(64))
    model = build_model("convnet", data, seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval().requires_grad_(False)
    radius = 16 / 255
    g = torch.Generator().manual_seed(1)
    da = rem.adversarial(model, x, y, radius, 5, radius / 4, g)
    assert da.abs().max() <= radius + 1e-6
    assert ce(model, (x + da).clamp(0, 1), y) > 1.2 * ce(model, x, y)
    # δ_u lowers the loss under the adversary it is made robust to
    p = {"adv_radius": radius, "samples": 2, "u_steps": 5, "a_steps": 3, "u_step_fraction": 0.2,
         "a_step_fraction": 0.25}
    du = rem.robust_min(model, x, y, EPS, p, torch.Generator().manual_seed(2), "shift")
    def robust(d):
        return ce(model, (x + d + rem.adversarial(model, x + d, y, radius, 5, radius / 4, g)).clamp(0, 1), y)

    assert robust(du) < robust(torch.zeros_like(x))


def test_rem_inner_delta_stays_in_the_eps_ball_at_every_step(grey, monkeypatch, one_thread):
    """Every x + δ_u that REM's crafting hands on (to the EOT augmentation, then the inner adversary and the model),
    at each inner descent step and in each training step, is within ε of its clean rows: δ_u is projected at every
    step, not only by the final projection of the returned noise."""
    data, _ = grey
    seen, current = [], {}
    real_min, real_augment = rem.robust_min, rem.augment

    def robust_min(model, x, y, eps, p, generator, transform):
        current["x"] = x
        return real_min(model, x, y, eps, p, generator, transform)

    def augment(name, xs, generator):
        x = current["x"]
        seen.append(float((xs[:len(x)] - x).detach().abs().max()))
        return real_augment(name, xs, generator)

    monkeypatch.setattr(rem, "robust_min", robust_min)
    monkeypatch.setattr(rem, "augment", augment)
    attack = ATTACKS.get("rem")(data.family, schedule="budget", train_steps=3, batch_size=32, u_steps=4, a_steps=1,
                                u_step_fraction=0.5)
    ctx = AttackContext(data, attack.choose_rows(data, 0.2, 3), EPS, 0.2, 3, torch.device("cpu"))
    attack.perturb(ctx)
    assert len(seen) == 3 * (4 + 1) + 4  # 3 training steps (4 inner steps, then the SGD step's), 1 noise batch
    assert max(seen) <= EPS + 1e-6
    assert max(seen) > 0.9 * EPS  # the steps reach the ball's edge: the bound is tested, not idle


def test_an_interrupted_em_craft_resumes_after_its_last_outer_iteration(tiny, tmp_path, monkeypatch):
    from poisonbench import poisons

    data, _ = tiny
    spec = craft_spec(data, "em", eps=EPS, budget=1.0, seed=3, max_iterations=3, stop_error=0.0, lr=1e-4)
    whole, _ = poisons.craft(spec, data, tmp_path / "whole")
    assert whole.manifest["attack_info"]["iterations"] == 3
    work = tmp_path / "interrupted"
    craft_killed_at_call(monkeypatch, em, "train_step", 21, spec, data, work)  # ten batches per outer iteration
    assert (work / "partial" / spec.poison_id / "em.safetensors").exists()
    resumed, _ = poisons.craft(spec, data, work)
    assert resumed.manifest["attack_info"]["resumed_iterations"] == 2
    assert torch.equal(resumed.delta, whole.delta)
    assert not (work / "partial" / spec.poison_id).exists()


def test_an_interrupted_rem_craft_resumes_after_its_last_saved_step(tiny, tmp_path, monkeypatch):
    from poisonbench import poisons

    data, _ = tiny
    spec = craft_spec(data, "rem", eps=EPS, budget=1.0, seed=3, schedule="budget", train_steps=12, u_steps=2,
                      a_steps=1)
    whole, _ = poisons.craft(spec, data, tmp_path / "whole")
    work = tmp_path / "interrupted"
    craft_killed_at_call(monkeypatch, rem, "train_step", 12, spec, data, work)
    assert (work / "partial" / spec.poison_id / "rem.safetensors").exists()
    resumed, _ = poisons.craft(spec, data, work)
    assert resumed.manifest["attack_info"]["resumed_steps"] == rem.SAVE_EVERY
    assert torch.equal(resumed.delta, whole.delta)


def test_em_and_rem_default_to_the_authors_eps():
    shape = (1, 28, 28)
    assert ATTACKS.get("em").default_eps("mnist", shape) == ATTACKS.get("rem").default_eps("mnist", shape) == EPS


@pytest.mark.parametrize("args,needle", [(["--attack", "em", "--granularity", "pixel"], "pixel"),
                                         (["--attack", "rem", "--adv-radius", "-0.1"], "adv"),
                                         (["--attack", "em", "--max-iterations", "0"], "max")])
def test_bad_error_minimising_options_are_one_line_errors(cli, tiny_npz, tmp_path, args, needle):
    results = tmp_path / "r"
    code, _, err = cli("craft", *args, "--dataset", tiny_npz, "--results", results)
    one_line_error(code, err, needle)
    assert files_under(results) == []


def test_the_stratified_subset_comes_from_the_generator_alone():
    """EM's per-class subset (its stop condition's rows): the given generator decides it, never the global RNG, and
    every class keeps round(portion · count) rows, at least one (a mutant drawing from the global RNG survived the
    mutation run)."""
    from poisonbench.attacks.em import stratified_subset

    y = torch.tensor([0] * 10 + [1] * 7 + [2] * 1 + [3] * 4 + [4] * 3)
    picks = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        picks.append(stratified_subset(y, 0.5, torch.Generator().manual_seed(7)))
    assert torch.equal(picks[0], picks[1])
    assert not torch.equal(picks[0], stratified_subset(y, 0.5, torch.Generator().manual_seed(8)))
    assert torch.bincount(y[picks[0]]).tolist() == [5, 4, 1, 2, 2]  # 0.5 · (10, 7, 1, 4, 3), half to even, ≥ 1
    assert torch.bincount(y[stratified_subset(y, 0.2, torch.Generator().manual_seed(7))]).tolist() == [2, 1, 1, 1, 1]
    assert torch.equal(picks[0], picks[0].sort().values)


def test_error_rate_is_the_share_of_wrong_predictions_over_every_batch():
    """EM's stop condition reads this: wrong / rows, summed over batches (the mutation run planted `==` for `!=`,
    `×` for `/` and a denominator of at least 2, and every test passed)."""

    class ReadsItsLabel(torch.nn.Module):  # predicts the class written in the first pixel
        def forward(self, x):
            return F.one_hot(x[:, 0, 0, 0].long(), 3).float()

    x = torch.zeros(5, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([0.0, 1, 2, 2, 1])
    y = torch.tensor([0, 1, 2, 0, 0])  # two wrong of five, across batches of two
    assert em.error_rate(ReadsItsLabel(), x, y, size=2) == pytest.approx(0.4)
    assert em.error_rate(ReadsItsLabel(), x[3:4], y[3:4]) == 1.0  # one row, wrong
    assert em.error_rate(ReadsItsLabel(), x[:1], y[:1]) == 0.0


def test_the_rows_the_crafting_model_sees_stay_in_the_image_range():
    x = torch.tensor([0.0, 0.5, 0.95, 1.0])
    delta = torch.tensor([-0.2, 0.2, 0.2, -0.1])
    assert torch.allclose(em.perturbed(x, delta), torch.tensor([0.0, 0.7, 1.0, 0.9]))


def test_em_steps_are_a_tenth_of_eps_and_the_noise_is_a_whole_number_of_them(tiny):
    """Sample-wise δ starts at 0 and moves by signed steps of step_fraction · ε (README: 0.8/255 at ε = 8/255): after
    three steps every entry is k · ε/10 with |k| ≤ 3 where x is far enough from 0 and 1 never to be clipped (a step
    of 0.1 / ε would put it at ±ε)."""
    data, results = tiny
    _, poison = craft("em", data, results, steps=3, max_iterations=1, stop_error=0.0)
    x, _ = clean_rows(data, poison.indices)
    inside = (x > 3.5 * 0.1 * EPS) & (x < 1 - 3.5 * 0.1 * EPS)
    k = poison.delta[inside] / (0.1 * EPS)
    assert inside.sum() > 100 and k.abs().max() <= 3 + 1e-3
    assert torch.allclose(k, k.round(), atol=1e-3)


def test_em_and_rem_crafts_are_functions_of_their_inputs(tiny):
    """The same inputs give the same δ bit for bit (the model's initialisation, the batch order and REM's draws come
    from attacker seeds of the inputs, never an unseeded or global stream); another crafting seed gives another δ."""
    data, results = tiny
    for name, params in (("em", {"max_iterations": 1, "stop_error": 0.0}),
                         ("rem", {"schedule": "budget", "train_steps": 2, "u_steps": 2, "a_steps": 1})):
        torch.manual_seed(0)
        _, first = craft(name, data, results, **params)
        torch.manual_seed(1)
        _, again = craft(name, data, results, **params)
        _, other = craft(name, data, results, seed=4, **params)
        assert torch.equal(first.delta, again.delta), name
        assert not torch.equal(first.delta, other.delta), name


@pytest.mark.parametrize("rows", [600, 475])
def test_class_wise_em_makes_the_authors_update_count_per_outer_iteration(tmp_path, monkeypatch, one_thread, rows):
    """Issue 67: each outer iteration updates the class noise 19 times, as the authors' CIFAR-10 setting does
    (⌊0.2 · 50,000 / 512⌋), whatever the split's size: here a 20 % subset of 96 rows (19 batches of 5, one row
    left over), a single batch of 512 before (one update an iteration), and of 76 rows (19 batches of 4 that use
    every row: the batches start at the subset's first row). The batch is min(512, ⌊subset / 19⌋); CIFAR-10's keeps
    the official 512."""
    assert em.class_batch(10_000, 512, 19) == (512, 19)  # CIFAR-10: the authors' batch and count
    assert em.class_batch(780, 512, 19) == (41, 19)  # mnist-5k's 20 % subset
    assert em.class_batch(10, 512, 19) == (1, 10)  # fewer rows than updates: one row a batch, each row once
    data = load_dataset(str(write_npz(tmp_path, n=rows)))
    updates, real = [], em.linf_pgd

    def spy(model, x, labels, eps, steps, step, init, maximize):
        updates.append(len(x))
        return real(model, x, labels, eps, steps, step, init, maximize=maximize)

    monkeypatch.setattr(em, "linf_pgd", spy)
    shown = []
    attack = ATTACKS.get("em")(data.family, granularity="class", max_iterations=1, train_batches=1)
    ctx = AttackContext(data, attack.choose_rows(data, 1.0, 3), EPS, 1.0, 3, torch.device("cpu"),
                        results_root=tmp_path / "results", progress=lambda *shown_now: shown.append(shown_now))
    attack.craft(ctx)
    assert attack.params["class_updates"] == 19 and attack.training_summary["iterations"] == 1
    # the progress bar: named for the attack and the data, at iteration 0 before and during the updates, 1 after
    # (then the rows written)
    name, rows_crafted = f"em · {data.name}", len(ctx.indices)
    assert shown == [(name, 0, 1)] * 20 + [(name, 1, 1), (name, rows_crafted, rows_crafted)]
    subset = round(0.2 * len(data.train) / data.num_classes) * data.num_classes
    assert subset >= 19 and len(updates) == 19 and set(updates) == {subset // 19}


@pytest.mark.parametrize("granularity, steps", [("sample", 20), ("class", 1)])
def test_em_takes_the_authors_noise_steps_for_each_granularity(granularity, steps):
    """The EM README's `--num_steps`: 20 signed steps of the sample-wise noise per update, 1 of the class-wise
    noise (the parameter's source line); an explicit `steps` keeps its own value."""
    assert ATTACKS.get("em")("mnist", granularity=granularity).params["steps"] == steps
    assert ATTACKS.get("em")("mnist", granularity=granularity, steps=7).params["steps"] == 7
