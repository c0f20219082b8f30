"""benchmarks/gpu_check.py, the one command that measures the GPU path, runs on a GPU only now and then; its `--tiny`
mode is the same code at toy sizes, run here on the CPU so that the script cannot rot in between: every figure's
line appears (each workload, attack, defense and grid), with sane fields, and the GPU-hours formula is pinned on
numbers worked out by hand."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from poisonbench.defenses import DEFENSES

from .conftest import write_mnist_dir

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
FIGURES = ["setup", "train_throughput", "official_loop", "engine_over_official", "repeatability", "craft",
           "defense_overhead", "concurrency", "graphs", "grid_estimate", "fashion_mnist_e2e", "done"]


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import each other as top-level modules
    import gpu_check

    yield gpu_check
    sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def tiny(gpu_check, tmp_path_factory):
    """(exit status, the JSON lines of --out, those of stdout) of one tiny run on the CPU, with a tiny
    Fashion-MNIST folder (IDX files) for the end-to-end figure."""
    root = tmp_path_factory.mktemp("gpu_check")
    write_mnist_dir(root / "fashion", n_train=1200, n_test=100)
    out = root / "gpu.jsonl"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy tensors: one thread is faster, and robust to a loaded machine
    try:
        import contextlib
        import io

        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            status = gpu_check.main(["--tiny", "--device", "cpu", "--out", str(out), "--data-dir",
                                     str(root / "fashion")])
    finally:
        torch.set_num_threads(threads)
    parse = lambda text: [json.loads(line) for line in text.splitlines() if line.strip()]  # noqa: E731
    return status, parse(out.read_text()), parse(stdout.getvalue())


def of(lines: list[dict], figure: str) -> list[dict]:
    return [line for line in lines if line["figure"] == figure]


def test_every_figure_is_printed_once_per_item_without_errors(tiny):
    status, lines, printed = tiny
    assert status == 0
    assert lines == printed  # --out holds exactly what stdout shows
    assert [f for f in FIGURES if not of(lines, f)] == []
    assert [line for line in lines if "error" in line] == []
    assert of(lines, "done")[0]["errors"] == []
    for line in lines:  # each line names where it ran
        assert line["device"] == "cpu" and line["device_name"] and line["torch"] == torch.__version__
        assert line["tiny"] is True


def test_training_figures_in_both_deterministic_modes(tiny, gpu_check):
    _, lines, _ = tiny
    train = of(lines, "train_throughput")
    assert sorted((t["workload"], t["precision"], t["deterministic"]) for t in train) == [
        ("cifar10-scratch", "bf16", "off"), ("cifar10-scratch", "bf16", "on"), ("cifar10-scratch", "fp32", "off"),
        ("cifar10-scratch", "fp32", "on"), ("cifar10-transfer", "fp32", "off"), ("mnist-scratch", "fp32", "off")]
    for t in train:
        assert t["images_per_s"] > 0 and t["images_per_s_mean"] > 0 and t["peak_memory_mib"] > 0
        assert t["batch_size"] == gpu_check.TINY.batch and t["rows"] == gpu_check.TINY.rows
        assert t["deterministic"] == t["deterministic"] and "fp32_math" in t  # TF32 named where it is on
    officials = {o["deterministic"]: o for o in of(lines, "official_loop")}
    assert set(officials) == {"on", "off"} and all(o["augment"] == "none" for o in officials.values())
    for ratio in of(lines, "engine_over_official"):  # each mode against the engine in the same mode
        mode = ratio["deterministic"]
        ours = next(t for t in train if t["workload"] == "cifar10-scratch" and t["precision"] == "fp32"
                    and t["deterministic"] == mode)
        assert ratio["official_images_per_s"] == officials[mode]["images_per_s"]
        assert ratio["ratio"] == pytest.approx(ours["images_per_s"] / officials[mode]["images_per_s"], abs=0.01)
    assert {r["deterministic"] for r in of(lines, "engine_over_official")} == {"on", "off"}


def test_every_line_counts_compiles_and_the_check_repeats_itself(tiny):
    """The recompile / eager-fallback counter is on every measured line and sums up in `done`; deterministic mode
    repeats a training bit for bit (on the CPU both modes do)."""
    _, lines, _ = tiny
    for line in lines:
        if line["figure"] not in ("setup", "engine_over_official", "done"):
            assert set(line["compile_counts"]) == {"graphs", "frames_compiled", "graph_breaks",
                                                   "recompile_limit_hits"}, line["figure"]
    (done,) = of(lines, "done")
    assert done["eager_fallbacks"] == [] and done["compile_counts"]["recompile_limit_hits"] == 0
    repeat = {r["deterministic"]: r for r in of(lines, "repeatability")}
    assert repeat["on"]["identical"] and repeat["on"]["max_abs_weight_difference"] == 0.0
    assert len(set(repeat["on"]["digests"])) == 1


def test_the_budget_skips_a_figure_that_no_longer_fits_with_a_line_saying_so(gpu_check, tmp_path, capsys):
    lines = gpu_check.Lines(torch.device("cpu"), str(tmp_path / "out.jsonl"), tiny=False, budget=100, scale=1.0)
    assert lines.fits("craft", 50)
    assert lines.measure("defense_overhead", lambda: {"x": 1}, estimate=500, label="all") is None
    lines.close()
    (skipped,) = [json.loads(t) for t in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert skipped["figure"] == "defense_overhead" and skipped["skipped"].startswith("budget: ")
    assert lines.skipped == ["defense_overhead all"]
    unlimited = gpu_check.Lines(torch.device("cpu"), None, tiny=False, budget=0)
    assert unlimited.fits("craft", 1e9)
    unlimited.close()


def test_a_fallback_to_eager_fails_the_figure(gpu_check, monkeypatch, capsys):
    """A figure during which Dynamo hit its recompile limit (a function silently run eagerly) is an error."""
    lines = gpu_check.Lines(torch.device("cpu"), None, tiny=True)
    counts = {"graphs": 0, "frames_compiled": 0, "graph_breaks": 0, "recompile_limit_hits": 0}
    snapshots = iter([counts, {**counts, "recompile_limit_hits": 1}])
    monkeypatch.setattr(lines.watch, "snapshot", lambda: next(snapshots))
    lines.measure("train_throughput", lambda: {"images_per_s": 1.0})
    lines.close()
    assert lines.errors == ["train_throughput: eager fallback at Dynamo's recompile limit"]
    assert '"recompile_limit_hits": 1' in capsys.readouterr().out


def test_crafting_figures_extrapolate_to_the_attacks_defaults(tiny):
    _, lines, _ = tiny
    crafts = {c["attack"]: c for c in of(lines, "craft")}
    assert set(crafts) == {"gm", "bp", "fc"}
    assert (crafts["gm"]["iterations"], crafts["gm"]["restarts"]) == (250, 8)  # forest's brew
    for c in crafts.values():
        assert c["seconds_per_iteration"] > 0
        restart = c["seconds_per_iteration"] * c["iterations"]  # rounded: 5 significant digits, 2 and 1 decimals
        assert c["seconds_per_restart"] == pytest.approx(restart, rel=1e-3, abs=0.01)
        assert c["seconds_per_poison_set"] == pytest.approx(restart * c["restarts"], rel=1e-3, abs=0.1)


def test_every_defense_has_an_overhead_line(tiny):
    _, lines, _ = tiny
    overhead = {o["method"]: o for o in of(lines, "defense_overhead")}
    assert set(overhead) == set(DEFENSES.names())
    assert overhead["none"]["ratio_to_none"] == 1.0 and overhead["none"]["paper_scale_ratio_to_none"] == 1.0
    for o in overhead.values():
        assert o["seconds"] > 0 and o["ratio_to_none"] > 0 and o["paper_scale_ratio_to_none"] > 0
    assert overhead["hint"]["scheduled_events"]["paper"] == 3  # HINT's updates at epochs 5, 15, 40 of 80
    assert overhead["hint"]["paper_ratio_to_none"] is not None  # Table V beside it


def test_grid_estimates(tiny):
    _, lines, _ = tiny
    grids = {g["grid"]: g for g in of(lines, "grid_estimate")}
    assert set(grids) == {"table2", "table3"}
    for g in grids.values():
        assert g["gpu_hours"] > 0 and g["missing"] == [] and "epochs × train_rows" in g["formula"]
        parts = g["hours_runs"] + g["hours_pretrained"] + g["hours_crafting"]
        assert g["gpu_hours"] == pytest.approx(parts, abs=0.02)
    assert (grids["table2"]["runs"], grids["table3"]["runs"]) == (300, 135)
    assert grids["table3"]["poison_sets"] == 15  # GM, BP and FC, one PoisonSet per trial each
    assert grids["table3"]["pretrained_models"] == 3  # GM's surrogate, the victim's and the attacker's extractors
    assert any("untargeted" in e for e in grids["table2"]["excludes"])


def test_the_end_to_end_run_reports_success_and_accuracy(tiny):
    _, lines, _ = tiny
    (e2e,) = of(lines, "fashion_mnist_e2e")
    assert "skipped" not in e2e, e2e
    assert e2e["trials"] == 1 and e2e["successes"] in (0, 1) and 0 <= e2e["test_acc_mean"] <= 1
    assert e2e["per_trial"][0]["attack"] == "gm"


def test_the_end_to_end_run_says_why_it_is_skipped(gpu_check, tmp_path):
    cpu = torch.device("cpu")
    assert "no --data-dir" in gpu_check.fashion_mnist_e2e(None, cpu, gpu_check.TINY, "off")["skipped"]
    skipped = gpu_check.fashion_mnist_e2e(str(tmp_path), cpu, gpu_check.TINY, "off")["skipped"]
    assert str(tmp_path) in skipped


def test_scheduled_epochs_at_paper_scale(gpu_check):
    from poisonbench.defenses import Threat, build_defense
    from poisonbench.engine.recipes import resolve_recipe

    recipe, threat = resolve_recipe("cifar10", "paper"), Threat("targeted", budget=490, train_size=49_000)
    events = {m: gpu_check.scheduled_epochs(build_defense(m, "cifar10", recipe, threat)) for m in DEFENSES.names()}
    assert events["hint"] == [5, 15, 40] and events["friends"] == [5] and len(events["epic"]) > 1
    assert events["atda"] == [] and events["none"] == [] and events["knn"] == []


def test_precision_is_the_engines(gpu_check, monkeypatch):
    """bf16 is measured through the engine's own `--precision` (engine.training.train), not an autocast of its own."""
    seen = []
    monkeypatch.setattr(gpu_check, "train", lambda *args, **kwargs: seen.append(kwargs["precision"]))
    for precision in ("fp32", "bf16"):
        gpu_check.train_at_precision(precision, None, torch.zeros(2), torch.zeros(2), None, torch.device("cpu"))
    assert seen == ["fp32", "bf16"]


