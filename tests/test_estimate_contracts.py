"""The contracts of `sweeps/estimate.py`'s figures stated whole (issue 82, the mutation runs of 2026-11-29): the
table entry `figures_from_lines` makes of benchmarks/gpu_check.py's lines (which lines count, where the device kind
and the provenance come from), the bytes `write_table` writes, and the CPU's figures `cpu_figures` derives (its
crafting seconds scaled by how much slower it trains ResNet-18, what it assumes, in so many words)."""

from __future__ import annotations

import json

import pytest

from poisonbench.sweeps import estimate as est

SETUP = {
    "figure": "setup",
    "device_name": "Device X",
    "git_commit": "abc1234",
    "torch": "2.5.1",
    "date": "2026-11-29",
    "compile": False,
    "ignored": 1,
}
SOURCE = {
    "by": "benchmarks/gpu_check.py",
    "git_commit": "abc1234",
    "torch": "2.5.1",
    "date": "2026-11-29",
    "compile": False,
    "precision": "fp32",
    "throughput": "--deterministic off, paper batch 128; overheads under --deterministic on",
}


def _lines() -> list[dict]:
    """gpu_check.py's lines: the setup, fp32 and bf16 throughputs, deterministic on and off, an error, a skip, a
    defense without a paper-scale ratio, one crafting figure."""
    return [
        {
            "figure": "train_throughput",
            "workload": "w1",
            "precision": "fp32",
            "deterministic": "off",
            "images_per_s": 100.0,
            "device_name": "Line device",
        },
        SETUP,
        {
            "figure": "train_throughput",
            "workload": "w2",
            "precision": "bf16",
            "deterministic": "off",
            "images_per_s": 900.0,
        },
        {
            "figure": "train_throughput",
            "workload": "w3",
            "precision": "fp32",
            "deterministic": "on",
            "images_per_s": 50.0,
        },
        {
            "figure": "train_throughput",
            "workload": "w4",
            "precision": "fp32",
            "deterministic": "off",
            "images_per_s": 70.0,
            "error": "out of memory",
        },
        {
            "figure": "train_throughput",
            "workload": "w5",
            "precision": "fp32",
            "deterministic": "off",
            "images_per_s": 60.0,
            "skipped": "no GPU",
        },
        {"figure": "defense_overhead", "method": "none", "paper_scale_ratio_to_none": 1.0},
        {"figure": "defense_overhead", "method": "epic", "paper_scale_ratio_to_none": 2.5},
        {"figure": "defense_overhead", "method": "ocsvm", "paper_scale_ratio_to_none": None},
        {"figure": "defense_overhead", "method": "hint", "paper_scale_ratio_to_none": 3.0, "error": "failed"},
        {"figure": "craft", "attack": "gm", "seconds_per_iteration": 0.25, "poisons": 500},
        {"figure": "craft", "attack": "bp", "seconds_per_iteration": 9.0, "poisons": 5, "skipped": "no time"},
    ]


def test_figures_from_lines_is_the_fp32_undeterministic_measured_lines_and_the_setups_provenance():
    """Only measured lines (no `error`, no `skipped`): fp32 `--deterministic off` throughputs, defenses with a
    paper-scale ratio, crafting figures; the kind and the provenance from the `setup` line, whole."""
    kind, entry = est.figures_from_lines(_lines())
    assert kind == "Device X"
    assert entry == {
        "source": SOURCE,
        "images_per_s": {"w1": 100.0},
        "ratio_to_none": {"none": 1.0, "epic": 2.5},
        "crafting": {"gm": {"seconds_per_iteration": 0.25, "poisons": 500}},
    }


def test_without_a_setup_line_the_kind_is_the_first_line_naming_a_device_else_unknown():
    lines = [x for x in _lines() if x.get("figure") != "setup"]
    kind, entry = est.figures_from_lines(lines)
    assert kind == "Line device"
    assert entry["source"] == {**SOURCE, "git_commit": None, "torch": None, "date": None, "compile": None}
    assert est.figures_from_lines([{k: v for k, v in x.items() if k != "device_name"} for x in lines])[0] == "unknown"
    assert est.figures_from_lines([lines[0], {**SETUP, "device_name": ""}])[0] == "Line device"  # an empty name


