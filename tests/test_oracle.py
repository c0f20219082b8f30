"""The oracle (poisonbench/defenses/oracle.py): removes exactly the poisoned rows; the only method handed the poison
mask before training (an explicit, tested exception of the engine's contract: engine/hooks.py); refused on clean
data; labelled an upper bound in the reports and never marked best."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from poisonbench.core.device import to_float
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.defenses import DEFENSES, Threat, build_defense
from poisonbench.engine.hooks import Defense, TrainContext, hand_poison_mask
from poisonbench.engine.models import build_model
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.training import train
from poisonbench.report import tables
from tests.report_records import make_record

from .conftest import files_under, one_line_error

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")

# the methods allowed to see the poison mask before training: adding one here is a decision about the engine's
# contract (docs/engine.md "Defense hooks"), never a side effect of registering a defense
SEES_POISON_MASK = {"oracle"}


def test_only_the_allow_listed_methods_see_the_poison_mask():
    seeing = {m for m in DEFENSES.names() if DEFENSES.get(m).sees_poison_mask}
    assert seeing == SEES_POISON_MASK
    assert Defense.sees_poison_mask is False
    assert not any("poison" in f.name for f in dataclasses.fields(TrainContext))  # the hooks' context never holds it


class Spy(Defense):
    name = "spy"
    got: list = []

    def receive_poison_mask(self, poisoned):
        self.got.append(poisoned)


def test_the_mask_is_handed_over_only_where_the_class_sets_the_flag():
    recipe = resolve_recipe("mnist", "quick")
    mask = torch.tensor([True, False])
    spy = Spy("mnist", recipe)
    hand_poison_mask(spy, mask)
    assert spy.got == []  # no flag: nothing, even though the method exists
    Spy.sees_poison_mask = True
    try:
        hand_poison_mask(spy, mask)
        assert spy.got == [mask]
        with pytest.raises(PoisonbenchError, match="this run has none"):
            hand_poison_mask(spy, None)
    finally:
        Spy.sees_poison_mask = False
    with pytest.raises(TypeError, match="never sees the poison mask"):
        Defense("mnist", recipe).receive_poison_mask(mask)


def oracle_run(data, poisoned: torch.Tensor | None, epochs: int = 1):
    recipe = resolve_recipe("mnist", "quick", epochs=epochs, batch_size=64)
    threat = Threat("untargeted")
    defense = build_defense("oracle", "mnist", recipe, threat)
    if poisoned is not None:
        hand_poison_mask(defense, poisoned)
    model = build_model("convnet", data, seed=0)
    result = train(model, to_float(data.train.x, CPU), data.train.y, to_float(data.val.x, CPU), data.val.y, recipe,
                   seed=0, device=CPU, num_classes=10, defense=defense, compile="off")
    return defense, result


def test_the_oracle_removes_exactly_the_poisoned_rows(tiny_npz):
    data = load_dataset(str(tiny_npz))
    n = len(data.train)
    poisoned = torch.zeros(n, dtype=torch.bool)
    poisoned[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:37]] = True
    defense, result = oracle_run(data, poisoned)
    assert torch.equal(result.context.active, torch.nonzero(~poisoned).flatten())
    removal = defense.summary(poisoned)["removal"]
    assert removal["poisons"] == removal["poisons_removed"] == removal["removed"] == 37
    assert removal["poisons_removed_fraction"] == 1.0 and removal["clean_removed"] == 0
    assert removal["clean_removed_fraction"] == 0.0 and removal["kept"] == n - 37
    assert defense.summary(poisoned)["upper_bound"] is True and "upper bound" in defense.summary_text


def test_the_oracle_without_a_mask_refuses_to_train(tiny_npz):
    data = load_dataset(str(tiny_npz))
    with pytest.raises(PoisonbenchError, match="no poison mask was handed over"):
        oracle_run(data, None)


def test_the_oracle_refuses_to_train_on_nothing(tiny_npz):
    data = load_dataset(str(tiny_npz))
    with pytest.raises(PoisonbenchError, match="every train row in use is poisoned"):
        oracle_run(data, torch.ones(len(data.train), dtype=torch.bool))


def test_each_refusal_of_the_oracle_is_its_whole_line(tiny_npz):
    """The three refusals as the user reads them, whole: no mask, a mask of the wrong length, nothing left."""
    data = load_dataset(str(tiny_npz))
    n = len(data.train)
    cases = [(None, "method 'oracle': no poison mask was handed over before training "
                    "(engine.hooks.hand_poison_mask)"),
             (torch.zeros(n + 3, dtype=torch.bool), f"method 'oracle': the poison mask covers {n + 3} rows, the "
                                                    f"train split {n}"),
             (torch.ones(n, dtype=torch.bool), "method 'oracle': every train row in use is poisoned, so removing the "
                                               "poisons leaves nothing to train on (a poison ratio below 1)")]
    for mask, message in cases:
        with pytest.raises(PoisonbenchError) as info:
            oracle_run(data, mask)
        assert str(info.value) == message


def test_the_oracle_of_a_clean_run_is_refused_at_construction():
    with pytest.raises(PoisonbenchError, match="a clean run has none: nothing to remove"):
        build_defense("oracle", "mnist", resolve_recipe("mnist", "quick"), Threat("clean"))


FAST = ["--recipe", "quick", "--epochs", "1", "--batch-size", "64", "--compile", "off"]


def test_the_oracle_on_clean_data_is_one_line_exit_2_and_writes_nothing(cli, tiny_npz, tmp_path):
    results = tmp_path / "r"
    code, _, err = cli("defend", "--dataset", tiny_npz, *FAST, "--method", "oracle", "--results", results)
    one_line_error(code, err, "'oracle'", "nothing to remove")
    assert files_under(results) == []


def test_defend_hands_the_oracle_the_poisons_it_removes(cli, tiny_npz, tmp_path):
    """End to end (the run executor, experiment/one_run.py): the record's removal counts are all the poisons and
    no clean row."""
    results = tmp_path / "r"
    code, out, err = cli("defend", "--dataset", tiny_npz, *FAST, "--method", "oracle", "--poison-ratio", "0.3",
                         "--attacks", "durp", "--results", results, "--json")
    assert code == 0, err
    record = json.loads((results / "runs" / f"{json.loads(out)['run_id']}.json").read_text())
    removal = record["defense"]["removal"]
    assert removal["poisons"] == sum(record["config"]["poison"]["counts"].values())
    assert removal["poisons_removed"] == removal["poisons"] == removal["removed"] > 0
    assert removal["clean_removed"] == 0 and record["defense"]["upper_bound"] is True


# --- the reports: labelled an upper bound, never the best -------------------------------------------------------


def untargeted_records() -> list[dict]:
    recs = []
    for t in range(2):
        recs.append(make_record(method="none", rho=0.5, trial=t, acc=0.40))
        recs.append(make_record(method="knn", rho=0.5, trial=t, acc=0.60, params={"k": 101}))
        recs.append(make_record(method="oracle", rho=0.5, trial=t, acc=0.95))
    return recs


def test_table_2_labels_the_oracle_and_marks_the_best_defense_not_the_oracle():
    t = tables.build("2", untargeted_records(), tables.Options(trials=1), mix="any")
    block = t.blocks[0]
    assert "oracle (upper bound)" in block.columns
    row = next(r for r in block.rows if r[0].text == "0.5")
    cells = dict(zip(block.columns, row, strict=True))
    assert not cells["oracle (upper bound)"].best and cells["oracle (upper bound)"].value == pytest.approx(95.0)
    assert cells["knn"].best  # the best defense, though the oracle's accuracy is higher
    assert "oracle (upper bound)" in tables.render(t, "md")


def test_table_3_never_marks_the_oracle_best():
    recs = []
    for t in range(2):
        target = {"attack": "gm", "target_index": t, "target_class": 1, "intended_class": 2}
        recs.append(make_record(method="none", trial=t, acc=0.80, targeted={**target, "success": True}))
        recs.append(make_record(method="knn", trial=t, acc=0.85, params={"k": 3},
                                targeted={**target, "success": t == 0}))
        recs.append(make_record(method="oracle", trial=t, acc=0.90, targeted={**target, "success": False}))
    t = tables.build("3", recs, tables.Options(trials=1))
    block = t.blocks[0]
    labels = [r[0].text for r in block.rows]
    assert "oracle (upper bound)" in labels
    i = labels.index("oracle (upper bound)")
    oracle_asr, oracle_acc = block.rows[i][2], block.rows[i + 1][2]
    assert oracle_asr.text.startswith("0/2") and not oracle_asr.best and not oracle_acc.best
    knn = labels.index("knn")
    assert block.rows[knn][2].best and block.rows[knn + 1][2].best  # 1/2 beats 2/2; 85 % beats 80 %


def test_the_matrix_labels_the_oracle_an_upper_bound():
    recs = []
    for t in range(2):
        for method, acc in (("none", 0.3), ("oracle", 0.9)):
            r = make_record(method=method, rho=1.0, trial=t, acc=acc)
            r["config"]["poison"]["attacks"] = ["pgd"]
            recs.append(r)
    t = tables.build("matrix", recs, tables.Options(trials=1), mix="any")
    assert [row[0].text for row in t.blocks[0].rows] == ["W/o Defense", "oracle (upper bound)"]
    assert {r["method"]: r["upper_bound"] for r in t.data} == {"none": False, "oracle": True}
