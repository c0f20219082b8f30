"""The transfer threat model and the head's BatchNorm mode (issue 54 item 4), the paper's BP / FC iteration counts,
and Table III's success rates with their Wilson intervals by default (item 8).

- `--threat gray` (the default, the paper's): the poisons are crafted on an extractor of the attacker's own,
  pre-trained like the victim's with another seed; `white`: on the very extractor the victim freezes. Another
  PoisonSet id, recorded, and reported apart.
- `--head-bn train` (the default, HINT's code): the frozen extractor's BatchNorm statistics move while the head
  trains; `eval`: they do not.
"""

from __future__ import annotations

import pytest
import torch

from poisonbench.attacks import ATTACKS
from poisonbench.data import load_dataset
from poisonbench.engine.pretrained import extractor_spec, load_or_train_extractor
from poisonbench.experiment.defend import defend, run_config
from poisonbench.experiment.scenarios import scenario_for
from poisonbench.experiment.spec import DefendSpec
from poisonbench.report import tables

from .conftest import targeted_spec, write_npz


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("threat")
    path = write_npz(root, n=400)
    return str(path), load_dataset(str(path))


def spec_of(path: str, **given):
    return targeted_spec(path, "bp", **given)


def plan_of(spec: DefendSpec, data):
    return scenario_for(spec).plan(spec, data, 0)


def bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var")) and not k.startswith("head.")}


def run_transfer(path: str, results, **given) -> tuple[dict, dict, dict]:
    """Trial 0 of BP in transfer: (record, the victim's BN buffers when built, the same after training)."""
    import poisonbench.experiment.scenarios.targeted as targeted

    seen = {}
    original = targeted.Transfer.build_model

    def build_model(self, request):
        model = original(self, request)
        seen["model"], seen["before"] = model, bn_buffers(model)
        return model

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(targeted.Transfer, "build_model", build_model)
        (outcome,) = defend(spec_of(path, results=str(results), **given))
    return outcome.record, seen["before"], bn_buffers(seen["model"])


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """Trial 0 of BP in transfer by default (gray, head BN train) and white-box with BN in eval mode."""
    path, _ = tiny
    results = tmp_path_factory.mktemp("threat-results")
    return {"gray": run_transfer(path, results), "white": run_transfer(path, results, threat="white",
                                                                         head_bn="eval"), "results": results}


def test_gray_crafts_on_an_extractor_of_its_own_and_white_on_the_victims(tiny, runs):
    path, data = tiny
    gray, white = plan_of(spec_of(path), data), plan_of(spec_of(path, threat="white"), data)
    assert gray.spec.params["threat"] == "gray" and white.spec.params["threat"] == "white"
    assert gray.spec.poison_id != white.spec.poison_id  # the threat is part of the PoisonSet's identity
    assert runs["gray"][0]["config"]["poison"]["poison_id"] == gray.spec.poison_id
    assert runs["white"][0]["config"]["poison"]["poison_id"] == white.spec.poison_id
    victim = extractor_spec(data, None, "quick", {"epochs": 1})
    attack = {t: ATTACKS.get("bp")(data.family, **p.spec.params) for t, p in (("gray", gray), ("white", white))}
    assert attack["white"].model_spec(data) == ("extractors", victim)  # white: the victim's very extractor
    kind, own = attack["gray"].model_spec(data)
    assert own["seed"] != victim["seed"] and {**own, "seed": 0} == {**victim, "seed": 0}  # same inputs, own seed
    load = {role: load_or_train_extractor(data, torch.device("cpu"), recipe="quick", overrides={"epochs": 1},
                                          results_root=str(runs["results"]), role=role)[0].state_dict()
            for role in ("victim", "attacker")}
    features = [k for k in load["victim"] if not k.startswith("head.") and k.endswith("weight")]
    assert features and any(not torch.equal(load["victim"][k], load["attacker"][k]) for k in features)
    # both were trained by the runs (cached), and the victim froze its own
    assert len(list((runs["results"] / "extractors").glob("*.safetensors"))) == 2


