"""benchmarks: the figures the docs quote rest on these scripts, so their arithmetic is pinned here. The FLOP count
behind `peak_fraction` equals the ConvNet's analytic count; `rates` takes the best and the mean epoch; the
influence benchmark compares equal computations (the official pattern's I_up and I_pert equal ours on its
subset) and its totals, speed-ups and speed-up bound are the sums and quotients of its parts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module", autouse=True)
def benchmarks_on_path():
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import each other as top-level modules
    yield
    sys.path.remove(str(BENCHMARKS))


def test_training_step_flops_are_the_convnets_and_rates_take_best_and_mean():
    from train_throughput import rates, train_step_flops_per_image

    from poisonbench.data import load_dataset

    data = load_dataset("mnist-5k")
    conv1, conv2, head = 2 * 24 * 24 * 25 * 40, 2 * 8 * 8 * 1000 * 100, 2 * 1600 * 10  # forward, per image
    # backward: weight gradients of all three, input gradients of conv2 and the head (the image needs none)
    expected = (conv1 + conv2 + head) + (conv1 + 2 * conv2 + 2 * head)
    assert train_step_flops_per_image(data) == pytest.approx(expected, rel=1e-3)
    assert train_step_flops_per_image(data, executed=True) < 0.6 * expected  # the DFT-domain 40→100 layer
    assert rates(100, [1.0, 2.0, 1.0]) == (100.0, pytest.approx(75.0))


def test_throughput_interleaves_epochs_and_times_each_variant_apart(monkeypatch):
    """After each engine epoch one epoch of every other variant runs, in rotating order; the engine's epoch times
    exclude the others' epochs, and every variant's first (warm-up) epoch is left out."""
    import time

    import train_throughput

    calls = []

    class Sleeper:
        def __init__(self, name):
            self.name = name

        def epoch(self):
            calls.append(self.name)
            time.sleep(0.2)
            return 0.2

    def fake_train(model, x, y, val_x, val_y, recipe, *, on_epoch, **kwargs):
        for epoch in range(recipe.epochs):
            time.sleep(0.01)  # an engine epoch
            on_epoch(epoch, {})

    monkeypatch.setattr(train_throughput, "train", fake_train)
    monkeypatch.setattr(train_throughput, "build_model", lambda *a, **k: None)

    from poisonbench.data import load_dataset
    from poisonbench.engine.recipes import resolve_recipe

    seconds = train_throughput.interleaved_epoch_seconds(load_dataset("mnist-5k"), resolve_recipe("mnist"), 3, "off",
                                                         {"a": Sleeper("a"), "b": Sleeper("b")})
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up round, then 3 timed rounds, rotating
    assert [len(v) for v in seconds.values()] == [3, 3, 3]
    assert all(0.01 <= t < 0.15 for t in seconds["engine"])  # the others' 0.4 s per round are not in it


def test_influence_benchmark_compares_equal_computations(capsys, tmp_path, monkeypatch):
    import hint_influence

    checkpoint = tmp_path / "pretrained.safetensors"
    argv = ["--json", "--no-e2e", "--pretrain-epochs", "1", "--loop-samples", "3", "--lissa-steps", "2",
            "--checkpoint", str(checkpoint)]
    assert hint_influence.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert checkpoint.exists() and report["n_train"] == 3900 and report["ratio"] == 0.5
    agreement = report["agreement"]
    assert agreement["i_up_max_abs_diff"] <= 1e-4 * agreement["i_up_scale"]
    assert agreement["i_pert_max_abs_diff"] <= 1e-3 * agreement["i_pert_scale"]
    official, ours = report["official"], report["ours_cg"]
    parts = ("val_grad_s", "lissa_s", "i_up_loop_s", "i_pert_loop_s", "apply_scan_s")
    assert official["total_s"] == pytest.approx(sum(official[k] for k in parts))
    assert official["loop_samples"] == 3 and official["lissa_timed_steps"] == 2
    assert ours["total_s"] == pytest.approx(ours["select_s"] + ours["update_s"])
    assert report["speedup_vs_official_cg"] == pytest.approx(official["total_s"] / ours["total_s"])
    passes = report["passes"]  # the yardstick: our two network passes, their model FLOPs, and the quotients
    assert passes["total_s"] == pytest.approx(passes["features_all_s"] + passes["input_grad_selected_s"])
    assert passes["total_s"] > 0  # timed apart (best of 3): how it compares with the stage is the benchmark's output,
    # not a property a loaded machine keeps (a burst of load once made the passes 2.6x the stage's single timing)
    per_image = 2 * 24 * 24 * 25 * 40 + 2 * 8 * 8 * 1000 * 100 + 2 * 1600 * 10  # the ConvNet's forward
    # features of all 3,900 rows (no head: the 1600→10 product left out) and, over the 1,950 selected, a forward
    # and the input gradient (the 40→100 layer's and the head's; the stem's, of its 1-channel input, is cheap)
    low = (3900 * (per_image - 2 * 1600 * 10) + 1950 * (per_image + 2 * 8 * 8 * 1000 * 100)) / 1e9
    assert low <= passes["model_gflop"] <= 1.1 * low
    assert passes["model_gflop_s"] == pytest.approx(passes["model_gflop"] / passes["total_s"])
    assert report["speedup_bound_vs_official"] == pytest.approx(official["total_s"] / passes["total_s"])
    assert report["target_needs_gflop_s"] == pytest.approx(passes["model_gflop"] * 50 / official["total_s"])
    assert ours["ihvp_info"]["converged"]
    # the cached pre-trained model is read back (training it again would fail here) and gives the same selection
    # statistics; only the stage is re-run, not the whole benchmark (a second run repeated the official pattern, the
    # timed passes and the matmul peak for nothing this check reads)
    import torch

    from poisonbench.core.device import to_float
    from poisonbench.data import load_dataset

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model was trained again")

    monkeypatch.setattr(hint_influence, "train", no_training)
    data = load_dataset("mnist-5k")
    model = hint_influence.pretrained(data, 1, str(checkpoint), torch.device("cpu"))
    tx, vx = to_float(data.train.x, torch.device("cpu")), to_float(data.val.x, torch.device("cpu"))
    again, *_ = hint_influence.ours(model, tx, data.train.y, vx, data.val.y, 0.5, "cg")
    assert again["ihvp_info"]["s_norm"] == pytest.approx(ours["ihvp_info"]["s_norm"], rel=1e-5)


def test_targeted_crafting_benchmark_reports_its_keys_and_quotients(capsys, tmp_path, one_thread):
    """benchmarks/craft_targeted.py on a tiny split: every attack's batched craft and its per-poison loop agree
    (Adam's toxic BP and PB's FC to float rounding), and the speed-ups are the quotients of the reported seconds
    (ART's only where it is installed: the `bench` extra)."""
    import importlib.util

    import craft_targeted

    from .conftest import write_npz

    has_art = importlib.util.find_spec("art") is not None
    argv = ["--json", "--dataset", str(write_npz(tmp_path, n=400)), "--poisons", "3", "--iterations", "2",
            "--toxic-iterations", "2", "--surrogate-epochs", "1", "--repeats", "1", "--art-fc-poisons", "1",
            "--results", str(tmp_path / "results"), *([] if has_art else ["--no-art"])]
    assert craft_targeted.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    keys = ("gm", "bp", "fc", "bp_toxic", "fc_toxic")
    assert report["gm_s_per_restart"] == pytest.approx(report["ours_seconds"]["gm"])
    for key in keys:
        assert report["speedup_vs_loop"][key] == pytest.approx(
            report["loop_seconds"][key] / report["ours_seconds"][key], rel=0.02, abs=0.01)
        # a signed step (gm and forest bp / fc) may flip where float rounding flips a near-zero gradient's sign
        assert report["loop_agreement"][key] <= (1e-3 if key.endswith("toxic") else 2 * report["eps"] + 1e-6)
    assert set(report["speedup_vs_art"]) == {"gm", "bp", "fc"}
    if has_art:
        assert report["speedup_vs_art"]["gm"] == pytest.approx(
            report["art_seconds"]["gm"] / report["ours_seconds"]["gm"], rel=0.02, abs=0.01)
    else:
        assert all(v is None for v in report["speedup_vs_art"].values())


def test_defense_overhead_benchmark_times_every_registered_defense_against_none(capsys, one_thread):
    """benchmarks/defense_overhead.py at tiny scale: every registered defense is timed (median of the repeats),
    its ratio is the quotient of the reported medians, the engine's own defense seconds fit inside the wall time,
    each row carries the defense's resolved parameters (ATDA's ℓ∞ 0.062 against the targeted threat), Table V's
    ratios ride along, and the lazy greedy, the vectorised naive greedy and the per-element loop choose
    the same medoids."""
    import defense_overhead

    from poisonbench.defenses import DEFENSES, Threat, build_defense
    from poisonbench.engine.recipes import resolve_recipe

    argv = ["--json", "--rows", "100", "--epochs", "2", "--repeats", "1", "--fl-rows", "60", "--fl-repeats", "1"]
    assert defense_overhead.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 100 and report["epochs"] == 2 and report["repeats"] == 1 and report["threat_budget"] == 1
    methods = report["methods"]
    assert set(methods) == set(DEFENSES.names()) and next(iter(methods)) == "none"
    none = methods["none"]["seconds"]
    for name, row in methods.items():
        assert set(row) == {"seconds", "defense_seconds", "ratio_to_none", "paper_ratio_to_none", "seconds_all",
                            "params"}
        assert row["seconds"] == pytest.approx(row["seconds_all"][0])
        assert row["ratio_to_none"] == pytest.approx(row["seconds"] / none, rel=0.01, abs=0.002)
        assert 0 <= row["defense_seconds"] <= row["seconds"], name
    assert methods["none"]["ratio_to_none"] == 1 and methods["none"]["defense_seconds"] == 0
    recipe, threat = resolve_recipe("mnist", "paper", epochs=2), Threat("targeted", budget=1, train_size=100)
    assert {m: row["params"] for m, row in methods.items()} == {
        m: build_defense(m, "mnist", recipe, threat).params for m in DEFENSES.names()}  # JSON round trip included
    assert methods["none"]["params"] == {} and methods["knn"]["params"]["k"] == 2 * 1 + 1
    atda = methods["atda"]["params"]
    assert (atda["norm"], atda["beta"], atda["variant"]) == ("linf", 0.062, "fat")
    paper = {m: methods[m]["paper_ratio_to_none"] for m in ("none", "hint", "friends", "atda", "epic")
             if m in methods}
    assert paper == {k: v for k, v in {"none": 1.0, "hint": 1.52, "friends": 1.52, "atda": 3.6, "epic": 1.97}.items()
                     if k in methods}
    fl = report["facility_location"]
    assert fl["rows"] == 60 and fl["budget"] == 6 and fl["same_medoids"]
    assert fl["objective"] == pytest.approx(fl["objective_loop"])
    assert fl["speedup_lazy_vs_loop"] == pytest.approx(fl["loop_s"] / fl["lazy_s"], rel=0.05, abs=0.1)
    assert 0.9 <= fl["stochastic_objective_fraction"] <= 1.0 + 1e-6


def test_atda_compaction_benchmark_compares_the_two_loops_on_one_training(capsys, one_thread, monkeypatch):
    """benchmarks/atda_compaction.py at tiny scale: per β, `none`, the compacted and the masked loop are each timed
    (median of the repeats, in a rotated order); the masked runs really take the GPU's loop (a spy on
    `adversarial_examples` sees `compact` False in them only); the ratios are the quotients of the medians; both loops
    took the same steps and trained the same model at this scale."""
    import atda_compaction

    from poisonbench.defenses import atda

    seen: list[bool] = []
    real = atda.adversarial_examples

    def spy(*args, **kwargs):
        seen.append(kwargs["compact"])
        return real(*args, **kwargs)

    monkeypatch.setattr(atda, "adversarial_examples", spy)
    order = []
    real_training = atda_compaction.one_training

    def noted(variant, beta, setup, recipe=None):
        start = len(seen)
        out = real_training(variant, beta, setup, recipe)
        order.append((variant, beta, set(seen[start:])))
        return out

    monkeypatch.setattr(atda_compaction, "one_training", noted)
    argv = ["--json", "--rows", "70", "--epochs", "2", "--repeats", "2", "--betas", "0.062,0.3"]
    assert atda_compaction.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 70 and report["epochs"] == 2 and report["repeats"] == 2 and report["threads"] == 1
    assert order[0] == ("none", 0.0, set())  # the untimed warm-up
    variants = {"none": set(), "compacted": {True}, "masked": {False}}
    assert [(v, b, variants[v]) for b in (0.062, 0.3) for v in ("none", "compacted", "masked", "compacted",
                                                                   "masked", "none")] == order[1:]
    assert [r["beta"] for r in report["rows_by_beta"]] == [0.062, 0.3]
    for r in report["rows_by_beta"]:
        cpu = r["cpu_seconds"]
        for v in ("none", "compacted", "masked"):
            assert cpu[v] == pytest.approx(sum(r["cpu_seconds_all"][v]) / 2, abs=1e-3)  # the median of two
        assert r["ratio_to_none"] == pytest.approx({v: cpu[v] / cpu["none"] for v in ("compacted", "masked")},
                                                   rel=0.01)
        assert r["masked_over_compacted"] == pytest.approx(cpu["masked"] / cpu["compacted"], rel=0.01)
        assert r["same_steps"] is True and r["max_weight_difference"] <= 1e-5
        assert len(r["mean_steps"]) == 2 and all(0 <= s <= 10 for s in r["mean_steps"])
