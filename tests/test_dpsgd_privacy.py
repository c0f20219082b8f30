"""Issue 67 item 4: DP-SGD that a researcher would accept. The BatchNorm-free victim (`--model convnet-gn`, GroupNorm
as Opacus swaps it in), whose per-example gradients are each example's own; ε from a maintained accountant
(dp-accounting's RDP, `poisonbench/defenses/privacy.py`) at δ = 1/n in the record; Poisson sampling from the run's
own stream; the one-line refusals of bad accounting input."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from poisonbench.core.device import to_float
from poisonbench.core.errors import PoisonbenchError
from poisonbench.core.hashing import derived_seed
from poisonbench.data import load_dataset
from poisonbench.defenses import build_defense, dpsgd, privacy
from poisonbench.defenses.dpsgd import batch_forward, per_example_gradients, trainable
from poisonbench.engine.models import MODELS, ConvNet, ConvNetGN, build_model, opacus_groups
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import train

from .conftest import files_under, one_line_error
from .test_dpsgd import context, dp_step, flat, loop_gradients, mlp, toy_batch

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


def pld_epsilon(q: float, sigma: float, steps: int, delta: float, interval: float | None = None) -> float:
    """The PLD accountant called directly (dp_accounting.pld), the reference for the record's `epsilon_pld`; with
    `interval`, its value discretisation interval (its default otherwise)."""
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant() if interval is None else PLDAccountant(value_discretization_interval=interval)
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    return accountant.get_epsilon(delta)


def accountant_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """The reference: dp-accounting's RDP accountant called directly on T Poisson-subsampled Gaussian steps."""
    import dp_accounting as dp

    accountant = dp.rdp.RdpAccountant()
    accountant.compose(dp.SelfComposedDpEvent(dp.PoissonSampledDpEvent(q, dp.GaussianDpEvent(sigma)), steps))
    return accountant.get_epsilon(delta)


# --- the BatchNorm-free victim ----------------------------------------------------------------------------------

def test_convnet_gn_is_hints_convnet_with_opacus_groupnorm_in_place_of_batchnorm():
    """The same layers and parameter shapes as `convnet`; each BatchNorm2d(c) is GroupNorm(gcd(32, c), c) (Opacus
    `_batchnorm_to_groupnorm`): 8 groups of 40 channels, 4 of 100; registered, so every command takes it."""
    assert "convnet-gn" in MODELS.names() and MODELS.get("convnet-gn") is ConvNetGN
    gn, bn = ConvNetGN(1, 10, 28, (0.0,), (1.0,)), ConvNet(1, 10, 28, (0.0,), (1.0,))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in gn.modules())
    norms = [(m.num_groups, m.num_channels) for m in gn.modules() if isinstance(m, nn.GroupNorm)]
    assert norms == [(8, 40), (4, 100)] == [(opacus_groups(c), c) for c in (40, 100)]
    shapes = {k: v.shape for k, v in bn.state_dict().items() if "running" not in k and "batches" not in k}
    assert {k: v.shape for k, v in gn.state_dict().items()} == shapes
    x = torch.rand(3, 1, 28, 28)
    assert gn.features(x).shape == (3, 1600) and gn(x).shape == (3, 10)


