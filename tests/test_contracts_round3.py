"""Issue 82, "Tests from contracts" (round 3): behaviours an independent reviewer planted bugs in and no test caught.
Each test states the contract whole; the bug planted to see it fail is named in its docstring."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from poisonbench.defenses import build_defense, dpsgd, privacy
from poisonbench.engine.recipes import resolve_recipe

from .test_dpsgd import context, mlp, toy_batch

pytestmark = pytest.mark.usefixtures("one_thread")


# --- 1. a Poisson-sampled DP-SGD run on a BatchNorm model is no guarantee --------------------------------------

def bn_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))


def poisson_run(model: nn.Module, rows: int = 40, batch: int = 10) -> dict:
    """One Poisson-sampled epoch of DP-SGD on `model` (σ 1), stepping on each drawn batch: the defense's summary."""
    recipe = resolve_recipe("mnist", "quick", epochs=1, batch_size=batch)
    x, y = toy_batch(rows)
    defense = build_defense("dpsgd", "mnist", recipe, sampling="poisson", noise_multiplier=1.0)
    ctx = context(model, x, y, 7, recipe)
    defense.prepare(ctx)
    for b in defense.epoch_batches(ctx, 0):
        model.zero_grad(set_to_none=True)
        defense.gradient(ctx, x[b], y[b], contextlib.nullcontext)
    return defense.summary()


def test_a_poisson_dpsgd_run_on_a_batchnorm_model_is_not_recorded_as_a_guarantee():
    """Library callers can train a BatchNorm model under DP-SGD (the CLI refuses it): with Poisson sampling the
    record still says the ε is no guarantee, names the BatchNorm handling and gives both caveats; the same run
    without BatchNorm is a guarantee. (Planted: `guarantee` = Poisson and ε finite, BatchNorm forgotten.)"""
    figures = poisson_run(bn_mlp())
    acc = figures["accounting"]
    assert figures["batchnorm"] == dpsgd.BN_HANDLING
    assert acc["sampling"] == "poisson" and acc["steps"] == 4 and acc["sample_rate"] == 0.25
    assert acc["epsilon"] == privacy.epsilon(0.25, 1.0, 4, 1e-5) and math.isfinite(acc["epsilon"])
    assert acc["epsilon_note"] == f"{privacy.POISSON_NOTE}; {privacy.BATCHNORM_NOTE}"
    assert acc["guarantee"] is False

    plain = poisson_run(mlp())["accounting"]
    assert plain["guarantee"] is True and plain["epsilon_note"] == privacy.POISSON_NOTE
    assert plain["epsilon"] == acc["epsilon"]