def test_paper_scale_seconds_by_hand(gpu_check):
    """10 s over 2 epochs: 4 s of one scheduled event (3 events at paper scale), 3 s before training of which 2 s
    trained the filter's feature model (it scales with the epochs, the other 1 s does not), 3 s of epochs proper →
    at 80 epochs (3 + 2) × 40 + 1 + 4 × 3."""
    cost = {"defense_epoch": 4.0, "defense_prepare": 3.0, "knn_feature_model": 2.0, "train": 5.0}
    assert gpu_check.paper_scale_seconds(10.0, cost, 2, 80, 1, 3) == pytest.approx(5 * 40 + 1 + 12)
    assert gpu_check.paper_scale_seconds(10.0, {}, 2, 80, 0, 0) == pytest.approx(400)  # none: the epochs alone


def test_the_k_and_graph_lines(tiny):
    """Tiny mode rehearses K = 1 and 2 (two worker processes behind the barrier) and the graph line's CPU form."""
    _, lines, _ = tiny
    ks = of(lines, "concurrency")
    assert [line["k"] for line in ks] == [1, 2]
    for line in ks:
        assert line["aggregate_images_per_s"] > 0 and len(line["worker_images_per_s"]) == line["k"]
        assert line["threads_per_worker"] >= 1 and line["timed_epochs"] == 1
    assert ks[0]["speedup_over_k1"] == 1.0
    assert ks[1]["speedup_over_k1"] == round(ks[1]["aggregate_images_per_s"] / ks[0]["aggregate_images_per_s"], 2)
    graphs = of(lines, "graphs")
    assert [g["graphs"] for g in graphs] == ["default", "reduce-overhead"]
    assert graphs[0]["images_per_s"] > 0 and graphs[1]["skipped"] == "--compile off: no graphs"