def test_groupnorm_per_example_gradients_equal_a_one_at_a_time_loop():
    """On convnet-gn an example's gradient is its own: the vmap equals plain autograd on one example at a time (in
    train mode, no statistics to fix), and with no clip and no noise DP-SGD's step is the plain step's gradient,
    which on the BatchNorm ConvNet it is not (the 13 points of experiments/defenses53.md)."""
    torch.manual_seed(3)
    model = ConvNetGN(1, 5, 16, [0.5], [0.25]).train()
    x, y = torch.rand(4, 1, 16, 16), torch.randint(0, 5, (4,))
    logits, stats = batch_forward(model, x)
    assert stats == {}
    reference = loop_gradients(model, x, y)
    grads = per_example_gradients(model, {n: p.detach() for n, p in trainable(model).items()}, stats, x, y)
    for i, ref in enumerate(reference):
        torch.testing.assert_close(flat({n: grads[n][i] for n in grads}), flat(ref), atol=1e-6, rtol=1e-5)

    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    plain = flat({n: p.grad.clone() for n, p in trainable(model).items()})
    defense, _, _, step = dp_step(model, x, y, clip=1e6, noise_multiplier=0.0)
    torch.testing.assert_close(flat(step), plain, atol=1e-6, rtol=1e-5)
    assert defense.summary()["batchnorm"].startswith("none")

    torch.manual_seed(3)
    bn = ConvNet(1, 5, 16, [0.5], [0.25]).train()  # the contrast: through the batch statistics, not the same
    bn.zero_grad(set_to_none=True)
    F.cross_entropy(bn(x), y).backward()
    bn_plain = flat({n: p.grad.clone() for n, p in trainable(bn).items()})
    torch.manual_seed(3)
    _, _, _, bn_step = dp_step(ConvNet(1, 5, 16, [0.5], [0.25]).train(), x, y, clip=1e6, noise_multiplier=0.0)
    assert not torch.allclose(flat(bn_step), bn_plain, atol=1e-4, rtol=1e-3)


# --- the accountant ---------------------------------------------------------------------------------------------

def test_epsilon_is_the_rdp_accountants_for_a_known_q_sigma_and_steps():
    """q 0.01, σ 1.1, 1,000 steps, δ 10⁻⁵: ε = 1.7118 by dp-accounting's RDP accountant, and by Opacus 1.6.0's
    (`opacus.accountants.analysis.rdp`, its default orders: 1.71177009); no noise is ε = ∞, no step ε = 0."""
    eps = privacy.epsilon(0.01, 1.1, 1000, 1e-5)
    assert eps == accountant_epsilon(0.01, 1.1, 1000, 1e-5)
    assert eps == pytest.approx(1.71177009, rel=1e-6)
    assert privacy.epsilon(0.01, 0.0, 1000, 1e-5) == math.inf and privacy.epsilon(0.01, 1.1, 0, 1e-5) == 0
    assert privacy.epsilon(0.01, 1.1, 2000, 1e-5) > eps > privacy.epsilon(0.01, 2.0, 1000, 1e-5)
    assert privacy.sample_rate(400, 100) == 1 / 4 and privacy.sample_rate(401, 100) == 1 / 5  # Opacus: 1/len(loader)


def test_a_dpsgd_run_records_both_accountants_epsilon_at_the_default_delta(tiny_npz):
    """Through the engine on convnet-gn (200 rows, batch 50, 1 epoch: q = 1/4, 4 steps, σ 1.1): the record's ε is
    the RDP and the PLD accountant's, each called directly, at δ = min(10⁻⁵, 200^-1.1) = 10⁻⁵, or at the δ given;
    shuffled batches say it is not a guarantee."""
    data = load_dataset(str(tiny_npz))
    recipe = resolve_recipe("mnist", "quick", epochs=1, batch_size=50, lr=0.05)
    defense = build_defense("dpsgd", "mnist", recipe, noise_multiplier=1.1)
    model = build_model("convnet-gn", data, seed=4)
    train(model, to_float(data.train.x[:200], CPU), data.train.y[:200], to_float(data.val.x, CPU), data.val.y,
          recipe, seed=4, device=CPU, num_classes=10, defense=defense, compile="off")
    acc = defense.summary()["accounting"]
    assert acc["steps"] == 4 and acc["sample_rate"] == 0.25 and acc["rows"] == 200 and acc["delta"] == 1e-5
    assert acc["epsilon"] == accountant_epsilon(0.25, 1.1, 4, 1e-5) and acc["delta_rule"] == "min(1e-5, n^-1.1)"
    assert acc["epsilon_pld"] == pld_epsilon(0.25, 1.1, 4, 1e-5) < acc["epsilon"]
    assert acc["epsilon_pld_note"] is None and "PLDAccountant" in acc["accountant_pld"]
    assert acc["sampling"] == "shuffle" and acc["guarantee"] is False
    assert acc["epsilon_note"] == privacy.SHUFFLE_NOTE and "dp-accounting" in acc["accountant"]
    given = build_defense("dpsgd", "mnist", recipe, noise_multiplier=1.1, delta=1e-7)
    given.rows = 200
    assert given.accounting(4)["epsilon"] == accountant_epsilon(0.25, 1.1, 4, 1e-7) > acc["epsilon"]
    assert given.accounting(4)["epsilon_pld"] == pld_epsilon(0.25, 1.1, 4, 1e-7)
    assert given.accounting(4)["delta_rule"] == "given" and given.accounting(4)["delta"] == 1e-7


