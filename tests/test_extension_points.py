"""Adding an attack, a defense or a scenario is one class plus its registry line (docs/engine.md, "Adding an attack, a
defense or a scenario"): the CLI options appear by themselves, and the engine's seams (raw and augmented batch hooks,
the eval-mode forward, a model trained first, the poison mask for the summary only, a training subset, a frozen
pre-trained extractor kept in eval mode, extra metrics) do what they promise. The throw-away parts live in
tests/toys.py."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from poisonbench import poisons
from poisonbench.attacks import ATTACKS
from poisonbench.data import load_dataset
from poisonbench.defenses import DEFENSES
from poisonbench.experiment.defend import defend
from poisonbench.experiment.scenarios import SCENARIOS
from poisonbench.experiment.spec import DefendSpec

from .toys import ToyDefense, ToyTargeted, ToyTransfer, registered

FAST = {"recipe": "quick", "recipe_overrides": {"epochs": 2, "batch_size": 64}, "compile": "off"}


def test_a_new_defense_gets_its_cli_options_and_every_hook(cli, tiny_npz, tmp_path):
    code, out, _ = cli("defend", "--help-method", "all")
    assert code == 0 and "--toy-level" not in out
    with registered(DEFENSES, "toy", ToyDefense):
        code, out, _ = cli("defend", "--help")  # the short help names the method, its options stay out
        flat = " ".join(out.replace("│", " ").split())  # rich wraps the method list
        assert code == 0 and "--toy-level" not in out and "iss, ueraser, dpsgd, oracle, toy (`--help-method" in flat
        code, out, _ = cli("defend", "--help-method", "toy")
        assert code == 0 and "--toy-level" in out and "--toy-pretrain" in out and "─ toy options ─" in out
        assert "\ntoy: test defense\n" in out and "--ratio" not in out and "--dataset" not in out
        code, out, err = cli("defend", "--method", "toy", "--toy-level", "0.02", "--toy-pretrain", "--dataset",
                             tiny_npz, "--recipe", "quick", "--epochs", "2", "--batch-size", "64", "--compile", "off",
                             "--results", tmp_path / "r", "--json")
        assert code == 0, err
        record = json.loads((tmp_path / "r" / "runs" / f"{json.loads(out)['run_id']}.json").read_text())
        assert record["config"]["defense"] == {"method": "toy", "toy_level": 0.02, "toy_pretrain": True}
        seen = record["defense"]
        steps = 2 * -(-len(load_dataset(str(tiny_npz)).train) // 64)
        assert seen["raw_calls"] == seen["batch_calls"] == steps and seen["raw_unaugmented"]
        assert seen["eval_forward_training"] is False and seen["training_after_eval"] is True
        assert seen["pretrained_eval"] and seen["pretrained_frozen"] and seen["pretrained_train_acc"] > 0.2
        assert not seen["hooks_see_poison_mask"] and not seen["summary_sees_mask"]  # clean run: no mask at all
        assert record["cost"]["defense_batch"] > 0  # per-batch hooks are the defense's cost (Table V)
        code, _, err = cli("defend", "--toy-level", "1", "--dataset", tiny_npz, "--results", tmp_path / "x")
        assert code == 2 and "option --toy-level does not apply to method 'none'" in err
        assert not (tmp_path / "x").exists()
    code, out, _ = cli("defend", "--help-method", "all")
    assert "--toy-level" not in out  # the registry as it is when the command is built


def test_only_the_summary_sees_the_poison_mask(tiny_npz, tmp_path):
    with registered(DEFENSES, "toy", ToyDefense):
        (out,) = defend(DefendSpec(dataset=str(tiny_npz), method="toy", poison_ratio=0.5, attacks=["durp"],
                                   results=str(tmp_path), **FAST))
    assert out.record["defense"]["summary_sees_mask"] and not out.record["defense"]["hooks_see_poison_mask"]


def test_a_new_targeted_attack_gets_its_options_and_its_target(cli, tiny_npz, tmp_path):
    data = load_dataset(str(tiny_npz))
    label = int(data.test.y[3])
    intended = (label + 1) % data.num_classes
    with registered(ATTACKS, "toy-targeted", ToyTargeted):
        code, out, _ = cli("craft", "--help-attack", "toy-targeted")
        assert code == 0 and "--toy-scale" in out
        base = ("craft", "--attack", "toy-targeted", "--dataset", tiny_npz, "--results", tmp_path)
        code, out, err = cli(*base, "--budget", "0.05", "--json")  # no target given: drawn from --seed
        assert code == 0, err
        drawn = json.loads(out)["target"]
        assert drawn["intended_class"] != drawn["true_class"] == int(data.test.y[drawn["index"]])
        code, _, err = cli(*base, "--target", 3, "--intended", label)
        assert code == 2 and f"intended class {label} must be a class" in err
        code, out, err = cli(*base, "--target", 3, "--intended", intended, "--budget", "0.05", "--toy-scale",
                             "0.5", "--json")
        assert code == 0, err
        result = json.loads(out)
        poison = poisons.load(tmp_path, result["poison_id"], data)
    rows = result["target"].pop("rows")
    assert result["target"] == {"index": 3, "true_class": label, "intended_class": intended}
    assert poison.manifest["target"] == {**result["target"], "rows": rows}  # the rows are part of its identity
    assert len(poison) == int(0.05 * len(data.train)) and sorted(poison.indices.tolist()) == rows
    assert (data.train.y[poison.indices] == intended).all()  # bases of the intended class
    spec = poisons.craft_spec(data, "pgd")  # an untargeted PoisonSet keeps its id: no target among its inputs
    assert "target" not in spec.inputs()


def test_a_new_scenario_trains_a_subset_on_a_frozen_extractor(tiny_npz, tmp_path, train_calls):
    data = load_dataset(str(tiny_npz))
    scenario = ToyTransfer()
    with registered(SCENARIOS, "toy-transfer", lambda: scenario):
        outcomes = defend(DefendSpec(dataset=str(tiny_npz), scenario="toy-transfer", results=str(tmp_path),
                                     trials=2, **FAST))
    record = outcomes[0].record
    assert record["config"]["scenario"] == "toy-transfer" and record["config"]["poison"] is None
    rows = int(0.1 * len(data.train))
    assert record["metrics"]["toy_transfer_rows"] == rows  # the scenario's own metric
    assert all(len(args[1]) == rows for args, _, _ in train_calls)  # the engine trained on the subset only
    assert len(list((tmp_path / "extractors").iterdir())) == 1  # pre-trained once, shared by both trials
    assert scenario.extractor_info["trained"] is False  # trial 1 loaded it
    pretrained = load_file(scenario.extractor_info["path"])
    trained = scenario.model.state_dict()
    extractor = [k for k in pretrained if not k.startswith("head.")]
    assert any("running_mean" in k for k in extractor)
    for key in extractor:  # frozen weights, and BatchNorm statistics that did not drift (eval mode kept)
        assert torch.equal(trained[key].cpu(), pretrained[key]), key
    assert not torch.equal(trained["head.weight"].cpu(), pretrained["head.weight"])  # the new head trained


def test_a_scenario_option_outside_the_registry_is_refused(cli, tmp_path):
    code, _, err = cli("defend", "--scenario", "nope", "--results", tmp_path)
    assert code == 2 and "unknown scenario 'nope'; valid choices: clean, untargeted, poison-set" in err
    code, _, err = cli("defend", "--scenario", "untargeted", "--results", tmp_path)
    assert code == 2 and "needs --poison-ratio > 0" in err


def test_the_accel_switch_is_in_both_commands(cli):
    for command in ("craft", "defend"):
        code, out, _ = cli(command, "--help")
        assert code == 0 and "--accel" in out
