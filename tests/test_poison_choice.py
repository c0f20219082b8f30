"""DeepConfuse from an imported generator (DC's own MNIST weights) and `defend --poisons` / `report --poisons`."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from poisonbench import poisons
from poisonbench.attacks.deepconfuse import import_generator
from poisonbench.attacks.deepconfuse_nets import MNISTAutoencoder
from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.experiment.scenarios import parse_poison_sets, plan_untargeted
from poisonbench.report.tables import frame, missing_commands

from .conftest import write_npz


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("choice")
    return load_dataset(str(write_npz(root, n=250))), root


def _official_weights(path, seed=5):
    """A state dict saved the way DC's train.py saves its generator (`torch.save(atkmodel.state_dict(), ...)`)."""
    torch.manual_seed(seed)
    generator = MNISTAutoencoder(1)
    for m in generator.modules():  # non-trivial BatchNorm statistics, as a trained generator has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    torch.save(generator.state_dict(), path)
    return generator.eval()


def test_an_imported_generator_makes_the_poisons_without_training(tiny, tmp_path, monkeypatch):
    data, _ = tiny
    generator = _official_weights(tmp_path / "atkmnist_best.pt")
    value = import_generator(tmp_path / "atkmnist_best.pt", data.family, tmp_path / "r")
    assert value.startswith("sha256:") and len(value) == 7 + 64
    monkeypatch.setattr("poisonbench.attacks.deepconfuse.shuffled_batches",
                        lambda *a, **k: pytest.fail("an imported generator must not be trained"))
    spec = poisons.craft_spec(data, "deepconfuse", budget=1.0, generator=value)
    poison, cached = poisons.craft(spec, data, tmp_path / "r", torch.device("cpu"))
    assert not cached
    x = data.train.x.float().div(255)
    with torch.no_grad():  # DC generate_adv_data.py: clamp(x + ε·G(x), 0, 1), G in eval mode
        expected = (x + spec.eps * generator(x)).clamp(0, 1) - x
    torch.testing.assert_close(poison.delta, expected, rtol=0, atol=1e-6)
    assert 0 < poison.delta.abs().max() <= spec.eps + 1e-6
    assert poison.manifest["attack_info"] == {"generator": value, "trained": False}
    assert spec.params["outer_epochs"] is None  # training options are not part of an imported generator's id

    # the id names the weights, not where the file was: a copy elsewhere imports to the same option value
    shutil.copy(tmp_path / "atkmnist_best.pt", tmp_path / "copy.pth")
    assert import_generator(tmp_path / "copy.pth", data.family, tmp_path / "r") == value
    other = tmp_path / "other.pt"
    _official_weights(other, seed=6)
    assert import_generator(other, data.family, tmp_path / "r") != value