def test_no_noise_records_an_infinite_epsilon_as_none_with_the_reason():
    model = mlp()
    x, y = toy_batch()
    defense, _, _, _ = dp_step(model, x, y, noise_multiplier=0.0)
    acc = defense.summary()["accounting"]
    assert acc["epsilon"] is None and acc["epsilon_note"].startswith("ε = ∞") and acc["guarantee"] is False


# --- Poisson sampling -------------------------------------------------------------------------------------------

def poisson_defense(rows: int = 40, batch: int = 10, seed: int = 7, active=None, **params):
    recipe = resolve_recipe("mnist", "quick", epochs=1, batch_size=batch)
    x, y = toy_batch(rows)
    defense = build_defense("dpsgd", "mnist", recipe, sampling="poisson", **params)
    ctx = context(mlp(), x, y, seed, recipe)
    ctx.active = active
    defense.prepare(ctx)
    return defense, ctx


def test_poisson_sampling_draws_each_row_independently_with_probability_q_from_the_seeded_stream():
    """⌈n/B⌉ batches an epoch, batch k = the rows whose k-th uniform draw from the `dpsgd-sampling` stream is
    below q = 1/⌈n/B⌉ (Opacus `UniformWithReplacementSampler`); the next epoch continues the stream; rows out of
    use (a filter's) never drawn; over many epochs each row's rate is q and batch sizes vary."""
    defense, ctx = poisson_defense()
    stream = torch.Generator().manual_seed(derived_seed(7, dpsgd.SAMPLING_STREAM))
    for epoch in range(2):
        batches = defense.epoch_batches(ctx, epoch)
        expected = [torch.arange(40)[torch.rand(40, generator=stream) < 0.25] for _ in range(4)]
        assert len(batches) == 4 and all(torch.equal(a, b) for a, b in zip(batches, expected, strict=True))

    active = torch.arange(0, 40, 2)  # 20 rows in use: q = 1/2, 2 steps
    defense, ctx = poisson_defense(active=active)
    stream = torch.Generator().manual_seed(derived_seed(7, dpsgd.SAMPLING_STREAM))
    batches = defense.epoch_batches(ctx, 0)
    assert [b.tolist() for b in batches] == [active[torch.rand(20, generator=stream) < 0.5].tolist() for _ in "ab"]

    defense, ctx = poisson_defense(rows=200, batch=20)  # q = 0.1
    counts, sizes = torch.zeros(200), []
    for epoch in range(50):  # 500 draws a row
        for b in defense.epoch_batches(ctx, epoch):
            counts[b] += 1
            sizes.append(len(b))
    assert abs(counts.mean().item() / 500 - 0.1) < 0.005 and counts.std().item() / 500 < 0.03
    assert len(set(sizes)) > 5 and abs(sum(sizes) / len(sizes) - 20) < 1
    other, ctx_other = poisson_defense(seed=8)
    assert not all(torch.equal(a, b) for a, b in zip(other.epoch_batches(ctx_other, 0),
                                                      poisson_defense()[0].epoch_batches(ctx, 0), strict=True))
    shuffle = build_defense("dpsgd", "mnist", resolve_recipe("mnist", "quick"))
    assert shuffle.epoch_batches(ctx, 0) is None  # the engine's partition


