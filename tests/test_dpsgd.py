"""DP-SGD (`poisonbench/defenses/dpsgd.py`): per-example gradients, their clipping to ℓ2 ≤ C over all parameters
jointly, the Gaussian noise of std σ·C on their sum, the division by the batch, BatchNorm with fixed batch
statistics, the chunks, the record, resume, and the bad options. Tiny models and batches; registry-driven tests
(resume, host sync) cover dpsgd as every other defense as well."""

from __future__ import annotations

import contextlib
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poisonbench.core.device import to_float
from poisonbench.core.hashing import derived_seed
from poisonbench.data import load_dataset
from poisonbench.defenses import build_defense, dpsgd, privacy
from poisonbench.defenses.dpsgd import batch_forward, joint_norms, per_example_gradients, trainable
from poisonbench.engine.checkpoints import Checkpoint
from poisonbench.engine.hooks import TrainContext
from poisonbench.engine.models import ConvNet, build_model
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import make_optimizer, train

from .conftest import files_under, one_line_error

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")
RECIPE = resolve_recipe("mnist", "quick", epochs=1, batch_size=12, lr=0.05)



def coarse_pld(q: float, sigma: float, steps: int, delta: float) -> float:
    """dp-accounting's PLD accountant called directly at the value discretisation interval 0.1."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant(value_discretization_interval=0.1)
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    return accountant.get_epsilon(delta)

def mlp(seed: int = 0, width: int = 16) -> nn.Module:
    """A toy classifier without BatchNorm: its per-example gradients are defined as they are."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, width), nn.ReLU(), nn.Linear(width, 5))


def toy_batch(rows: int = 12, seed: int = 1, shape=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, *shape, generator=g), torch.randint(0, 5, (rows,), generator=g)


def context(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 7, recipe=RECIPE) -> TrainContext:
    optimizer, _ = make_optimizer(model, recipe)
    return TrainContext(model, optimizer, recipe, CPU, torch.Generator().manual_seed(seed), x, y, x[:2], y[:2], 5,
                        seed)


def dp_step(model, x, y, seed: int = 7, recipe=RECIPE, chunk_floats: int | None = None, **params):
    """One DP-SGD gradient on (x, y): (the defense, loss, logits, {name: .grad}); `chunk_floats` replaces the
    per-example gradients' budget (floats per chunk) that `prepare` sets."""
    defense = build_defense("dpsgd", "mnist", recipe, **params)
    ctx = context(model, x, y, seed, recipe)
    defense.prepare(ctx)
    if chunk_floats is not None:
        defense._chunk_floats = chunk_floats
    model.zero_grad(set_to_none=True)
    loss, logits = defense.gradient(ctx, x, y, contextlib.nullcontext)
    return defense, loss, logits, {n: p.grad.clone() for n, p in trainable(model).items()}


def loop_gradients(model, x, y) -> list[dict[str, torch.Tensor]]:
    """Each example's gradient by plain autograd, one example at a time (the reference for the vmap)."""
    out = []
    for i in range(len(y)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        out.append({n: p.grad.clone() for n, p in trainable(model).items()})
    return out


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads.values()])