def test_generator_import_refuses_what_does_not_fit(tiny, tmp_path):
    data, _ = tiny
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(PoisonbenchError, match="does not fit DeepConfuse's mnist generator"):
        import_generator(tmp_path / "linear.pt", data.family, tmp_path / "r")
    torch.save({"not": "tensors", "fn": print}, tmp_path / "pickle.pt")
    with pytest.raises(PoisonbenchError, match="not a state dict of tensors"):
        import_generator(tmp_path / "pickle.pt", data.family, tmp_path / "r")
    with pytest.raises(PoisonbenchError, match="cannot read generator weights"):
        import_generator(tmp_path / "absent.pt", data.family, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    with pytest.raises(PoisonbenchError, match="'train' or 'sha256:"):
        poisons.craft_spec(data, "deepconfuse", generator="weights.pt")
    with pytest.raises(PoisonbenchError, match="--outer-epochs: training options"):
        poisons.craft_spec(data, "deepconfuse", generator="sha256:" + "0" * 64, outer_epochs=3)
    spec = poisons.craft_spec(data, "deepconfuse", generator="sha256:" + "0" * 64)
    with pytest.raises(PoisonbenchError, match="is not in .*generators; import it"):
        poisons.craft(spec, data, tmp_path / "r2", torch.device("cpu"))
    from poisonbench.attacks.deepconfuse import generator_path

    damaged = generator_path(tmp_path / "r2", data.family, "0" * 64)
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not safetensors")
    with pytest.raises(PoisonbenchError, match="not a readable safetensors file .*import the weights again"):
        poisons.craft(spec, data, tmp_path / "r2", torch.device("cpu"))


def test_craft_cli_generator_weights(tiny, tmp_path, cli):
    data_path = tiny[1] / "tiny.npz"
    _official_weights(tmp_path / "atk.pt")
    results = tmp_path / "r"
    code, out, err = cli("craft", "--attack", "pgd", "--dataset", data_path, "--generator-weights",
                         tmp_path / "atk.pt", "--results", results)
    assert code == 2 and "option --generator-weights does not apply to attack 'pgd'" in err and not results.exists()
    code, out, err = cli("craft", "--attack", "deepconfuse", "--dataset", data_path, "--generator-weights",
                         tmp_path / "atk.pt", "--outer-epochs", "2", "--results", results)
    assert code == 2 and "training options" in err and not results.exists()  # checked before the import
    code, out, err = cli("craft", "--attack", "deepconfuse", "--dataset", data_path, "--generator-weights",
                         tmp_path / "atk.pt", "--results", results, "--json")
    assert code == 0, err
    first = json.loads(out)
    code, out, _ = cli("craft", "--attack", "deepconfuse", "--dataset", data_path, "--generator-weights",
                       tmp_path / "atk.pt", "--results", results, "--json")
    assert json.loads(out)["status"] == "cached" and json.loads(out)["poison_id"] == first["poison_id"]


def test_poisons_choose_an_existing_poison_set_for_the_mix(tiny, tmp_path):
    data, _ = tiny
    chosen = poisons.craft_spec(data, "durp", budget=1.0, seed=7)  # DURP with another crafting seed
    poisons.craft(chosen, data, tmp_path, torch.device("cpu"))
    default = plan_untargeted(data, 0.6, ["pgd", "durp"], seed=1, results_root=tmp_path)
    plan = plan_untargeted(data, 0.6, ["pgd", "durp"], seed=1, results_root=tmp_path,
                           poison_sets={"durp": chosen.poison_id})
    assert plan.specs["durp"] == chosen and plan.specs["pgd"] == default.specs["pgd"]
    assert plan.config["poison_ids"]["durp"] == chosen.poison_id
    assert plan.config["poison_sets"] == {"durp": chosen.poison_id}
    assert {a: r.tolist() for a, r in plan.assignment.items()} == {a: r.tolist() for a, r in
                                                                   default.assignment.items()}
    x = data.train.x.float() / 255
    out = plan.apply(x.clone(), results_root=tmp_path, device=torch.device("cpu"))
    rows = plan.assignment["durp"]
    poison = poisons.load(tmp_path, chosen.poison_id, data)
    torch.testing.assert_close(out[rows], (x[rows] + poison.rows_for(rows)).clamp(0, 1))
    # naming the default artifact changes nothing: same config, so the same run id as a plain run
    same = plan_untargeted(data, 0.6, ["pgd", "durp"], seed=1, results_root=tmp_path,
                           poison_sets={"pgd": default.specs["pgd"].poison_id})
    assert same.config == default.config


def test_bad_poison_choices(tiny, tmp_path):
    data, _ = tiny
    partial = poisons.craft_spec(data, "durp", budget=0.5)
    poisons.craft(partial, data, tmp_path, torch.device("cpu"))
    full = poisons.craft_spec(data, "durp", budget=1.0, seed=3)
    poisons.craft(full, data, tmp_path, torch.device("cpu"))
    cases = [({"durp": partial.poison_id}, ["durp"], "--budget 1"),
             ({"pgd": full.poison_id}, ["pgd", "durp"], "crafted by 'durp'"),
             ({"dap": full.poison_id}, ["pgd", "durp"], "not in the mix"),
             ({"durp": "0123456789abcdef"}, ["durp"], "no poison set")]
    for chosen, attacks, needle in cases:
        with pytest.raises(PoisonbenchError, match=needle):
            plan_untargeted(data, 0.6, attacks, results_root=tmp_path, poison_sets=chosen)
    for text, needle in [("durp", "ATTACK=POISON_ID"), ("durp=../../x", "not a poison id"),
                         ("nope=0123456789abcdef", "nope"), ("durp=0123456789abcdef,durp=0123456789abcdee", "twice")]:
        with pytest.raises(PoisonbenchError, match=needle):
            parse_poison_sets(text)


def test_report_keeps_default_and_chosen_poison_sets_apart(tiny, tmp_path, cli):
    data_path = tiny[1] / "tiny.npz"
    results = tmp_path / "r"
    code, out, err = cli("craft", "--attack", "durp", "--dataset", data_path, "--seed", "9", "--results", results,
                         "--json")
    assert code == 0, err
    pid = json.loads(out)["poison_id"]
    common = ["defend", "--dataset", data_path, "--attacks", "durp", "--poison-ratio", "1", "--epochs", "1",
              "--recipe", "quick", "--results", results, "--json"]
    code, out, err = cli(*common)
    assert code == 0, err
    default_run = json.loads(out)["run_id"]
    code, out, err = cli(*common, "--poisons", f"durp={pid}")
    assert code == 0, err
    chosen_run = json.loads(out)["run_id"]
    assert chosen_run != default_run
    code, out, err = cli("defend", "--dataset", data_path, "--poisons", f"durp={pid}", "--results", results)
    assert code == 2 and "--poison-ratio > 0" in err

    from poisonbench.experiment.records import RunStore

    df = frame(RunStore(results).all()).set_index("run_id")
    assert df.loc[chosen_run, "poison_sets"] == f"durp={pid}" and df.loc[default_run, "poison_sets"] == ""
    table = ["report", "--table", "2", "--dataset", "tiny.npz", "--attacks", "durp", "--format", "json",
             "--results", results]
    for extra in [(), ("--poisons", f"durp={pid}")]:
        code, out, err = cli(*table, *extra)
        assert code == 0, err
        assert "other PoisonSets" not in out + err  # the two choices are separate tables, not generations
    code, out_default, _ = cli(*table)
    code, out_chosen, _ = cli(*table, "--poisons", f"durp={pid}")
    assert out_default != out_chosen
    assert "the untargeted attack (DURP)" in out_default and "PoisonSets chosen" not in out_default
    assert f"PoisonSets chosen with --poisons: durp={pid}" in out_chosen
    code, _, err = cli(*table, "--poisons", f"pgd={pid}")  # pgd is not in the mix (--attacks durp)
    assert code == 2 and "--poisons names 'pgd', which is not in the mix (durp)" in err
    # naming the default PoisonSet selects the runs on it (as `defend` treats it: no choice at all)
    default_id = frame(RunStore(results).all()).set_index("run_id").loc[default_run, "poison_ids"]
    code, out_named, _ = cli(*table, "--poisons", default_id)
    assert code == 0 and out_named == out_default
    code, _, err = cli("report", "--table", "2", "--missing", "--poisons", "any", "--results", results)
    assert code == 2 and "--poisons any pools them" in err
    commands, _ = missing_commands("2", RunStore(results).all(), _opts(), dataset="tiny.npz", mix="durp",
                                   poison_sets=f"durp={pid}")
    poisoned = [c for c in commands if "--poison-ratio 0.0 " not in c]
    assert poisoned and all(f"--attacks durp --poisons durp={pid}" in c for c in poisoned)
    code, out, err = cli("report", "--table", "2", "--missing", "--dataset", "tiny.npz", "--attacks", "durp",
                         "--poisons", f"durp={pid}", "--results", results)
    lines = out.splitlines()
    assert code == 0 and lines and all(line.endswith(f"--results {results}") for line in lines)
    assert all(f"--poisons durp={pid}" in line for line in lines if "--poison-ratio 0.0 " not in line)


def _opts():
    from poisonbench.report.tables import Options

    return Options(trials=2)


def test_default_poison_ids_never_change():
    """The mix's default PoisonSets on mnist-5k keep the ids the committed records name
    (experiments/records/mnist-5k.jsonl.xz): a new attack option must not re-key them, or every record on the mix
    would silently become another PoisonSet generation (this happened once, with `generator`). Changed
    deliberately once since: issue 54 gave the shared surrogate an attacker seed (poisonbench.core.seeds), which
    re-keyed PGD and DAP (before: ffd52a734466426e, 22bfd50320b30825)."""
    data = load_dataset("mnist-5k")
    ids = {a: poisons.craft_spec(data, a, budget=1.0, seed=0).poison_id for a in ("pgd", "dap", "durp", "deepconfuse")}
    assert ids == {"pgd": "8073c3a652ee3d7a", "dap": "9caa43a89a9d9928", "durp": "783294e0543ad293",
                   "deepconfuse": "360109fd2a5d15d0"}


# OPS's interior margin (issue 67: k − 1 of the default model's first convolution), EM (the MNIST family's cap on
# outer iterations is a CPU budget) and REM (the official schedule in both families since issue 67;
# `schedule="budget"` for the former MNIST one): docs/fidelity.md
EM_MNIST = {"granularity": "sample", "steps": 20, "step_fraction": 0.1, "train_batches": 10, "batch_size": 512,
            "lr": 0.1, "stop_error": 0.01, "max_iterations": 5, "class_portion": None, "model": "convnet"}
EM_CIFAR = {**EM_MNIST, "max_iterations": 20, "model": "resnet18"}
REM_MNIST = {"schedule": "official", "train_steps": 5000, "batch_size": 128, "lr": 0.1, "lr_decay_every": 2000,
             "u_steps": 10, "u_step_fraction": 0.2, "adv_radius": 4 / 255, "a_steps": 10, "a_step_fraction": 0.2,
             "samples": 5, "eot_augment": "none", "model": "convnet"}
REM_CIFAR = {**REM_MNIST, "eot_augment": "crop-flip", "model": "resnet18"}


def test_default_attack_parameters_never_change():
    """What the poison ids of both families hash (`params`), pinned: a changed or added default re-keys every
    PoisonSet, so it must be a deliberate, documented change of this test."""
    from poisonbench.attacks import ATTACKS

    expected = {
        "mnist": {"pgd": {"steps": 40, "step_size": 0.01, "random_start": True, "batch_size": 1000},
                  "dap": {"steps": 100, "step_fraction": 0.2, "random_start": False, "batch_size": 1000},
                  "durp": {}, "lsp": {"patch_size": 7, "classwise": False}, "ops": {"margin": 4}, "em": EM_MNIST,
                  "rem": REM_MNIST,
                  "deepconfuse": {"outer_epochs": 6, "inner_epochs": 1, "batch_size": 64, "gen_lr": 1e-3,
                                  "cls_lr": 0.01, "official_schedule": False}},
        "cifar10": {"pgd": {"steps": 10, "step_size": 2 / 255, "random_start": True, "batch_size": 500},
                    "dap": {"steps": 100, "step_fraction": 0.2, "random_start": False, "batch_size": 500},
                    "durp": {}, "lsp": {"patch_size": 8, "classwise": False}, "ops": {"margin": 2}, "em": EM_CIFAR,
                    "rem": REM_CIFAR,
                    "deepconfuse": {"outer_epochs": 2, "inner_epochs": 1, "batch_size": 256, "gen_lr": 1e-4,
                                    "cls_lr": 0.01, "official_schedule": False}},
    }
    # the targeted attacks: forest's brew in both families; the surrogate trained with the targeted runs' default
    # recipe (issue 54: forest's on the MNIST family, the paper's on CIFAR-10, both augmenting, so crafting does too)
    brew = {"iterations": 250, "restarts": 8, "lr": 0.1, "pbatch": 512, "augment": True,
            "lr_space": "forest"}  # issue 54: the step in forest's normalised space
    overrides = ("model", "epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "milestones",
                 "lr_decay", "augment")
    for family, recipe in (("mnist", "forest"), ("cifar10", "paper")):
        context = {"surrogate_recipe": recipe, **{f"surrogate_{k}": None for k in overrides},
                   "bases": "random"}  # issue 54: forest's random bases (nearest on request)
        # BP / FC: the paper's iteration counts (4,000 / 1,000) under the paper recipe, forest's 250 on the CPU ones;
        # transfer is gray-box by default (issue 54: the attacker's extractor is not the victim's)
        paper = recipe == "paper"
        expected[family].update({
            "gm": {"scenario": "scratch", "threat": None, **context, **brew, "ensemble": 1},
            "bp": {"scenario": "transfer", "threat": "gray", **context, "impl": "forest",
                   **brew, "iterations": 4000 if paper else 250},
            "fc": {"scenario": "transfer", "threat": "gray", **context, "impl": "forest",
                   **brew, "iterations": 1000 if paper else 250, "watermark": None}})
    for family in expected:  # the backdoors (issue 85): BackdoorBench's defaults in both families
        expected[family].update({
            "badnets": {"target_class": 0, "trigger_size": 3, "trigger_value": 1.0},
            "blend": {"target_class": 0, "alpha": 0.2, "pattern_seed": 0},
            "sig": {"target_class": 0, "delta": 40.0, "frequency": 6.0},
            "lc": {"target_class": 0, "amplitude": 1.0, "random_start": True,
                   **({"steps": 40, "step_size": 0.01, "batch_size": 1000} if family == "mnist" else
                      {"steps": 100, "step_size": 1.5 / 255, "batch_size": 500})},
            # Sleeper Agent (SA forest/options.py): the same in both families
            "sleeper-agent": {"target_class": 0, "source_class": 1, "patch_size": 8, "pattern_seed": 0,
                              "iterations": 250, "restarts": 1, "lr": 0.1, "pbatch": 512, "augment": True,
                              "retrain_iter": 50, "retrain_epochs": None, "surrogate_recipe": "forest"}})
    for family, attacks in expected.items():
        assert set(attacks) == set(ATTACKS.names()), family  # a new attack is pinned too
        for attack, params in attacks.items():
            assert ATTACKS.get(attack)(family).params == params, (family, attack)