def test_a_poisson_step_divides_by_the_expected_batch_and_an_empty_one_is_the_noise_alone():
    """Opacus's normalisation: the noised sum over the expected batch ⌊n·q⌋, not the drawn size."""
    defense, ctx = poisson_defense(rows=40, batch=10, clip=1e6, noise_multiplier=0.0)
    x, y = ctx.train_x[:7], ctx.train_y[:7]  # a draw of 7 rows; expected 10
    ctx.model.zero_grad(set_to_none=True)
    F.cross_entropy(ctx.model(x), y, reduction="sum").backward()
    summed = flat({n: p.grad.clone() for n, p in trainable(ctx.model).items()})
    ctx.model.zero_grad(set_to_none=True)
    defense.gradient(ctx, x, y, contextlib.nullcontext)
    torch.testing.assert_close(flat({n: p.grad for n, p in trainable(ctx.model).items()}), summed / 10,
                               atol=1e-6, rtol=1e-5)

    defense, ctx = poisson_defense(rows=40, batch=10, clip=2.0, noise_multiplier=0.5)
    loss, logits = defense.gradient(ctx, ctx.train_x[:0], ctx.train_y[:0], contextlib.nullcontext)
    stream = torch.Generator().manual_seed(derived_seed(7, dpsgd.DPSGD_STREAM))
    noise = torch.cat([torch.randn(p.shape, generator=stream).flatten() for p in trainable(ctx.model).values()])
    torch.testing.assert_close(flat({n: p.grad for n, p in trainable(ctx.model).items()}), noise * 1.0 / 10)
    assert loss.item() == 0 and logits.shape == (0, 5) and defense.summary()["accounting"]["steps"] == 1


def test_poisson_training_runs_on_the_defenses_batches_and_its_epsilon_holds(tiny_npz):
    """Through the engine: the examples seen are the drawn batches' rows, the steps ⌈n/B⌉ an epoch, and on a model
    without BatchNorm the record calls the ε a guarantee."""
    data = load_dataset(str(tiny_npz))
    recipe = resolve_recipe("mnist", "quick", epochs=1, batch_size=50, lr=0.05)
    defense = build_defense("dpsgd", "mnist", recipe, sampling="poisson", noise_multiplier=1.0)
    model = build_model("convnet-gn", data, seed=4)
    result = train(model, to_float(data.train.x[:200], CPU), data.train.y[:200], to_float(data.val.x, CPU),
                   data.val.y, recipe, seed=4, device=CPU, num_classes=10, defense=defense, compile="off")
    stream = torch.Generator().manual_seed(derived_seed(4, dpsgd.SAMPLING_STREAM))
    drawn = sum(int((torch.rand(200, generator=stream) < 0.25).sum()) for _ in range(4))
    figures = defense.summary()
    assert drawn != 200 and figures["grad_norms"]["examples"] == drawn
    acc = figures["accounting"]
    assert acc["sampling"] == "poisson" and acc["steps"] == 4 and acc["guarantee"] is True
    assert acc["epsilon"] == accountant_epsilon(0.25, 1.0, 4, 1e-5) and acc["epsilon_note"] == privacy.POISSON_NOTE
    assert 0 <= result.history[0]["train_acc"] <= 1


# --- refusals ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["--delta", "0"], "--delta of method 'dpsgd' must be in (0, 1), got 0"),
    (["--delta", "-1e-5"], "--delta of method 'dpsgd' must be in (0, 1), got -1e-05"),
    (["--delta", "1"], "--delta of method 'dpsgd' must be in (0, 1), got 1"),
    (["--noise-multiplier", "-1"], "--noise-multiplier of method 'dpsgd' must be >= 0, got -1"),
    (["--sampling", "uniform"], "'uniform'"),
])
def test_bad_privacy_input_is_a_one_line_error_and_writes_nothing(cli, tiny_npz, tmp_path, args, needle):
    code, _, err = cli("defend", "--method", "dpsgd", "--model", "convnet-gn", *args, "--recipe", "quick",
                       "--epochs", "1", "--compile", "off", "--dataset", tiny_npz, "--results", tmp_path / "r")
    one_line_error(code, err, needle)
    if args[0] == "--sampling":
        assert "shuffle" in err and "poisson" in err
    assert files_under(tmp_path / "r") == []