def test_per_example_gradients_are_each_examples_own_and_clipped_jointly_to_the_clip():
    model = mlp()
    x, y = toy_batch()
    reference = loop_gradients(model, x, y)
    ref_norms = torch.stack([flat(g).norm() for g in reference])
    params = {n: p.detach() for n, p in trainable(model).items()}
    grads = per_example_gradients(model, params, {}, x, y)
    for i, ref in enumerate(reference):
        for name, g in ref.items():
            torch.testing.assert_close(grads[name][i], g, atol=1e-6, rtol=1e-5)
    norms = joint_norms(grads)
    torch.testing.assert_close(norms, ref_norms, atol=1e-6, rtol=1e-5)

    clip = ref_norms.median().item()  # some examples above the clip, some below
    below = ref_norms <= clip
    assert 0 < below.sum() < len(y)
    _, _, _, step = dp_step(model, x, y, clip=clip, noise_multiplier=0.0)
    # the clipped per-example gradients, as the step applies them, before noise
    clipped = [flat(g) * min(1.0, clip / flat(g).norm().item()) for g in reference]
    factors = clip / norms.clamp(min=clip)
    applied = torch.stack([factors[i] * flat({n: grads[n][i] for n in grads}) for i in range(len(y))])
    assert (applied.norm(dim=1) <= clip * (1 + 1e-6)).all()
    for i in torch.nonzero(below).flatten().tolist():  # within the clip: the example's gradient unchanged
        torch.testing.assert_close(applied[i], flat(reference[i]), atol=1e-6, rtol=1e-5)
    for i in torch.nonzero(~below).flatten().tolist():  # above: brought to norm C exactly
        assert math.isclose(applied[i].norm().item(), clip, rel_tol=1e-5)
    # the step: the mean of the clipped per-example gradients (not the clipped mean, not their sum)
    torch.testing.assert_close(flat(step), torch.stack(clipped).mean(0), atol=1e-6, rtol=1e-5)


def test_with_no_noise_and_a_huge_clip_the_step_is_the_plain_mean_gradient():
    model = mlp()
    x, y = toy_batch()
    model.zero_grad(set_to_none=True)
    plain_loss = F.cross_entropy(model(x), y)
    plain_loss.backward()
    plain = {n: p.grad.clone() for n, p in trainable(model).items()}
    defense, loss, logits, step = dp_step(model, x, y, clip=1e6, noise_multiplier=0.0)
    for name in plain:
        torch.testing.assert_close(step[name], plain[name], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loss, plain_loss.detach())
    torch.testing.assert_close(logits, model(x).detach())
    assert defense.summary()["grad_norms"]["clipped_share"] == 0


def test_noise_has_std_sigma_times_clip_per_coordinate_and_comes_from_the_runs_seed():
    clip, sigma, rows = 2.0, 0.75, 8  # σ·C = 1.5: neither σ alone, nor C alone, nor 1 / (σ·C) is the std
    x, y = toy_batch(rows)
    model = mlp(width=400)  # ~7k coordinates: the std is estimated within a few percent
    _, _, _, clean = dp_step(model, x, y, clip=clip, noise_multiplier=0.0)
    _, _, _, noisy = dp_step(model, x, y, clip=clip, noise_multiplier=sigma)
    noise = (flat(noisy) - flat(clean)) * rows  # the noise is added to the sum, before the division by the batch
    assert noise.numel() > 5000
    assert abs(noise.std().item() / (sigma * clip) - 1) < 0.05 and abs(noise.mean().item()) < 0.05 * sigma * clip
    # the draw itself: N(0, 1) per coordinate from the run's own `dpsgd` stream, parameter by parameter, times σ·C
    stream = torch.Generator().manual_seed(derived_seed(7, dpsgd.DPSGD_STREAM))
    expected = torch.cat([torch.randn(p.shape, generator=stream).flatten() for p in trainable(model).values()])
    torch.testing.assert_close(noise, expected * (sigma * clip), atol=1e-4, rtol=1e-4)
    _, _, _, again = dp_step(model, x, y, clip=clip, noise_multiplier=sigma)
    assert torch.equal(flat(again), flat(noisy))  # same seed, same noise
    _, _, _, other = dp_step(model, x, y, seed=8, clip=clip, noise_multiplier=sigma)
    assert not torch.equal(flat(other), flat(noisy))


def test_without_noise_the_step_draws_nothing_from_the_noise_stream():
    """σ = 0 is clipping only: no N(0, 1) draw of every parameter per step (ResNet-18: 11M numbers thrown away)."""
    model = mlp()
    x, y = toy_batch()
    defense, _, _, _ = dp_step(model, x, y, clip=1.0, noise_multiplier=0.0)
    fresh = torch.Generator().manual_seed(derived_seed(7, dpsgd.DPSGD_STREAM)).get_state()
    tensors, _ = defense.state(None)
    assert torch.equal(tensors["noise_generator"], fresh)
    defense, _, _, _ = dp_step(model, x, y, clip=1.0, noise_multiplier=0.5)
    assert not torch.equal(defense.state(None)[0]["noise_generator"], fresh)


