"""The targeted scenarios of Table III (docs/engine.md, "Targeted scenarios"): the per-trial targeted context, `scratch`
and `transfer` (a frozen, cached, shared pre-trained extractor with a fresh head on the transfer set), attack success in
the record, setup files, and bad input refused in one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from poisonbench.attacks import ATTACKS
from poisonbench.attacks.targets import base_pool, draw_target, setup_target
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.engine.pretrained import extractor_id, transfer_split
from poisonbench.experiment.defend import defend
from poisonbench.experiment.spec import DefendSpec

from .conftest import files_under, write_npz
from .toys import ToyTargeted, registered


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("targeted")
    return load_dataset(str(write_npz(root, n=400))), root


@pytest.fixture
def toy():
    with registered(ATTACKS, "toy-targeted", ToyTargeted):
        yield "toy-targeted"


def test_each_trial_draws_its_own_target_from_its_seed(tiny):
    data, _ = tiny
    drawn = [draw_target(data, s, "scratch", 0.02) for s in range(6)]
    assert draw_target(data, 3, "scratch", 0.02) == drawn[3]  # reproducible
    assert len({t.index for t in drawn}) > 1  # trials differ
    k = int(0.02 * len(data.train))
    for t in drawn:
        assert t.true_class == int(data.test.y[t.index]) and t.intended_class != t.true_class
        assert len(t.rows) == k and len(set(t.rows)) == k
        assert (data.train.y[list(t.rows)] == t.intended_class).all()  # clean-label bases of the intended class
    fixed = draw_target(data, 0, "scratch", 0.02, index=5, intended=(int(data.test.y[5]) + 1) % 4)
    assert fixed.index == 5 and fixed.intended_class == (int(data.test.y[5]) + 1) % 4


def test_transfer_bases_come_from_the_transfer_set_which_is_a_stratified_tenth(tiny):
    data, _ = tiny
    pretrain, transfer = transfer_split(data)
    assert len(set(pretrain.tolist()) & set(transfer.tolist())) == 0
    assert len(pretrain) + len(transfer) == len(data.train)
    assert abs(len(transfer) - 0.1 * len(data.train)) <= 1
    counts = torch.bincount(data.train.y[transfer], minlength=data.num_classes)
    whole = torch.bincount(data.train.y, minlength=data.num_classes)
    assert (counts - 0.1 * whole).abs().max() <= 1  # stratified
    t = draw_target(data, 0, "transfer", 0.01)
    assert set(t.rows) <= set(transfer.tolist())
    assert set(t.rows) <= set(base_pool(data, t.intended_class, "transfer").tolist())
    with pytest.raises(PoisonbenchError, match=r"budget 0.05 asks for \d+ poisons, but the intended class \d has only "
                                               r"\d+ images in the transfer set"):
        draw_target(data, 0, "transfer", 0.05)
    capped = draw_target(data, 0, "transfer", 0.05, cap=True)  # `defend`'s default budget: at most the whole share
    assert set(capped.rows) == set(base_pool(data, capped.intended_class, "transfer").tolist())


def test_scratch_and_transfer_runs_record_the_attack_success(tiny, toy, tmp_path):
    data, root = tiny
    results = tmp_path / "results"
    records = {}
    for scenario in ("scratch", "transfer"):
        spec = DefendSpec(dataset=str(root / "tiny.npz"), recipe="quick", recipe_overrides={"epochs": 2},
                          scenario=scenario, attack=toy, budget=0.02, trials=2, results=str(results))
        records[scenario] = [o.record for o in defend(spec)]
    for scenario, recs in records.items():
        assert [r["config"]["scenario"] for r in recs] == [scenario] * 2
        for r in recs:
            p, m = r["config"]["poison"], r["metrics"]
            target = draw_target(data, r["config"]["seed"], scenario, 0.02)
            assert (p["kind"], p["attack"], p["target_index"], p["intended_class"]) == \
                ("targeted", toy, target.index, target.intended_class)
            assert p["target_class"] == int(data.test.y[p["target_index"]])
            assert m["target_prediction"] == max(range(4), key=lambda c: m["target_probs"][c])
            assert m["attack_success"] == (m["target_prediction"] == p["intended_class"])
            assert abs(sum(m["target_probs"]) - 1) < 1e-4
            assert r["defense"] is not None and r["poison_tensors"][toy]
    # the transfer victim trains on the transfer set only (its poisons included)
    assert len(records["transfer"][0]["history"]) == 2


def test_transfer_freezes_one_cached_extractor_shared_by_trials_and_trains_only_the_head(tiny, toy, tmp_path,
                                                                                        train_calls):
    data, root = tiny
    results = tmp_path / "results"
    spec = DefendSpec(dataset=str(root / "tiny.npz"), recipe="quick", recipe_overrides={"epochs": 2},
                      scenario="transfer", attack=toy, budget=0.02, trials=2, results=str(results), head_bn="eval")
    defend(spec)  # --head-bn eval: BatchNorm frozen too (the default, train, moves it: tests/test_threat_model.py)
    extractors = list((results / "extractors").glob("*.safetensors"))
    assert [p.stem for p in extractors] == [extractor_id(data, None, "quick", {"epochs": 2})]  # one, shared
    from safetensors.torch import load_file

    saved = load_file(extractors[0])
    _, transfer = transfer_split(data)
    for args, _kwargs, _result in train_calls:
        model, train_x = args[0], args[1]
        assert len(train_x) == len(transfer)  # the transfer set (its poisons are in it)
        state = model.state_dict()
        for name, value in saved.items():  # the extractor is unchanged by training, BN statistics included
            if not name.startswith("head."):
                assert torch.equal(state[name].cpu(), value), name
        assert any(not torch.equal(state[n].cpu(), saved[n]) for n in saved if n.startswith("head."))


def write_setups(path: Path, data, setups: list[dict]) -> Path:
    path.write_text(json.dumps({"source": "test", "setups": setups}))
    return path


def a_setup(data, intended_offset=1, k=3):
    """A setup in the dataset's own index space: test image 0, k bases of another class."""
    index = int(data.test.indices[0])
    true = int(data.test.y[0])
    base_class = (true + intended_offset) % data.num_classes
    bases = [int(data.train.indices[r]) for r in (data.train.y == base_class).nonzero().flatten()[:k]]
    return {"target_class": true, "target_index": index, "base_class": base_class, "base_indices": bases}