def test_write_table_writes_indented_json_keeping_non_ascii_and_a_final_newline(tmp_path):
    """The table as a person reads it in a diff: indent 2, "×" and "µ" as they are, one newline at the end."""
    path = tmp_path / "t.json"
    entry = {"images_per_s": {"w": 1.5}, "ratio_to_none": {}, "crafting": {}, "source": {"note": "2× µs"}}
    est.write_table(path, "GPU × 2", entry)
    assert (
        path.read_text(encoding="utf-8")
        == json.dumps({"devices": {"GPU × 2": entry}}, indent=2, ensure_ascii=False) + "\n"
    )
    assert '\n  "devices": {\n    "GPU × 2": {' in path.read_text(encoding="utf-8")


@pytest.fixture
def reference() -> est.Figures:
    return est.Figures(
        "Ref GPU",
        {"cifar10-scratch": 1000.0, "mnist-scratch": 9000.0},
        {"none": 1.0, "epic": 2.0},
        {"gm": {"seconds_per_iteration": 0.5, "poisons": 500}, "bp": {"seconds_per_iteration": 2.0, "poisons": 5}},
    )


def test_cpu_figures_scale_crafting_by_how_much_slower_the_cpu_trains_resnet18_and_say_so(monkeypatch, reference):
    """A CPU at 40 images/s against the reference's 1,000: crafting 25× the reference's seconds per iteration (the
    poisons as they were), the ratios the reference's, its images/s its own, and every assumption whole."""
    monkeypatch.setattr(est, "_threads", lambda: 2)
    monkeypatch.setattr(est, "_cpu_model", lambda: "Test CPU")
    cpu = {"cifar10-scratch": 40.0, "mnist-scratch": 300.0}
    f = est.cpu_figures(cpu, reference)
    assert (f.kind, f.images_per_s, f.ratio_to_none) == (est.CPU_KIND, cpu, {"none": 1.0, "epic": 2.0})
    assert f.crafting == {
        "gm": {"seconds_per_iteration": 12.5, "poisons": 500},
        "bp": {"seconds_per_iteration": 50.0, "poisons": 5},
    }
    assert f.source == {"by": "poisonbench.sweeps.estimate.measure_cpu", "cpu": "Test CPU"}
    assert f.assumes == (
        "images/s: one timed training step per workload on this CPU with 2 threads, now (batch 16 for ResNet-18, "
        "128 for the ConvNet)",
        "defense-overhead ratios: the Ref GPU's (no CPU figure; a defense's own work may weigh differently on a CPU)",
        "crafting s/iteration: the Ref GPU's × its cifar10-scratch images/s over this CPU's (25×)",
    )
    given = est.cpu_figures(cpu, reference, measured=False)
    assert given.assumes[0] == "images/s: given by the caller, not measured" and given.assumes[1:] == f.assumes[1:]
    assert f.images_per_s is not cpu and f.ratio_to_none is not reference.ratio_to_none  # copies


@pytest.mark.parametrize("cpu", [{"mnist-scratch": 300.0}, {"cifar10-scratch": 40.0}])
def test_without_either_resnet18_throughput_the_cpu_has_no_crafting_figure(monkeypatch, reference, cpu):
    """No cifar10-scratch figure on the CPU (or on the reference): no scale, so no crafting figure (the estimate
    then names crafting under `missing`), not the reference's seconds unscaled or an error."""
    monkeypatch.setattr(est, "_threads", lambda: 2)
    monkeypatch.setattr(est, "_cpu_model", lambda: "Test CPU")
    if "cifar10-scratch" in cpu:  # the reference lacks it
        reference = est.Figures("Ref GPU", {"mnist-scratch": 9000.0}, reference.ratio_to_none, reference.crafting)
    f = est.cpu_figures(cpu, reference)
    assert f.crafting == {}
    assert f.assumes[2] == ("crafting s/iteration: none (a cifar10-scratch images/s is missing on the Ref GPU or "
                            "on this CPU, so there is nothing to scale by)")


def test_a_cpu_faster_than_the_reference_names_its_factor_to_three_figures(monkeypatch, reference):
    """A factor below 1 is printed as it is (0.4×), not rounded to "0×"."""
    monkeypatch.setattr(est, "_threads", lambda: 2)
    monkeypatch.setattr(est, "_cpu_model", lambda: "Test CPU")
    f = est.cpu_figures({"cifar10-scratch": 2500.0}, reference)
    assert f.assumes[2] == "crafting s/iteration: the Ref GPU's × its cifar10-scratch images/s over this CPU's (0.4×)"
    assert f.crafting["gm"] == {"seconds_per_iteration": 0.2, "poisons": 500}