@pytest.mark.parametrize("q, sigma, steps, delta, needle", [
    (0.0, 1.0, 10, 1e-5, "the sampling rate q must be in (0, 1], got 0.0"),
    (1.5, 1.0, 10, 1e-5, "the sampling rate q must be in (0, 1], got 1.5"),
    (0.1, -1.0, 10, 1e-5, "the noise multiplier σ must be >= 0 and finite, got -1.0"),
    (0.1, math.nan, 10, 1e-5, "the noise multiplier σ must be >= 0 and finite, got nan"),
    (0.1, 1.0, -1, 1e-5, "the number of steps must be an integer >= 0, got -1"),
    (0.1, 1.0, 10, 0.0, "δ must be in (0, 1), got 0.0"),
    (0.1, 1.0, 10, 1.0, "δ must be in (0, 1), got 1.0"),
])
def test_the_accountants_bad_input_is_one_line_naming_the_value_and_its_range(q, sigma, steps, delta, needle):
    with pytest.raises(PoisonbenchError) as info:
        privacy.epsilon(q, sigma, steps, delta)
    assert str(info.value) == "privacy accounting: " + needle


def test_dpsgd_without_dp_accounting_is_one_line_before_anything_is_written(cli, tiny_npz, tmp_path, monkeypatch):
    import sys

    for key in [k for k in sys.modules if k == "dp_accounting" or k.startswith("dp_accounting.")]:
        monkeypatch.delitem(sys.modules, key)
    monkeypatch.setitem(sys.modules, "dp_accounting", None)
    code, _, err = cli("defend", "--method", "dpsgd", "--model", "convnet-gn", "--recipe", "quick", "--epochs", "1",
                       "--compile", "off", "--dataset", tiny_npz, "--results", tmp_path / "r")
    one_line_error(code, err, "'dp_accounting'", "DP-SGD's privacy accounting", "pip install dp-accounting")
    assert files_under(tmp_path / "r") == []


# --- the tables -------------------------------------------------------------------------------------------------

def test_the_tables_show_each_dpsgd_cells_epsilon_with_its_caveat():
    """The matrix (column by column) and Table II state ε at δ under every block that shows DP-SGD runs, from the
    records' accounting, with the shuffling caveat or the guarantee; a record from before the accountant says so."""
    from poisonbench.report import tables
    from tests.report_records import make_record
    from tests.test_matrix import single

    params = {"clip": 1.0, "noise_multiplier": 0.01, "sampling": "shuffle", "delta": None}
    shuffled = {"accountant": "RDP", "sampling": "shuffle", "noise_multiplier": 0.01, "sample_rate": 0.025,
                "steps": 400, "rows": 3900, "delta": 1 / 3900, "delta_rule": "1/n", "epsilon": 5.45e6,
                "guarantee": False, "epsilon_note": privacy.SHUFFLE_NOTE}
    records = [single("none", "pgd", 0.1, 0), single("dpsgd", "pgd", 0.4, 0, params=params),
               make_record(method="dpsgd", acc=0.5, params={**params, "sampling": "poisson"}),  # clean
               single("dpsgd", "dap", 0.6, 0, params=params)]
    records[1]["defense"] = {"accounting": shuffled}
    records[2]["defense"] = {"accounting": {**shuffled, "sampling": "poisson", "epsilon": 12.5, "guarantee": True,
                                            "epsilon_note": privacy.POISSON_NOTE}}
    records[3]["defense"] = {"accounting": {"noise_multiplier": 0.01, "sample_rate": 0.025, "steps": 400,
                                            "epsilon": None}}  # recorded before the accountant
    for r in records:
        r["run_id"] = short(r)
    table = tables.build("matrix", records, tables.Options(trials=1), mix="any")
    notes = " | ".join(table.blocks[0].notes)
    assert ("dpsgd (clip 1, noise_multiplier 0.01, sampling shuffle), column pgd: ε = 5.45e+06 at δ = 1/n = "
            "0.000256 (RDP, dp-accounting; q 0.025, σ 0.01, 400 steps) — shuffled batches: the Poisson figure, not "
            "a proven bound (Chua et al. 2024)") in notes
    assert "column clean: ε = 12.5 at δ = 1/n = 0.000256" in notes and "the RDP bound holds" in notes
    assert "column dap: ε not computed (run recorded before poisonbench had a privacy accountant)" in notes

    mix = make_record(method="dpsgd", rho=0.4, params=params)
    mix["defense"] = {"accounting": shuffled}
    table2 = tables.build("2", [make_record(method="none", rho=0.4), mix], tables.Options(trials=1), mix="any")
    assert any(n.startswith("dpsgd (clip 1") and "ε = 5.45e+06" in n and "not a proven bound" in n
               for n in table2.blocks[0].notes)