def test_head_bn_train_moves_the_frozen_extractors_statistics_and_eval_does_not(runs):
    _, before, after = runs["gray"]  # the default: train
    assert before and any(not torch.equal(before[k], after[k]) for k in before)
    _, before, after = runs["white"]  # eval
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_threat_and_head_bn_are_recorded_for_transfer_runs_only(tiny, runs):
    path, data = tiny
    assert {k: runs["gray"][0]["config"][k] for k in ("threat", "head_bn")} == {"threat": "gray", "head_bn": "train"}
    assert {k: runs["white"][0]["config"][k] for k in ("threat", "head_bn")} == {"threat": "white", "head_bn": "eval"}
    assert runs["gray"][0]["config"]["poison"]["params"]["threat"] == "gray"
    clean = run_config(DefendSpec(dataset=path, recipe="quick"), data, 0)
    scratch_spec = spec_of(path, attack_params={"iterations": 1, "restarts": 1}, attack="gm")
    scratch = run_config(scratch_spec, data, 0, plan_of(scratch_spec, data))
    for config in (clean, scratch):
        assert "threat" not in config and "head_bn" not in config
    assert "threat" not in plan_of(scratch_spec, data).spec.params or \
        plan_of(scratch_spec, data).spec.params["threat"] is None


def test_threat_and_head_bn_are_refused_outside_transfer(cli, tiny, tmp_path):
    path, _ = tiny
    for flag, value in (("--threat", "white"), ("--head-bn", "eval")):
        code, _, err = cli("defend", "--dataset", path, "--attack", "gm", "--scenario", "scratch", flag, value,
                           "--results", tmp_path / "r")
        assert code == 2 and "applies to the transfer scenario" in err
    code, _, err = cli("defend", "--dataset", path, "--attack", "bp", "--threat", "black", "--results", tmp_path / "r")
    assert code == 2 and "gray" in err


def test_report_keeps_gray_and_white_runs_apart(runs):
    records = [runs["gray"][0], runs["white"][0]]
    table = tables.build("3", records, tables.Options(trials=1))
    text = tables.render(table, "md")
    assert "transfer: gray-box, head BN train" in text and "transfer: white-box, head BN eval" in text
    assert text.count("1/1") + text.count("0/1") == 2  # one run a block, never pooled


def test_bp_and_fc_take_the_papers_iterations_under_the_paper_recipe_and_250_on_the_cpu_recipes(tiny):
    for attack, paper in (("bp", 4000), ("fc", 1000)):
        cls = ATTACKS.get(attack)
        assert cls("cifar10", surrogate_recipe="paper").params["iterations"] == paper
        assert cls("mnist", surrogate_recipe="paper").params["iterations"] == paper
        for recipe in ("quick", "forest"):
            assert cls("mnist", surrogate_recipe=recipe).params["iterations"] == 250
        assert cls("cifar10", surrogate_recipe="paper", iterations=7).params["iterations"] == 7  # given: kept
    path, data = tiny
    given = {"attack_params": {"restarts": 1}}
    assert plan_of(spec_of(path, recipe="paper", **given), data).spec.params["iterations"] == 4000
    assert plan_of(spec_of(path, recipe="quick", **given), data).spec.params["iterations"] == 250
    assert plan_of(spec_of(path, recipe=None, **given), data).spec.params["iterations"] == 250  # forest, MNIST


def test_table3_shows_wilson_intervals_by_default(runs, cli):
    records = [runs["gray"][0]]
    default = tables.render(tables.build("3", records, tables.Options(trials=1)), "md")
    assert "1/1 [21–100%]" in default or "0/1 [0–79%]" in default
    off = tables.render(tables.build("3", records, tables.Options(trials=1, wilson=False)), "md")
    assert "%]" not in off
    code, out, _ = cli("report", "--results", runs["results"], "--table", "3", "--trials", "1")
    assert code == 0 and ("[21–100%]" in out or "[0–79%]" in out)
    code, out, _ = cli("report", "--results", runs["results"], "--table", "3", "--trials", "1", "--no-wilson")
    assert code == 0 and "%]" not in out


def test_a_transfer_record_names_the_extractor_the_poisons_were_crafted_on_and_the_victims(runs):
    """Issue 63: from the record alone, the model each side used. Gray box: two extractors, different ids and
    weights, each on disk under its id; white box: the victim's own extractor named twice."""
    for threat, same in (("gray", False), ("white", True)):
        record = runs[threat][0]
        inputs = record["inputs"]
        (poisons,) = inputs["poisons"]
        attacker, victim = poisons["crafted_on"], inputs["victim"]
        assert attacker["kind"] == victim["kind"] == "extractors" and poisons["threat"] == threat
        assert (attacker["id"] == victim["id"]) is same
        assert (attacker["weights_sha256"] == victim["weights_sha256"]) is same
        for ref in (attacker, victim):
            assert (runs["results"] / "extractors" / f"{ref['id']}.safetensors").is_file()
        assert poisons["poison_id"] == record["config"]["poison"]["poison_id"]
        assert poisons["tensors_sha256"] == record["poison_tensors"]["bp"]
        assert inputs["dataset"]["fingerprint"] == record["config"]["dataset_fingerprint"]
        assert victim["head_seed"] == record["config"]["seed"]