def test_chunked_per_example_gradients_sum_to_the_one_chunk_step(monkeypatch):
    """Chunks hold at most the budget's rows (at least one): the step and the norm figures are those of one chunk."""
    model = mlp()
    x, y = toy_batch(12)
    per_row = sum(p.numel() for p in trainable(model).values())
    norms = joint_norms(per_example_gradients(model, {n: p.detach() for n, p in trainable(model).items()}, {}, x, y))
    clip = norms.sort().values[5:7].mean().item()  # half the examples clipped
    whole, _, _, one = dp_step(model, x, y, clip=clip, noise_multiplier=0.0)
    seen: list[int] = []

    chunked = dpsgd.chunk_gradients

    def counted(model, params, stats, x, y):
        seen.append(len(y))
        return chunked(model, params, stats, x, y)

    monkeypatch.setattr(dpsgd, "chunk_gradients", counted)
    for floats, sizes in ((5 * per_row + per_row // 2, [5, 5, 2]), (per_row - 1, [1] * 12)):
        seen.clear()
        defense, _, _, step = dp_step(model, x, y, clip=clip, noise_multiplier=0.0, chunk_floats=floats)
        assert seen == sizes
        for name in one:
            torch.testing.assert_close(step[name], one[name], atol=1e-6, rtol=1e-5)
        figures, reference = defense.summary()["grad_norms"], whole.summary()["grad_norms"]
        assert figures == pytest.approx(reference, rel=1e-6)
        assert figures["examples"] == 12 and 0 < figures["clipped_share"] < 1


def test_the_record_after_several_steps_is_the_figures_of_all_of_them():
    """The whole summary, against norms by plain autograd: the totals run over every step (not the last one's)."""
    clip, sigma = 1.5, 0.2
    model = mlp()
    x, y = toy_batch(36, seed=5)
    defense = build_defense("dpsgd", "mnist", RECIPE, clip=clip, noise_multiplier=sigma)
    ctx = context(model, x, y)
    defense.prepare(ctx)
    norms = []
    for start in (0, 12, 24):  # three steps of 12 rows, each on the model the previous one left
        xb, yb = x[start:start + 12], y[start:start + 12]
        norms += [flat(g).norm().item() for g in loop_gradients(model, xb, yb)]
        model.zero_grad(set_to_none=True)
        defense.gradient(ctx, xb, yb, contextlib.nullcontext)
        with torch.no_grad():
            for p in trainable(model).values():
                p -= 0.5 * p.grad
    assert min(abs(n - clip) for n in norms) > 1e-3  # no norm so near the clip that rounding could move it
    clipped = sum(n > clip for n in norms)
    assert 0 < clipped < 36 and sum(n > clip for n in norms[24:]) != clipped
    figures = defense.summary()
    measured = figures["grad_norms"]
    assert measured["mean_before_clip"] == pytest.approx(sum(norms) / 36, rel=1e-5)
    assert measured["max_before_clip"] == pytest.approx(max(norms), rel=1e-5)
    expected = {
        "clip": 1.5, "noise_multiplier": 0.2, "noise_std": 0.2 * 1.5,
        "per_example_gradients": dpsgd.HOOKS_METHOD, "batchnorm": "none (no BatchNorm in training mode)",
        "grad_norms": {"examples": 36, "clipped_share": clipped / 36,
                       "mean_before_clip": measured["mean_before_clip"],
                       "max_before_clip": measured["max_before_clip"]},
        # ε of 3 Poisson-subsampled Gaussian steps at q = 1/⌈36/12⌉, σ 0.2, δ = 10⁻⁵ (tests/test_dpsgd_privacy.py);
        # σ 0.2 < 0.3: the PLD discretised at 0.1 (the accountant called directly), and the note saying so
        "accounting": {"accountant": privacy.accountant_text(), "accountant_pld": privacy.pld_accountant_text(),
                       "sampling": "shuffle", "noise_multiplier": 0.2, "sample_rate": 12 / 36, "steps": 3,
                       "rows": 36, "delta": 1e-5, "delta_rule": "min(1e-5, n^-1.1)",
                       "epsilon": privacy.epsilon(1 / 3, 0.2, 3, 1e-5), "epsilon_pld": coarse_pld(1 / 3, 0.2, 3, 1e-5),
                       "epsilon_pld_note": "PLD discretised at 0.1 (σ 0.2 < 0.3: the default 1e-4 is too slow); its "
                                           "pessimistic estimate, still an upper bound on ε",
                       "guarantee": False, "epsilon_note": privacy.SHUFFLE_NOTE},
    }
    assert figures == expected
    assert json.dumps(figures, sort_keys=True) == json.dumps(expected, sort_keys=True)  # counts stay integers


def test_a_one_example_run_records_that_examples_norm_and_a_sample_rate_of_1():
    model = mlp()
    x, y = toy_batch(1)
    defense, _, _, _ = dp_step(model, x, y, recipe=resolve_recipe("mnist", "quick", epochs=1, batch_size=1),
                               clip=1e6, noise_multiplier=0.0)
    figures = defense.summary()
    (norm,) = [flat(g).norm().item() for g in loop_gradients(model, x, y)]
    assert figures["grad_norms"]["mean_before_clip"] == pytest.approx(norm, rel=1e-5)
    assert figures["grad_norms"]["max_before_clip"] == pytest.approx(norm, rel=1e-5)
    assert figures["accounting"]["sample_rate"] == 1.0


def test_an_example_exactly_at_the_clip_is_not_counted_as_clipped():
    """Its factor C / max(‖g‖, C) is 1: its gradient is unchanged, so it is not among the clipped."""
    model = mlp()
    x, y = toy_batch(12)
    norms = joint_norms(per_example_gradients(model, {n: p.detach() for n, p in trainable(model).items()}, {}, x, y))
    clip = norms.sort().values[5].item()  # the 6th smallest norm, exactly (a float32 value)
    defense, _, _, _ = dp_step(model, x, y, clip=clip, noise_multiplier=0.0)
    assert defense.summary()["grad_norms"]["clipped_share"] == 6 / 12


def test_a_root_batchnorm_normalises_each_example_with_the_batchs_statistics():
    """A model that is one BatchNorm (its buffers are named `running_mean` / `running_var`, no module prefix)."""
    torch.manual_seed(2)
    model = nn.BatchNorm1d(5).train()
    with torch.no_grad():
        model.weight.uniform_(0.5, 2.0)
        model.bias.uniform_(-1.0, 1.0)
    x, y = torch.randn(6, 5) * 3 + 1, torch.randint(0, 5, (6,))
    logits, stats = batch_forward(model, x)
    assert set(stats) == {"running_mean", "running_var"}
    var, mean = torch.var_mean(x, dim=0, correction=0)
    torch.testing.assert_close(stats["running_mean"], mean)
    torch.testing.assert_close(stats["running_var"], var)
    grads = per_example_gradients(model, {n: p.detach() for n, p in trainable(model).items()}, stats, x, y)
    for i in range(len(y)):
        out = F.batch_norm(x[i:i + 1], mean, var, model.weight, model.bias, False, 0.0, model.eps)
        ref = torch.autograd.grad(F.cross_entropy(out, y[i:i + 1]), [model.weight, model.bias])
        torch.testing.assert_close(grads["weight"][i], ref[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grads["bias"][i], ref[1], atol=1e-6, rtol=1e-5)


class Killed(Exception):
    pass


def test_a_run_resumed_after_its_first_epoch_equals_an_uninterrupted_one(tiny_npz, tmp_path):
    """The noise stream and the norm totals come back from the checkpoint: the same weights, bit for bit, and the
    same record (`tests/test_checkpoints.py` resumes every defense; this one runs with `dpsgd`'s own tests)."""
    data = load_dataset(str(tiny_npz))
    recipe = resolve_recipe("mnist", "quick", epochs=2, batch_size=100, lr=0.05, momentum=0.9)

    def run(checkpoint=None, kill_after=None):
        defense = build_defense("dpsgd", "mnist", recipe, noise_multiplier=0.5)
        model = build_model("convnet", data, seed=4)

        def on_epoch(epoch, _row):
            if epoch == kill_after:
                raise Killed

        result = train(model, to_float(data.train.x, CPU), data.train.y, to_float(data.val.x, CPU), data.val.y,
                       recipe, seed=4, device=CPU, num_classes=10, defense=defense, compile="off",
                       on_epoch=on_epoch, checkpoint=checkpoint)
        return model, result, defense

    model_ref, ref, defense_ref = run()
    ckpt = Checkpoint(tmp_path / "partial" / "r.safetensors", 0.0)
    with pytest.raises(Killed):
        run(ckpt, kill_after=0)
    model, resumed, defense = run(ckpt)
    assert resumed.resumed_from == 1 and resumed.history == ref.history
    for (name, a), (_, b) in zip(model.state_dict().items(), model_ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    figures = defense.summary()
    assert figures == defense_ref.summary() and figures["grad_norms"]["examples"] == 2 * len(data.train)
    assert figures["accounting"]["steps"] == 2 * math.ceil(len(data.train) / 100)


class FixedStatsBatchNorm(nn.Module):
    """Reference: BatchNorm normalising with the batch's statistics detached (so example i's output, hence its
    loss's gradient, depends on x_i and the parameters alone)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.bn = bn

    def forward(self, x):
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        return F.batch_norm(x, mean.detach(), var.detach(), self.bn.weight, self.bn.bias, False, 0.0, self.bn.eps)


def test_batchnorm_examples_use_the_batchs_fixed_statistics_and_running_statistics_update_once():
    torch.manual_seed(3)
    model = ConvNet(1, 5, 16, [0.5], [0.25]).train()
    x, y = torch.rand(6, 1, 16, 16), torch.randint(0, 5, (6,))
    plain = copy.deepcopy(model)
    with torch.no_grad():
        plain(x)  # the plain step's train-mode forward: the running statistics it leaves
    reference = copy.deepcopy(model)
    reference.conv[1], reference.conv[5] = FixedStatsBatchNorm(reference.conv[1]), FixedStatsBatchNorm(
        reference.conv[5])
    out = reference(x)
    names = list(trainable(model))
    ref = [torch.cat([g.flatten() for g in torch.autograd.grad(F.cross_entropy(out[i:i + 1], y[i:i + 1]),
                                                                 list(trainable(reference).values()),
                                                                 retain_graph=True)]) for i in range(len(y))]

    logits, stats = batch_forward(model, x)
    assert set(stats) == {"conv.1.running_mean", "conv.1.running_var", "conv.5.running_mean", "conv.5.running_var"}
    for (name, a), (_, b) in zip(model.named_buffers(), plain.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)  # updated once, as the plain step does
    torch.testing.assert_close(logits, out.detach(), atol=1e-5, rtol=1e-4)
    grads = per_example_gradients(model, {n: p.detach() for n, p in trainable(model).items()}, stats, x, y)
    assert list(grads) == names and all(m.training for m in model.modules())
    for i in range(len(y)):
        torch.testing.assert_close(torch.cat([grads[n][i].flatten() for n in names]), ref[i], atol=1e-5, rtol=1e-4)

    clip = 0.5 * joint_norms(grads).min().item()  # every example clipped
    torch.manual_seed(3)
    fresh = ConvNet(1, 5, 16, [0.5], [0.25]).train()  # the same initial model, through the defense's step
    defense, _, _, step = dp_step(fresh, x, y, clip=clip, noise_multiplier=0.0)
    factors = clip / joint_norms(grads)
    expected = torch.stack([factors[i] * ref[i] for i in range(len(y))]).mean(0)
    torch.testing.assert_close(torch.cat([step[n].flatten() for n in names]), expected, atol=1e-5, rtol=1e-4)
    figures = defense.summary()
    assert figures["grad_norms"]["clipped_share"] == 1 and figures["grad_norms"]["examples"] == len(y)


def test_trains_through_the_engine_and_records_the_figures(tiny_npz):
    data = load_dataset(str(tiny_npz))
    recipe = resolve_recipe("mnist", "quick", epochs=2, batch_size=100, lr=0.05, momentum=0.9)
    results = []
    for _ in range(2):
        defense = build_defense("dpsgd", "mnist", recipe)
        model = build_model("convnet", data, seed=4)
        before = copy.deepcopy(model.state_dict())
        result = train(model, to_float(data.train.x, CPU), data.train.y, to_float(data.val.x, CPU), data.val.y,
                       recipe, seed=4, device=CPU, num_classes=10, defense=defense, compile="off")
        results.append((model.state_dict(), result, defense.summary()))
    (weights, result, figures), (weights2, result2, figures2) = results
    assert any(not torch.equal(weights[k], before[k]) for k in weights)
    assert all(torch.equal(weights[k], weights2[k]) for k in weights) and result.history == result2.history
    rows = len(data.train)
    assert figures == figures2
    assert figures["clip"] == 1.0 and figures["noise_multiplier"] == 0.01 and figures["noise_std"] == 0.01
    assert figures["grad_norms"]["examples"] == 2 * rows and 0 <= figures["grad_norms"]["clipped_share"] <= 1
    assert figures["grad_norms"]["max_before_clip"] >= figures["grad_norms"]["mean_before_clip"] > 0
    assert figures["accounting"] == {**figures["accounting"], "steps": 2 * math.ceil(rows / 100),
                                     "sample_rate": 1 / math.ceil(rows / 100), "delta": min(1e-5, rows ** -1.1)}
    assert figures["batchnorm"] == dpsgd.BN_HANDLING and privacy.BATCHNORM_NOTE in figures["accounting"][
        "epsilon_note"] and figures["accounting"]["guarantee"] is False  # convnet: BatchNorm
    assert result.cost["defense_batch"] > 0


@pytest.mark.parametrize("args, needle", [(["--clip", "0"], "--clip of method 'dpsgd' must be > 0, got 0"),
                                          (["--clip", "-1"], "--clip of method 'dpsgd' must be > 0, got -1"),
                                          (["--noise-multiplier", "-0.5"],
                                           "--noise-multiplier of method 'dpsgd' must be >= 0, got -0.5")])
def test_bad_clip_or_noise_is_a_one_line_error_and_writes_nothing(cli, tiny_npz, tmp_path, args, needle):
    code, _, err = cli("defend", "--method", "dpsgd", *args, "--recipe", "quick", "--epochs", "1", "--compile",
                       "off", "--dataset", tiny_npz, "--results", tmp_path / "r")
    one_line_error(code, err, needle)
    assert files_under(tmp_path / "r") == []


def test_per_example_chunks_are_sized_by_the_card_on_a_gpu_and_stay_1_gib_on_the_cpu(monkeypatch):
    """A ResNet-18 batch of 128 in one vmap on a large card (24-row chunks made DP-SGD 23× `none` on an H200), a
    fixed size per card type (the same sums), and never smaller than the CPU's chunk."""
    from types import SimpleNamespace

    assert dpsgd.per_example_floats(torch.device("cpu")) == 2 ** 28
    cards = {1: 80 * 2 ** 30 + 8}  # the card asked about (cuda:1, 80 GB) is not the current one (2 GB)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(total_memory=cards.get(getattr(device, "index", None), 2 ** 31)))
    floats = dpsgd.per_example_floats(torch.device("cuda:1"))
    assert floats == 80 * 2 ** 30 // 16 and isinstance(floats, int)  # whole floats: chunk sizes are integers
    assert floats // 11_173_962 >= 128  # ResNet-18's trainable parameters: a paper batch fits one chunk
    assert dpsgd.per_example_floats(torch.device("cuda:0")) == 2 ** 28