# --- 2. Poisson DP-SGD takes ⌈n/B⌉ steps an epoch ----------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(rows=st.integers(min_value=1, max_value=120), batch=st.integers(min_value=1, max_value=150))
def test_poisson_sampling_takes_ceil_n_over_b_steps_an_epoch(rows, batch):
    """⌈n/B⌉ batches an epoch at q = 1/⌈n/B⌉, also when B does not divide n and when n < B (one step, q = 1: every
    row); each batch is rows in use, without repeats. (Planted: `len(rows) // batch_size` steps.)"""
    recipe = resolve_recipe("mnist", "quick", epochs=1, batch_size=batch)
    x, y = toy_batch(rows)
    defense = build_defense("dpsgd", "mnist", recipe, sampling="poisson")
    ctx = context(mlp(), x, y, 7, recipe)
    defense.prepare(ctx)
    steps = -(-rows // batch)
    batches = defense.epoch_batches(ctx, 0)
    assert len(batches) == steps and defense.sample_rate == 1 / steps
    for b in batches:
        assert b.tolist() == sorted(set(b.tolist())) and all(0 <= r < rows for r in b.tolist())
    if rows <= batch:
        assert [b.tolist() for b in batches] == [list(range(rows))]


# --- 3. bases=nearest picks the same rows whatever the feature chunk -------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from poisonbench.data import load_dataset

    from .conftest import write_npz

    return load_dataset(str(write_npz(tmp_path_factory.mktemp("contracts-round3"), n=400)))


def test_nearest_bases_are_the_same_rows_whatever_the_feature_chunk(tiny):
    """`nearest_rows` over a pool larger than a chunk (chunks of 3 and 7, neither dividing the pool) gives the rows
    and distances of one pass over the whole pool, which are the k smallest Euclidean distances of the features.
    (Planted: the chunk loop stops at `len(pool) - chunk + 1`, dropping the pool's tail.)"""
    from poisonbench.attacks.targets import base_pool, nearest_rows
    from poisonbench.engine.models import build_model

    data = tiny
    model = build_model("convnet", data, seed=11).eval().requires_grad_(False)
    true_class = int(data.test.y[7])
    pool = base_pool(data, (true_class + 1) % data.num_classes, "scratch")
    k = 6
    assert len(pool) > 7 and len(pool) % 3 and len(pool) % 7
    whole_rows, whole_dist = nearest_rows(model, data, pool, 7, k, torch.device("cpu"), chunk=len(pool))
    for chunk in (3, 7):
        for many in (k, len(pool)):  # the whole pool ranked: every chunk's rows count, the last one's too
            rows, dist = nearest_rows(model, data, pool, 7, many, torch.device("cpu"), chunk=chunk)
            ref_rows, ref_dist = nearest_rows(model, data, pool, 7, many, torch.device("cpu"), chunk=len(pool))
            assert rows.tolist() == ref_rows.tolist() and len(rows) == many
            torch.testing.assert_close(dist, ref_dist)
    from poisonbench.core.device import to_float

    with torch.no_grad():
        feats = model.features(to_float(data.train.x[pool], torch.device("cpu"))).flatten(1).double()
        target = model.features(to_float(data.test.x[7:8], torch.device("cpu"))).flatten(1).double()
    reference = ((feats - target) ** 2).sum(1).sqrt()
    nearest = pool[torch.sort(reference, stable=True).indices[:k]].sort().values
    assert whole_rows.tolist() == nearest.tolist()
    assert model.training is False


# --- 4. forest's FC objective is the bullseye loss for one target ----------------------------------------------

@pytest.mark.parametrize("poisons, dim", [(1, 5), (4, 7), (25, 3)])
def test_forests_fc_objective_is_the_bullseye_loss_for_one_target(poisons, dim):
    """`fc.poison_frogs_loss` (forest's poison-frogs) equals `bp.bullseye_loss` for one target, and both are
    (1/D) Σ_d ((1/K) Σ_i φ(x_i)_d − φ(t)_d)², written out here. (Planted: the poisons' features summed, not
    averaged.)"""
    from poisonbench.attacks.bp import bullseye_loss
    from poisonbench.attacks.fc import poison_frogs_loss

    g = torch.Generator().manual_seed(poisons * 100 + dim)
    feats = torch.randn(poisons, dim, generator=g, dtype=torch.float64)
    target = torch.randn(1, dim, generator=g, dtype=torch.float64)
    written = sum((sum(float(feats[i, d]) for i in range(poisons)) / poisons - float(target[0, d])) ** 2
                  for d in range(dim)) / dim
    fc, bp = poison_frogs_loss(feats, target), bullseye_loss(feats, target)
    assert fc.shape == bp.shape == ()
    assert fc.item() == pytest.approx(bp.item(), rel=1e-12, abs=1e-15)
    assert fc.item() == pytest.approx(written, rel=1e-12, abs=1e-15)


# --- 5. the ε range of a table's privacy note is min–max -------------------------------------------------------

def test_the_privacy_notes_epsilon_range_is_min_to_max_whatever_the_records_order():
    """Four DP-SGD runs of one setting whose ε (RDP and PLD) are not in order: the note's ranges are min–max, the
    whole note pinned. (Planted: `epsilon_text` without the sort, first–last.)"""
    from poisonbench.report.tables.privacy import privacy_notes
    from poisonbench.report.tables.records import frame
    from tests.report_records import make_record

    params = {"clip": 1.0, "noise_multiplier": 1.0, "sampling": "poisson", "delta": None}
    acc = {"accountant": "RDP", "sampling": "poisson", "noise_multiplier": 1.0, "sample_rate": 1 / 31, "steps": 310,
           "rows": 3900, "delta": 1e-5, "delta_rule": "min(1e-5, n^-1.1)", "epsilon_pld_note": None,
           "guarantee": True, "epsilon_note": privacy.POISSON_NOTE}
    rows = []
    for trial, (eps, pld) in enumerate(((4.5, 3.5), (2.25, 3.75), (9.5, 1.25), (3.0, 2.0))):
        record = make_record(method="dpsgd", acc=0.5, params=params, trial=trial)
        record["defense"] = {"accounting": {**acc, "epsilon": eps, "epsilon_pld": pld}}
        rows.append(record)
    for order in (rows, rows[::-1], [rows[2], rows[0], rows[3], rows[1]]):
        assert privacy_notes(frame(order)) == [
            "dpsgd (clip 1, noise_multiplier 1, sampling poisson): ε = 2.25–9.5 (4 runs) at δ = min(1e-5, n^-1.1) "
            "= 1e-05 (RDP, dp-accounting; q 0.03226, σ 1, 310 steps; PLD ε = 1.25–3.75 (4 runs)) — Poisson-sampled "
            "batches: the RDP bound holds"]