def short(record: dict) -> str:
    from poisonbench.core.hashing import short_hash

    return short_hash(record["config"])


# --- δ's default and the PLD accountant ---------------------------------------------------------------------------

@given(st.integers(min_value=1, max_value=10 ** 9))
def test_the_default_delta_is_below_one_over_n_and_at_most_1e_5(rows):
    delta = privacy.default_delta(rows)
    assert delta < 1 / rows or rows == 1 and delta == 1e-5
    assert delta <= 1e-5 and delta == min(1e-5, rows ** -1.1)


def test_the_default_delta_leaves_1e_5_exactly_past_35_111_rows():
    """n^-1.1 < 10⁻⁵ from n = 35,112 on (35,111^-1.1 = 1.00003·10⁻⁵): the rule's one bend, probed at it."""
    assert privacy.default_delta(35_111) == 1e-5
    assert privacy.default_delta(35_112) == 35_112 ** -1.1 < 1e-5
    assert privacy.default_delta(3_900) == 1e-5 and privacy.default_delta(50_000) == pytest.approx(6.78e-6, rel=1e-3)


@pytest.mark.parametrize("q, sigma, steps, delta", [(0.25, 1.1, 4, 1e-5), (1 / 31, 1.0, 310, 1 / 3900),
                                                    (0.01, 1.1, 1000, 1e-5), (1 / 31, 0.3, 31, 1e-5)])
def test_the_pld_epsilon_is_the_pld_accountants_and_below_the_rdp_one(q, sigma, steps, delta):
    eps = privacy.pld_epsilon(q, sigma, steps, delta)
    assert eps == pld_epsilon(q, sigma, steps, delta)
    assert 0 < eps < privacy.epsilon(q, sigma, steps, delta)


def test_the_pld_epsilon_at_its_edges(monkeypatch):
    """σ exactly at the floor takes the accountant's default discretisation, just under it the coarse one (with the
    note saying so, still an upper bound: at or above the finer one's ε); σ 0 is ∞, no step is 0; bad input is the
    RDP accountant's one line. The floor's own value is pinned by the note; its ε branch is probed at a floor moved
    to σ 2, where the default discretisation takes under a second (at σ 0.3 it takes about 6 s a call)."""
    assert privacy.pld_note(privacy.PLD_MIN_SIGMA) is None and privacy.PLD_MIN_SIGMA == 0.3
    assert privacy.pld_note(0.2999) == ("PLD discretised at 0.1 (σ 0.2999 < 0.3: the default 1e-4 is too slow); its "
                                        "pessimistic estimate, still an upper bound on ε")
    monkeypatch.setattr(privacy, "PLD_MIN_SIGMA", 2.0)
    assert privacy.pld_epsilon(0.1, 2.0, 3, 1e-5) == pld_epsilon(0.1, 2.0, 3, 1e-5)
    coarse = privacy.pld_epsilon(0.1, 1.9999, 3, 1e-5)
    assert coarse == pld_epsilon(0.1, 1.9999, 3, 1e-5, interval=0.1) > pld_epsilon(0.1, 1.9999, 3, 1e-5)
    monkeypatch.undo()
    # the HINT paper's σ 0.01 on mnist-5k's 31 steps an epoch: computed, below the RDP figure
    assert privacy.pld_epsilon(1 / 31, 0.01, 31, 1e-5) == pld_epsilon(1 / 31, 0.01, 31, 1e-5, interval=0.1) \
        < privacy.epsilon(1 / 31, 0.01, 31, 1e-5)
    assert privacy.pld_epsilon(0.1, 0.0, 3, 1e-5) == math.inf and privacy.pld_note(0.0) is None
    assert privacy.pld_epsilon(0.1, 1.0, 0, 1e-5) == 0.0
    with pytest.raises(PoisonbenchError) as info:
        privacy.pld_epsilon(0.1, 1.0, 3, 1.0)
    assert str(info.value) == "privacy accounting: δ must be in (0, 1), got 1.0"