def test_a_setup_file_fixes_target_intended_class_and_bases(tiny, tmp_path):
    data, _ = tiny
    s = a_setup(data)
    target = setup_target(data, write_setups(tmp_path / "s.json", data, [s]), 0)
    assert target.index == 0 and target.true_class == s["target_class"] and target.intended_class == s["base_class"]
    assert sorted(int(data.train.indices[r]) for r in target.rows) == sorted(s["base_indices"])


def test_the_benchmark_setups_are_read_in_their_schema():
    """The first setups of the "Just How Toxic" files (PB's `poison_setups/`, aks2203/poisoning-benchmark, MIT;
    excerpts in tests/data)."""
    from poisonbench.attacks.targets import read_setups

    data = Path(__file__).parent / "data"
    scratch = read_setups(data / "cifar10_from_scratch_excerpt.json")
    assert len(scratch[0]["base_indices"]) == 500
    assert (scratch[0]["target_index"], scratch[0]["target_class"], scratch[0]["base_class"]) == (7762, 7, 3)
    assert scratch[0]["base_indices"][:5] == [2386, 37215, 23942, 15836, 14070]  # PB's from-scratch setup 0
    transfer = read_setups(data / "cifar10_transfer_learning_excerpt.json")
    assert len(transfer[1]["base_indices"]) == 25 and transfer[1]["target_index"] == 4267


def bad_setup(data, what):
    s = a_setup(data)
    if what == "out-of-range base":
        s["base_indices"] = [10 ** 7]
    elif what == "wrong-class base":
        s["base_indices"] = s["base_indices"][:1] + [int(data.train.indices[(data.train.y == s["target_class"])
                                                                           .nonzero()[0, 0]])]
    elif what == "out-of-range target":
        s["target_index"] = 10 ** 7
    return s


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "999999", "--intended", "1"], "target index 999999 is outside the test split"),
    (["--target", "0", "--intended", "OWN"], "intended class OWN must be a class in [0, 4) other than the target's"),
    (["--eps", "0"], "eps must be in (0, 1) (L∞, pixel units), got 0"),
    (["--eps", "1"], "eps must be in (0, 1) (L∞, pixel units), got 1"),
    (["--budget", "0.9"], "budget 0.9 asks for"),
    (["--setup", "SETUP:out-of-range base"], "base index 10000000 is not in this dataset's train split"),
    (["--setup", "SETUP:wrong-class base"], "is not of the base class"),
    (["--setup", "SETUP:out-of-range target"], "target_index 10000000 is not in this dataset's test split"),
])
@pytest.mark.parametrize("command", ["craft", "defend"])
def test_bad_targeted_input_is_one_line_exit_2_and_nothing_written(cli, tiny, toy, tmp_path, command, args, message):
    data, root = tiny
    own = str(int(data.test.y[0]))
    message = message.replace("OWN", own)
    args = [a.replace("OWN", own) for a in args]
    if args[0] == "--setup":
        args = ["--setup", str(write_setups(tmp_path / "bad.json", data, [bad_setup(data, args[1].split(":")[1])]))]
    results = tmp_path / "results"
    common = ["--dataset", root / "tiny.npz", "--attack", toy, "--results", results]
    extra = ["--recipe", "quick", "--epochs", "1"] if command == "defend" else []
    code, out, err = cli(command, *common, *extra, *args)
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert files_under(results) == []


