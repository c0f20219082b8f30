"""Issue 83 item 3, "every adaptation named": docs/fidelity.md's table "Departures from the official procedures"
lists every place where a run departs from the official procedure it is named after, with the label that says so
and where. Each row's label must be found where the row says (built here the minimal way: the record's PoisonSet
entry, the matrix's column, the plain report's poison label, a resolved parameter set); a row this file cannot
check fails, and so does a bold "deviation" elsewhere in the file that names no row and is not listed apart below."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from poisonbench.attacks import ATTACKS
from poisonbench.core.hashing import short_hash
from poisonbench.defenses import DEFENSES
from poisonbench.engine.recipes import resolve_recipe
from poisonbench.engine.threat import threat_of_config
from poisonbench.experiment.run_inputs import poison_entry
from poisonbench.report import tables
from poisonbench.report.tables.records import record_row
from tests.test_matrix import single

FIDELITY = Path(__file__).resolve().parents[1] / "docs" / "fidelity.md"
SECTION = "## Departures from the official procedures"

# bold deviations of docs/fidelity.md that have no row, each with its reason (a substring of the item -> why)
NOT_IN_THE_TABLE = {
    "no flips for the MNIST family": "fixed by the data family (digits and clothes are not mirror-symmetric); the "
                                     "record's dataset names the family",
    "scales the step by pbatch/512": "identical at the default pbatch 512; another pbatch is in "
                                     "config.poison.params",
    "PB projects only after the first step": "only the starting point differs, inside the same ε-ball",
    "backpropagated through the K train-mode forwards": "UEraser's step on the chosen rows differs only through "
                                                        "BatchNorm's statistics; no record field says so yet",
    "SA takes ⌈budget·n⌉": "the same count on every built-in split (1 % of 3,900, 49,000 and 59,000 is whole); "
                           "another split's count is config.poison.poisoned",
    "SA's next trial goes on from the model": "identical at SA's default of one restart; the restarts are in "
                                              "config.poison.params",
    "every source-class test image counts": "identical on CIFAR-10 and Fashion-MNIST (1,000 test images a class, SA "
                                            "draws all); SA's draw fails on a smaller class; the count is "
                                            "metrics.asr_n",
}


def doc() -> str:
    return FIDELITY.read_text()


def table_rows() -> list[dict]:
    """The departures table: id, label texts (the backticked parts of its label column)."""
    text = doc()
    assert SECTION in text, "docs/fidelity.md has no departures table"
    body = text[text.index(SECTION):]
    body = body[:body.index("\n## ", 1)]
    rows = []
    for line in body.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 7, f"a departures row without its 7 columns: {line[:80]}"
        labels = re.findall(r"`([^`]+)`", cells[5])
        assert labels, f"row {cells[0]} names no label"
        rows.append({"id": cells[0].strip("`"), "labels": labels, "where": cells[6]})
    return rows


# --- where labels live -----------------------------------------------------------------------------------------

def shown(attack: str, entry: dict) -> list[str]:
    """[the record's PoisonSet entry, the matrix's columns, the plain report's poison label] of a run of `attack`
    alone on the PoisonSet `entry` describes."""
    r = single("none", attack, 0.5, 0)
    r["inputs"] = {"poisons": [{**entry, "poison_id": short_hash(entry)}]}
    r["config"]["poison"]["poison_ids"] = {attack: short_hash(entry)}
    r["run_id"] = short_hash(r["config"])
    t = tables.build("matrix", [r], tables.Options(trials=1), mix="any")
    block = next(b for b in t.blocks if b.title.startswith("mnist-5k"))
    return [json.dumps(entry, ensure_ascii=False), " ".join(block.columns), record_row(r)["poison_label"]]


def joined(*places: list[str]) -> list[str]:
    """Each place's texts of several runs, joined (one row may have a label per family or per schedule)."""
    return ["\n".join(texts) for texts in zip(*places, strict=True)]


def em_class_batch() -> list[str]:
    from poisonbench.attacks.em import class_batch

    assert class_batch(780, 512, 19) == (41, 19)  # mnist-5k's 20 % subset, 19 updates
    params = ATTACKS.get("em")("mnist", granularity="class").params
    manifest = {"dataset": "mnist-5k", "count": 3900, "params": params,
                "attack_info": {"class_batch": 41, "stopped": True}}
    entry = poison_entry("em", manifest)
    assert entry["adapted"] == "class_batch=41"
    # a manifest from before attack_info named the batch: from its row count
    assert poison_entry("em", {**manifest, "attack_info": {"stopped": True}})["adapted"] == "class_batch=41"
    # the official batch (one update on mnist-5k) and CIFAR-10's 512: no label
    official = ATTACKS.get("em")("mnist", granularity="class", class_updates=1).params
    assert poison_entry("em", {**manifest, "params": official, "attack_info": {"class_batch": 512}})["adapted"] == ""
    return shown("em", entry)


def em_iteration_cap() -> list[str]:
    manifest = {"dataset": "mnist-5k", "count": 3900, "params": ATTACKS.get("em")("mnist").params,
                "attack_info": {"stopped": False, "iterations": 5}}
    entry = poison_entry("em", manifest)
    assert poison_entry("em", {**manifest, "attack_info": {"stopped": True}})["adapted"] == ""
    return shown("em", entry)


def ops_margin() -> list[str]:
    ops = ATTACKS.get("ops")
    per_family = [shown("ops", poison_entry("ops", {"dataset": d, "params": ops(f).params}))
                  for d, f in (("cifar10", "cifar10"), ("mnist-5k", "mnist"))]
    assert poison_entry("ops", {"dataset": "cifar10", "params": ops("cifar10", margin=0).params})["adapted"] == ""
    return joined(*per_family)


def rem_entry(**params) -> dict:
    return poison_entry("rem", {"dataset": "mnist-5k", "params": ATTACKS.get("rem")("mnist", **params).params})


def rem_schedule() -> list[str]:
    return joined(shown("rem", rem_entry(schedule="budget")), shown("rem", rem_entry(train_steps=2590)))


def rem_grad_clip() -> list[str]:
    rem = ATTACKS.get("rem")
    assert "grad_clip" not in rem("mnist").params  # the default stays out of the params: the poison ids made before
    assert rem("mnist", grad_clip=0).params["grad_clip"] == 0
    assert rem_entry(grad_clip=0)["adapted"] == ""
    legacy = {"attack": "rem", "schedule": "official"}  # a record from before issue 83 names no departure
    return joined(shown("rem", rem_entry()), shown("rem", legacy))


def deepconfuse_budget() -> list[str]:
    return [json.dumps(ATTACKS.get("deepconfuse")("mnist").params)]


def pgd_dap_surrogate(tmp_path: Path) -> list[str]:
    from poisonbench.data import load_dataset
    from tests.conftest import write_npz

    data = load_dataset(str(write_npz(tmp_path, n=40, size=16, classes=4)))
    pgd, dap = ATTACKS.get("pgd")(data.family), ATTACKS.get("dap")(data.family)
    assert pgd.surrogate_ref(data) == dap.surrogate_ref(data) is not None
    info = {"id": pgd.surrogate_ref(data), "kind": "surrogates"}
    entries = [poison_entry(a, {"dataset": data.name, "params": {}, "surrogate_info": info}) for a in ("pgd", "dap")]
    assert entries[0]["crafted_on"] == entries[1]["crafted_on"]
    return [json.dumps(entries)]


def cifar_crop() -> list[str]:
    return [json.dumps(resolve_recipe("cifar10", "paper").to_dict())]


def forest_augment() -> list[str]:
    return [json.dumps(ATTACKS.get("gm")("mnist").params)]


def dpsgd_batchnorm() -> list[str]:
    import inspect

    from poisonbench.defenses import dpsgd

    source = inspect.getsource(dpsgd)
    assert '"batchnorm": BN_HANDLING if self.batchnorm' in source  # the record's `defense.batchnorm`
    return [dpsgd.BN_HANDLING]


def backdoor_config_of(attack: str, rows: int = 3900) -> str:
    """`config.poison` of a backdoor run of `attack` at its defaults on `rows` train rows (what the record holds)."""
    from types import SimpleNamespace

    from poisonbench.experiment.scenarios.backdoor import backdoor_config

    cls = ATTACKS.get(attack)
    spec = SimpleNamespace(attack=attack, eps=None, params=cls("mnist").params, poison_id="0" * 16)
    return json.dumps(backdoor_config(spec, rows, round(cls.default_budget() * rows)))


def lc_surrogate(tmp_path: Path) -> list[str]:
    """LC's bases come from the clean shared surrogate: the very model PGD's do (not an adversarially trained one)."""
    from poisonbench.data import load_dataset
    from tests.conftest import write_npz

    data = load_dataset(str(write_npz(tmp_path, n=40, size=16, classes=4)))
    lc = ATTACKS.get("lc")(data.family)
    assert lc.uses_surrogate and lc.surrogate_ref(data) == ATTACKS.get("pgd")(data.family).surrogate_ref(data)
    info = {"id": lc.surrogate_ref(data), "kind": "surrogates"}
    return [json.dumps(poison_entry("lc", {"dataset": data.name, "params": lc.params, "surrogate_info": info}))]


def defense_defaults(method: str, recipe: str = "quick", kind: str = "untargeted") -> list[str]:
    threat = threat_of_config({"poison": {"kind": kind}})
    return [json.dumps(DEFENSES.get(method).defaults("mnist", resolve_recipe("mnist", recipe), threat))]


CHECKS = {
    "em-class-batch": lambda tmp: em_class_batch(),
    "em-iteration-cap": lambda tmp: em_iteration_cap(),
    "ops-margin": lambda tmp: ops_margin(),
    "rem-schedule": lambda tmp: rem_schedule(),
    "rem-grad-clip": lambda tmp: rem_grad_clip(),
    "deepconfuse-budget": lambda tmp: deepconfuse_budget(),
    "pgd-dap-surrogate": pgd_dap_surrogate,
    "cifar-crop": lambda tmp: cifar_crop(),
    "forest-augment": lambda tmp: forest_augment(),
    "dpsgd-batchnorm": lambda tmp: dpsgd_batchnorm(),
    "atda-l2-fat": lambda tmp: defense_defaults("atda"),
    "hint-paper-over-code": lambda tmp: defense_defaults("hint"),
    "friends-begin": lambda tmp: defense_defaults("friends"),
    "blend-noise-pattern": lambda tmp: [backdoor_config_of("blend")],
    "clean-label-backdoor-budget": lambda tmp: [backdoor_config_of("sig"), backdoor_config_of("lc")],
    "lc-clean-surrogate": lc_surrogate,
    "sleeper-agent-patch-pattern": lambda tmp: [backdoor_config_of("sleeper-agent")],
    "sleeper-agent-fixed-pair": lambda tmp: [backdoor_config_of("sleeper-agent")],
    "sleeper-agent-surrogate-recipe": lambda tmp: [backdoor_config_of("sleeper-agent")],
}


# --- the tests -------------------------------------------------------------------------------------------------

def test_the_table_lists_the_issues_departures():
    ids = {r["id"] for r in table_rows()}
    assert {"em-class-batch", "ops-margin", "rem-schedule", "rem-grad-clip"} <= ids
    assert len(ids) == len(table_rows()), "a departure id twice"


@pytest.mark.parametrize("row", table_rows(), ids=lambda r: r["id"])
def test_each_departures_label_is_where_the_row_says(row, tmp_path):
    assert row["id"] in CHECKS, f"departure {row['id']!r} has no check here: its label cannot be found"
    places = CHECKS[row["id"]](tmp_path)
    assert places
    for text in places:
        for label in row["labels"]:
            assert label in text, f"departure {row['id']}: label {label!r} not in {text[:300]!r}"


def test_the_matrix_never_shows_an_adapted_craft_under_the_official_name():
    """The four of the issue, in the matrix: each column names its departure; the official crafts keep the bare
    name."""
    columns = " ".join([em_class_batch()[1], ops_margin()[1], rem_grad_clip()[1]])
    assert "em (class_batch=41)" in columns and "ops (margin=2)" in columns and "ops (margin=4)" in columns
    assert "rem (official+grad_clip=5)" in columns
    official = shown("rem", rem_entry(grad_clip=0))[1].split()
    assert "rem" in official


def test_every_bold_deviation_names_its_row_or_is_listed_apart():
    text = doc()
    start = text.index(SECTION)
    outside = text[:start] + text[text.index("\n## ", start + 1):]
    ids = {r["id"] for r in table_rows()}
    unmatched = []
    for m in re.finditer(r"\*\*[^*\n]*?deviation", outside, flags=re.IGNORECASE):
        ends = [i for i in (outside.find(s, m.end()) for s in ("\n- ", "\n|", "\n\n")) if i >= 0]
        item = outside[m.start():min(ends) if ends else len(outside)]
        named = re.findall(r"departure `([^`]+)`", item)
        if named:
            assert set(named) <= ids, f"{named} are not rows of the departures table"
        elif not any(key in item for key in NOT_IN_THE_TABLE):
            unmatched.append(item[:120])
    assert not unmatched, f"bold deviations with no row of the departures table: {unmatched}"


def test_rems_grad_clip_option_changes_the_step():
    """`--grad-clip 0` is the official unclipped step; the default clips the gradient norm at 5."""
    from poisonbench.attacks.em import sgd, train_step

    def step(clip):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        with torch.no_grad():  # equal logits: CE's gradient is (p − onehot)·xᵀ, of norm ≈ 0.8·‖x‖ = 163 here
            model[1].weight.zero_()
            model[1].bias.zero_()
        before = model[1].weight.detach().clone()
        train_step(model, sgd(model, 0.1), torch.full((8, 1, 2, 2), 100.0), torch.zeros(8, dtype=torch.long), clip)
        return (model[1].weight.detach() - before).norm()

    clipped, free = step(5.0), step(0)
    assert clipped <= 0.1 * 5.0 * 1.0001 < free
