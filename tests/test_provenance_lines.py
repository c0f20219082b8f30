"""The provenance notes and caption of a table (report/tables/provenance.py, issue 64): whole lines of small frames
with known crafts, run and cell counts.

Each frame has the columns the functions read: the cell key (`records.CONFIGURATION` without the trial), the trial,
`crafts_json` ({poison id: tensor sha256}, as `records.record_row` writes it) and `code` (the record's env.code).
"""

from __future__ import annotations

import json
import math

import pandas as pd

from poisonbench.report.tables.provenance import caption, mixed_cells, mixed_crafts, recrafted
from poisonbench.report.tables.records import CONFIGURATION


def pid(c: str) -> str:
    """A 64-character poison id whose short form (8 characters) is `c` × 8."""
    return c * 8 + "0" * 56


def sha(d: str) -> str:
    """A 64-character tensor sha256 whose short form is `d` × 8."""
    return d * 8 + "f" * 56


A, B, C = pid("a"), pid("b"), pid("c")
NOTE_CELL = "; its mean pools runs on different tensors of one poison id (re-crafts are other experiments)"
NOTE_SET = "; cells on different crafts compare other tensors of the same poison id"
BRACKETS = " (runs per craft and per code version in brackets)"


def run(crafts: dict | None = None, code: str = "", **cell) -> dict:
    """One row of the shown runs: an untargeted mnist-5k cell of `none` at ρ = 0.2 unless `cell` says otherwise."""
    row = {k: "" for k in CONFIGURATION}
    row.update({"dataset": "mnist-5k", "kind": "untargeted", "scenario": "untargeted", "rho": 0.2, "method": "none",
                "trial": 0})
    row.update(cell)
    row["crafts_json"] = json.dumps(crafts or {}, sort_keys=True)
    row["code"] = code
    return row


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*CONFIGURATION, "crafts_json", "code"])


def test_every_mixed_cell_is_named_in_the_cells_order_with_each_poisonset_and_its_run_counts():
    """Three cells, listed out of order: an unmixed clean cell (first in the cells' order), a targeted cell whose ρ is
    missing (NaN: a key `groupby` drops unless told not to) on two crafts of C, an untargeted cell on two crafts of
    both A and B. Both mixed cells are named, in the cells' order (cifar10 before mnist-5k), not the frame's."""
    rows = [run({A: sha("1"), B: sha("5")}, trial=0), run({A: sha("1"), B: sha("5")}, trial=1),
            run({A: sha("2"), B: sha("6")}, trial=2),
            run({C: sha("3")}, dataset="cifar10", kind="targeted", scenario="scratch", rho=math.nan, attack="gm",
                method="hint", trial=0),
            run({C: sha("4")}, dataset="cifar10", kind="targeted", scenario="scratch", rho=math.nan, attack="gm",
                method="hint", trial=1),
            run(dataset="cifar10", kind="clean", scenario="clean", rho=0.0, method="epic", trial=0),
            run(dataset="cifar10", kind="clean", scenario="clean", rho=0.0, method="epic", trial=1)]
    cells = mixed_cells(frame(rows))
    assert cells == [
        "mixed crafts in the cell cifar10 · HINT · attack gm: PoisonSet cccccccc as cccccccc@33333333 (1 run), "
        "cccccccc@44444444 (1 run)" + NOTE_CELL,
        "mixed crafts in the cell mnist-5k · W/o Defense · ρ = 0.2: PoisonSet aaaaaaaa as aaaaaaaa@11111111 (2 runs), "
        "aaaaaaaa@22222222 (1 run); PoisonSet bbbbbbbb as bbbbbbbb@55555555 (2 runs), bbbbbbbb@66666666 (1 run)"
        + NOTE_CELL,
    ]
    # --strict's lines: the mixed cells first, then each PoisonSet in more than one craft across the runs shown
    assert mixed_crafts(frame(rows)) == cells + [
        "PoisonSet aaaaaaaa in 2 crafts among the runs shown: aaaaaaaa@11111111 (2 runs in 1 cell), "
        "aaaaaaaa@22222222 (1 run in 1 cell)" + NOTE_SET,
        "PoisonSet bbbbbbbb in 2 crafts among the runs shown: bbbbbbbb@55555555 (2 runs in 1 cell), "
        "bbbbbbbb@66666666 (1 run in 1 cell)" + NOTE_SET,
        "PoisonSet cccccccc in 2 crafts among the runs shown: cccccccc@33333333 (1 run in 1 cell), "
        "cccccccc@44444444 (1 run in 1 cell)" + NOTE_SET,
    ]


def test_a_mixed_cell_after_unmixed_cells_is_found():
    """The per-cell loop goes on past the cells that are not mixed."""
    rows = [run({A: sha("1")}, method=m, trial=t) for m in ("friends", "hint") for t in range(2)]
    rows += [run({A: sha("1")}, method="none", trial=0), run({A: sha("2")}, method="none", trial=1)]
    assert mixed_cells(frame(rows)) == [
        "mixed crafts in the cell mnist-5k · W/o Defense · ρ = 0.2: PoisonSet aaaaaaaa as aaaaaaaa@11111111 (1 run), "
        "aaaaaaaa@22222222 (1 run)" + NOTE_CELL]