def test_the_table_note_gives_the_pld_epsilon_beside_the_rdp_one_and_names_the_delta_rule():
    from poisonbench.report.tables.privacy import privacy_notes
    from tests.report_records import make_record

    params = {"clip": 1.0, "noise_multiplier": 1.0, "sampling": "poisson", "delta": None}
    acc = {"accountant": "RDP", "sampling": "poisson", "noise_multiplier": 1.0, "sample_rate": 1 / 31, "steps": 310,
           "rows": 3900, "delta": 1e-5, "delta_rule": "min(1e-5, n^-1.1)", "epsilon": 4.17, "epsilon_pld": 3.6,
           "epsilon_pld_note": None, "guarantee": True, "epsilon_note": privacy.POISSON_NOTE}
    low = {**acc, "noise_multiplier": 0.01, "epsilon": 5.45e6, "epsilon_pld": None, "guarantee": True}
    rows = []
    for accounting, sigma in ((acc, 1.0), (low, 0.01)):
        record = make_record(method="dpsgd", acc=0.5, params={**params, "noise_multiplier": sigma})
        record["defense"] = {"accounting": accounting}
        rows.append(record)
    from poisonbench.report.tables.records import frame

    notes = privacy_notes(frame(rows))
    assert notes == [
        "dpsgd (clip 1, noise_multiplier 1, sampling poisson): ε = 4.17 at δ = min(1e-5, n^-1.1) = 1e-05 (RDP, "
        "dp-accounting; q 0.03226, σ 1, 310 steps; PLD ε = 3.6) — Poisson-sampled batches: the RDP bound holds",
        "dpsgd (clip 1, noise_multiplier 0.01, sampling poisson): ε = 5.45e+06 at δ = min(1e-5, n^-1.1) = 1e-05 "
        "(RDP, dp-accounting; q 0.03226, σ 0.01, 310 steps; PLD ε not computed (σ < 0.3)) — Poisson-sampled "
        "batches: the RDP bound holds"]


def test_defend_prints_both_epsilons_at_delta_with_the_caveat(cli, tiny_npz, tmp_path, monkeypatch):
    """The line under `defend`'s table, whole, against the record it was written from (COLUMNS wide enough that
    rich does not wrap it)."""
    import json as json_module

    monkeypatch.setenv("COLUMNS", "400")
    code, out, err = cli("defend", "--method", "dpsgd", "--model", "convnet-gn", "--noise-multiplier", "1",
                         "--sampling", "poisson", "--recipe", "quick", "--epochs", "1", "--compile", "off",
                         "--dataset", tiny_npz, "--results", tmp_path / "r")
    assert code == 0, err
    (record_path,) = (tmp_path / "r" / "runs").glob("*.json")
    acc = json_module.loads(record_path.read_text())["defense"]["accounting"]
    assert acc["delta"] == 1e-5 and acc["epsilon_pld"] < acc["epsilon"]
    line = (f"privacy, trial 0: ε = {acc['epsilon']:.4g} (RDP), {acc['epsilon_pld']:.4g} (PLD) at δ = 1e-05 "
            "(min(1e-5, n^-1.1)) — Poisson-sampled batches: the RDP bound holds")
    assert line in out.splitlines()
