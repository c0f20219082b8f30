"""Contracts of `report html`'s own code (poisonbench/report/html.py) that the hand-planted bugs of 2026-11-29 found
unpinned (docs/testing.md, "core/bounded.py and report/html.py by hand"): which records and options each section's
table is built from, and each line of a section's provenance, whole."""

from __future__ import annotations

from collections import Counter

import pytest

from poisonbench.report import html as report_html
from poisonbench.report import tables
from tests.report_records import make_record


@pytest.mark.parametrize("number", [*tables.TABLES, tables.MATRIX, "backdoor"])
def test_each_section_reads_the_records_and_options_its_terminal_table_reads(number):
    """The matrix and the backdoor table read every attack mix (their cells are single attacks); the paper's
    tables the paper's mix; every table the mix's default PoisonSets. The paper's numbers and intervals on the
    paper's tables, intervals only on the matrix and the backdoor table (neither has paper numbers); Wilson's
    intervals everywhere; the trials asked passed on."""
    single = number in (tables.MATRIX, "backdoor")
    filters = report_html.table_filters(number, {"dataset": "mnist-5k", "mix": "anything"})
    assert filters == {"dataset": "mnist-5k", "mix": "any" if single else tables.PAPER_MIX, "poison_sets": ""}
    options = report_html.table_options(number, 7)
    assert (options.trials, options.paper, options.ci, options.wilson) == (7, not single, True, True)


@pytest.mark.parametrize(("env", "text"), [
    ({"device": "cuda", "gpu": "NVIDIA H200", "cpu": "AMD EPYC"}, "cuda (NVIDIA H200)"),  # the GPU names a GPU run
    ({"device": "cpu", "cpu": "AMD EPYC"}, "cpu (AMD EPYC)"),
    ({"device": "cpu"}, "cpu"),
    ({"device": None, "cpu": "x"}, "unknown (x)"),
    ({}, "unknown"),
    (None, "unknown"),
])
def test_a_runs_device_is_its_device_and_its_model(env, text):
    assert report_html.device_text({"env": env}) == text


def test_counts_list_the_most_frequent_first_then_by_name():
    assert report_html.counted(Counter({"b": 1, "c": 3, "a": 1, 7: 2})) == "c (3), 7 (2), a (1), b (1)"
    assert report_html.counted(Counter()) == ""


def _cell(method: str, trials: int, env: dict) -> list[dict]:
    records = [make_record(method=method, rho=0.2, trial=t) for t in range(trials)]
    for r in records:
        r["env"] = env
    return records


def test_the_provenance_names_runs_cells_trials_recipe_device_crafts_and_code_whole():
    """Two cells of 5 and 3 trials: "3–5 per cell (asked: 5)"; the devices counted, most frequent first; the
    crafts and code split from the caption's sentence."""
    shown = _cell("none", 5, {"device": "cpu", "cpu": "EPYC"}) + _cell("friends", 3, {"device": "cuda", "gpu": "H200"})
    items = report_html.provenance_items(shown, "Crafts: 2 PoisonSets; code: 1 version (abc123)", 5)
    assert items == [("runs", "8 in 2 cell(s)"), ("trials", "3–5 per cell (asked: 5)"),
                     ("recipe", "quick (10 ep) (8)"), ("device", "cpu (EPYC) (5), cuda (H200) (3)"),
                     ("crafts", "2 PoisonSets"), ("code", "1 version (abc123)")]


def test_the_provenance_gives_one_trial_count_where_every_cell_has_it_and_no_code_line_without_one():
    shown = _cell("none", 2, {}) + _cell("friends", 2, {})
    items = dict(report_html.provenance_items(shown, "Crafts: none", 5))
    assert items["trials"] == "2 per cell (asked: 5)"
    assert items["crafts"] == "none" and "code" not in items
    assert "crafts" not in dict(report_html.provenance_items(shown, "", 5))
    assert report_html.provenance_items([], "Crafts: x", 5) == []


def test_a_caption_is_split_at_its_last_crafts_sentence():
    assert report_html.split_caption("Table II. A. Crafts: x. Crafts: y; code: z") == \
        ("Table II. A. Crafts: x", "Crafts: y; code: z")
    assert report_html.split_caption("Table II without provenance") == ("Table II without provenance", "")