def test_the_across_cells_line_counts_each_crafts_runs_and_cells():
    """A on craft 1 in one cell (one run), on craft 2 in two others (a run each); the three cells differ only in
    their poisons (`poisons_json`, the last key before the trial). B on one craft only. No cell is mixed: each
    trained on one craft."""
    rows = [run({A: sha("1"), B: sha("5")}, poisons_json='{"rows": 1}'),
            run({A: sha("2"), B: sha("5")}, poisons_json='{"rows": 2}'),
            run({A: sha("2"), B: sha("5")}, poisons_json='{"rows": 3}')]
    assert mixed_cells(frame(rows)) == []
    assert mixed_crafts(frame(rows)) == [
        "PoisonSet aaaaaaaa in 2 crafts among the runs shown: aaaaaaaa@11111111 (1 run in 1 cell), "
        "aaaaaaaa@22222222 (2 runs in 2 cells)" + NOTE_SET]


def test_runs_that_name_no_craft_and_an_empty_table():
    """A row whose `crafts_json` is empty ("" or "{}") names no PoisonSet: no notes, "none named" in the caption."""
    rows = [run(trial=0), run(trial=1)]
    rows[0]["crafts_json"] = ""
    assert mixed_crafts(frame(rows)) == [] and mixed_cells(frame(rows)) == []
    assert caption(frame(rows)) == "Crafts: none named; code: unknown (2)" + BRACKETS
    assert caption(frame([])) == "" and mixed_crafts(frame([])) == [] and mixed_cells(frame([])) == []


def test_recrafted_is_whether_one_poisonset_has_two_crafts_among_all_the_runs():
    """Two crafts of one PoisonSet anywhere (in one run's cells or across runs and cells) is a re-craft; PoisonSets
    on crafts of their own, however many, and runs that name no craft ("" or "{}") are not."""
    one_each = [run({A: sha("1"), B: sha("2")}), run({B: sha("2"), C: sha("3")}, method="hint"), run(), run({})]
    one_each[2]["crafts_json"] = ""
    assert recrafted(frame(one_each)) is False
    assert recrafted(frame([])) is False
    assert recrafted(frame([*one_each, run({C: sha("4")}, rho=0.4)])) is True
    assert recrafted(frame([run({A: sha("1")}), run({A: sha("1"), B: sha("5")}), run({B: sha("6")})])) is True


def test_mixed_cells_reads_only_the_crafts_when_no_poisonset_has_two():
    """Without a re-craft no cell can mix crafts: `mixed_cells` returns before it groups the cells, so a frame of
    crafts alone (no cell key) gives no line rather than a KeyError. With one, it groups, and a run naming no craft
    beside the mixed ones is read as naming none."""
    crafts = pd.DataFrame({"crafts_json": [json.dumps({A: sha("1")}), json.dumps({B: sha("2")}), ""]})
    assert mixed_cells(crafts) == []
    rows = [run({A: sha("1")}, trial=0), run({A: sha("2")}, trial=1), run(trial=2)]
    rows[2]["crafts_json"] = ""
    assert mixed_cells(frame(rows)) == [
        "mixed crafts in the cell mnist-5k · W/o Defense · ρ = 0.2: PoisonSet aaaaaaaa as aaaaaaaa@11111111 (1 run), "
        "aaaaaaaa@22222222 (1 run)" + NOTE_CELL]


def test_the_caption_lists_up_to_six_crafts_and_code_versions():
    """Six crafts (two of A) and six code versions are listed with their run counts, sorted; a code version is its
    first 8 characters, "unknown" where the record names none."""
    codes = ["0123456789abcdef0123", "", "", "fedcba9876543210", "11112222333", "4444", "55556666777788889999"]
    crafts = [{A: sha("1"), B: sha("5")}, {A: sha("2")}, {A: sha("1")}, {pid("d"): sha("7")}, {pid("e"): sha("8")},
              {pid("f"): sha("9")}, {pid("f"): sha("9")}]
    rows = [run(crafts[t], code=codes[t], trial=t) for t in range(7)]
    assert caption(frame(rows)) == (
        "Crafts: aaaaaaaa@11111111 (2), aaaaaaaa@22222222 (1), bbbbbbbb@55555555 (1), dddddddd@77777777 (1), "
        "eeeeeeee@88888888 (1), ffffffff@99999999 (2); code: 01234567 (1), 11112222 (1), 4444 (1), 55556666 (1), "
        "fedcba98 (1), unknown (2)" + BRACKETS)


def test_the_caption_counts_beyond_six_crafts_or_code_versions():
    one_each = [run({pid(c): sha("1")}, code=c * 10, trial=t) for t, c in enumerate("abcdefg")]
    assert caption(frame(one_each)) == "Crafts: 7 of 7 PoisonSets, one craft each; code: 7 versions" + BRACKETS
    # A in 3 crafts, B in 2, D and E in 1: two PoisonSets crafted more than once
    several = [run({A: sha(d)}, trial=t) for t, d in enumerate("123")] + [
        run({B: sha(d)}, trial=3 + t) for t, d in enumerate("45")] + [
        run({pid("d"): sha("6")}, trial=5), run({pid("e"): sha("7")}, trial=6)]
    assert caption(frame(several)) == ("Crafts: 7 of 4 PoisonSets (2 PoisonSet(s) in more than one craft); "
                                       "code: unknown (7)" + BRACKETS)
