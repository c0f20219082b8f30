"""The Table II untargeted plan: disjoint seeded rows, exact ⌊ρn⌋ split equally, cheap planning, apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poisonbench.core.errors import PoisonbenchError
from poisonbench.data import load_dataset
from poisonbench.experiment.scenarios import UNTARGETED_ATTACKS, plan_untargeted, split_counts
from poisonbench.experiment.scenarios.untargeted import check_poison_ratio

from .conftest import write_npz


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_dataset(str(write_npz(tmp_path_factory.mktemp("scen"), n=250)))


@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.37, 0.6, 1.0])
def test_counts_disjoint_and_deterministic(tiny, ratio, tmp_path):
    n = len(tiny.train)
    plan = plan_untargeted(tiny, ratio, None, seed=3, results_root=tmp_path)
    k = int(np.floor(ratio * n + 1e-9))
    assert plan.attacks == list(UNTARGETED_ATTACKS)
    counts = [len(plan.assignment[a]) for a in plan.attacks]
    assert sum(counts) == k and counts == split_counts(k, 4) and max(counts) - min(counts) <= 1
    assert plan.config["counts"] == dict(zip(plan.attacks, counts, strict=True))
    rows = torch.cat([plan.assignment[a] for a in plan.attacks])
    assert len(torch.unique(rows)) == k  # disjoint
    mask = plan.mask(n)
    assert mask.sum().item() == k and mask[rows].all()
    again = plan_untargeted(tiny, ratio, None, seed=3, results_root=tmp_path)
    assert again.config == plan.config
    assert all(torch.equal(again.assignment[a], plan.assignment[a]) for a in plan.attacks)
    assert not (tmp_path / "poisons").exists() and not (tmp_path / "surrogates").exists()  # planning never crafts


def test_config_fields_and_seed_dependence(tiny):
    a = plan_untargeted(tiny, 0.6, ["pgd", "durp"], seed=0)
    b = plan_untargeted(tiny, 0.6, ["pgd", "durp"], seed=1)
    for key in ("kind", "ratio", "attacks", "poison_ids", "counts", "indices_fingerprint", "label"):
        assert key in a.config
    assert a.config["kind"] == "untargeted" and a.config["attacks"] == ["pgd", "durp"]
    assert a.config["label"] == "untargeted ρ=0.60 pgd+durp"
    assert a.config["poison_ids"] == b.config["poison_ids"]  # crafted once, shared by all trials
    assert a.config["indices_fingerprint"] != b.config["indices_fingerprint"]


def test_poisoned_rows_are_not_the_engines_first_epoch_order(tiny):
    """The rows are drawn from their own stream: drawn from the trial seed itself they were exactly the first
    ⌊ρn⌋ rows of the engine's epoch-1 order (the same randperm(n) on a CPU generator), so epoch 1 trained on
    every poisoned row first, in blocks by attack."""
    n = len(tiny.train)
    for seed in (0, 3):
        plan = plan_untargeted(tiny, 0.6, None, seed=seed)
        k = plan.config["poisoned"]
        first_epoch = torch.randperm(n, generator=torch.Generator().manual_seed(seed))  # training.py's order
        poisoned_first = plan.mask(n)[first_epoch[:k]].float().mean().item()
        assert 0.45 < poisoned_first < 0.75  # about ρ, not 1.0
        assert plan.config["row_stream"] == "untargeted-rows"


def test_split_counts_remainder_goes_first():
    assert split_counts(10, 4) == [3, 3, 2, 2]
    assert split_counts(3, 4) == [1, 1, 1, 0]


def test_bad_plans(tiny):
    for ratio in (1.2, -0.1, float("nan")):
        with pytest.raises(PoisonbenchError, match="poison ratio must be in"):
            check_poison_ratio(ratio)
    with pytest.raises(PoisonbenchError, match="unknown attack 'x'"):
        plan_untargeted(tiny, 0.5, ["x"])
    with pytest.raises(PoisonbenchError, match="twice"):
        plan_untargeted(tiny, 0.5, ["durp", "durp"])


def test_apply_crafts_once_and_poisons_only_assigned_rows(tiny, tmp_path):
    from poisonbench import poisons

    x = tiny.train.x.float() / 255
    calls = []

    class Rec:
        def start(self, description, epochs):
            calls.append(("start", description))

        def batch(self, epoch, step, steps):
            calls.append(("batch", step, steps))

        def epoch(self, epoch, row):
            pass

        def stop(self):
            calls.append(("stop",))

    for seed in (0, 1):
        plan = plan_untargeted(tiny, 0.5, ["durp"], seed=seed, results_root=tmp_path)
        out = plan.apply(x.clone(), results_root=tmp_path, device=torch.device("cpu"), reporter=Rec())
        mask = plan.mask(len(x))
        changed = (out != x).flatten(1).any(1)
        assert not changed[~mask].any() and changed[mask].float().mean() > 0.9
        assert out.min() >= 0 and out.max() <= 1
        assert (out - x).abs().max() <= plan.specs["durp"].eps + 1e-6
        rows = plan.assignment["durp"]  # each row gets its own row of the PoisonSet, crafted over the whole split
        poison, _ = poisons.craft(plan.specs["durp"], tiny, tmp_path, torch.device("cpu"))
        assert torch.equal(out[rows], (x[rows] + poison.rows_for(rows)).clamp(0, 1))
    assert len(poisons.list_ids(tmp_path)) == 1  # two trials, one craft
    assert calls[0][0] == "start" and calls[-1] == ("stop",)
    (poison_id,) = poisons.list_ids(tmp_path)
    manifest = poisons.read_manifest(tmp_path, poison_id)
    assert plan.tensor_sha256 == {"durp": manifest["tensor_sha256"]}  # the tensors used, named in the record