def test_transfer_with_a_pre_training_split_too_small_is_refused(cli, tmp_path, toy):
    small = write_npz(tmp_path, n=40, name="small.npz")
    results = tmp_path / "results"
    code, _, err = cli("defend", "--dataset", small, "--attack", toy, "--scenario", "transfer", "--budget", "0.05",
                       "--recipe", "quick", "--results", results)
    assert code == 2 and "the pre-training split of small.npz is too small" in err, err
    assert files_under(results) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--attack", "pgd"], "--attack 'pgd' is untargeted"),
    (["--poison-ratio", "0.5", "--eps", "0.1"], "--eps belongs to the targeted scenarios"),
    (["--scenario", "scratch"], "scenario 'scratch' needs --attack NAME"),
    (["--attack", "ATTACK", "--poison-ratio", "0.5"], "scenario 'scratch' is targeted: it takes --attack"),
    (["--attack", "ATTACK", "--attack-params", "nope=1"], "--attack-params: 'nope=1' is not NAME=VALUE"),
])
def test_defend_refuses_mixed_up_targeted_options(cli, tiny, toy, tmp_path, args, message):
    _, root = tiny
    args = [toy if a == "ATTACK" else a for a in args]
    code, _, err = cli("defend", "--dataset", root / "tiny.npz", "--results", tmp_path / "r", *args)
    assert code == 2 and message in err, err


def test_the_cifar10_resnet18_paper_path_runs_end_to_end_on_tiny_cifar_files(cli, tmp_path, monkeypatch):
    """What a GPU user runs (`--dataset cifar10`, ResNet-18, GM from scratch and BP in transfer, HINT), on tiny
    files in CIFAR-10's own format; only the epochs, the attack's iterations and the held-out validation rows are
    cut (30 of CIFAR-10's 1,000: ResNet-18's evaluations of 1,000 rows on a CPU took half of this test's 4 minutes).
    120 training rows, fewer than a batch of the quick recipe's 128; its five trainings of one epoch each (the
    surrogate, two extractors, two victims) are most of the test's time."""
    from dataclasses import replace

    from poisonbench.data.catalog import DATASETS

    from .conftest import write_cifar_dir

    monkeypatch.setitem(DATASETS._entries, "cifar10", replace(DATASETS.get("cifar10"), val_size=30))
    write_cifar_dir(tmp_path / "cifar-10-batches-py", per_batch=30, n_test=20)  # 120 train rows
    results = tmp_path / "results"
    common = ["--dataset", "cifar10", "--data-dir", tmp_path, "--recipe", "quick", "--epochs", "1", "--results",
              results, "--json"]
    for attack, method in (("gm", "none"), ("bp", "hint")):
        code, out, err = cli("defend", *common, "--attack", attack, "--method", method,
                             "--attack-params", "restarts=1,iterations=2")
        assert code == 0, err
        line = json.loads(out.strip().splitlines()[-1])
        assert line["attack"] == attack and isinstance(line["attack_success"], bool)
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*.json")]
    assert sorted(r["config"]["scenario"] for r in records) == ["scratch", "transfer"]
    assert all(r["config"]["model"] == "resnet18" for r in records)
    # gray-box (the default): the victim's extractor and the attacker's own, pre-trained with another seed
    assert len(list((results / "extractors").glob("*.safetensors"))) == 2
    code, out, _ = cli("report", "--table", "3", "--paper", "--format", "json", "--results", results)
    assert code == 0


def test_validate_checks_a_targeted_poison_sets_target_and_bases(tiny, toy, tmp_path):
    from poisonbench import poisons

    data, _ = tiny
    target = draw_target(data, 1, "scratch", 0.02)
    spec = poisons.craft_spec(data, toy, budget=0.02, seed=1, target=target)
    poisons.craft(spec, data, tmp_path, torch.device("cpu"))
    checks = {name: (ok, detail) for name, ok, detail in poisons.validate(tmp_path, spec.poison_id, data)}
    assert all(ok for ok, _ in checks.values()), checks
    assert f"every base of the intended class {target.intended_class}: True" in checks["target"][1]


@pytest.mark.parametrize("scenario", ["scratch", "transfer"])
def test_every_registered_defense_trains_in_both_targeted_scenarios(tiny, toy, tmp_path, scenario):
    """Registry-driven: a defense added later is run here too, from scratch and on the frozen extractor."""
    from poisonbench.defenses import DEFENSES

    _, root = tiny
    for method in DEFENSES.names():
        spec = DefendSpec(dataset=str(root / "tiny.npz"), recipe="quick", recipe_overrides={"epochs": 1},
                          scenario=scenario, attack=toy, budget=0.02, method=method, results=str(tmp_path))
        (outcome,) = defend(spec)
        r = outcome.record
        assert r["config"]["defense"]["method"] == method and r["config"]["scenario"] == scenario
        assert isinstance(r["metrics"]["attack_success"], bool)


def test_each_targeted_attack_declares_one_default_victim():
    """`defend --attack` infers the scenario from `default_scenario`; `craft --victim` defaults to the same."""
    from poisonbench.experiment.scenarios import attack_scenario, targeted_attacks

    assert set(targeted_attacks()) >= {"gm", "bp", "fc"}
    assert {a: attack_scenario(a) for a in ("gm", "bp", "fc")} == {"gm": "scratch", "bp": "transfer", "fc": "transfer"}
    for name in targeted_attacks():
        cls = ATTACKS.get(name)
        assert cls("mnist").params["scenario"] == cls.default_scenario == attack_scenario(name)
