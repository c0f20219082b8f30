"""Registry-driven invariants of every attack (docs/engine.md, "Attacks") on tiny data."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save as st_save

from poisonbench.attacks import ATTACKS, deepconfuse, deepconfuse_nets
from poisonbench.attacks.base import EPS_TOLERANCE, AttackContext, Target, budget_count, select_indices
from poisonbench.attacks.surrogate import load_or_train_surrogate, surrogate_id, surrogate_path, surrogate_spec
from poisonbench.core.errors import PoisonbenchError, PoisonbenchWarning
from poisonbench.core.hashing import canonical_json
from poisonbench.data import load_dataset
from poisonbench.engine.models import build_model
from poisonbench.poisons import craft_spec

from .conftest import craft_killed_at_call, write_npz
from .toys import ToyTargeted, registered

EPS = 0.1
# keep the schedules tiny in tests (deepconfuse's generator; the targeted attacks' surrogate, steps and restarts)
FAST = {"deepconfuse": {"outer_epochs": 2}, "em": {"max_iterations": 2},
        "rem": {"schedule": "budget", "train_steps": 2, "u_steps": 2, "a_steps": 1},
        **{name: {"iterations": 2, "restarts": 2, "surrogate_epochs": 1} for name in ("gm", "bp", "fc")},
        "lc": {"steps": 3},
        "sleeper-agent": {"iterations": 2, "surrogate_recipe": "quick"}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    return load_dataset(str(write_npz(root))), root / "results"


TOYS = {"toy-targeted": ToyTargeted}  # a targeted attack, so the registry-driven tests show they accept one
REGISTRY_AND_TOYS = [*ATTACKS.names(), *TOYS]
# a targeted attack draws its rows from the intended class (a quarter of the rows); in transfer (bp, fc) from that
# class's share of the 10 % transfer set (4 of the tiny split's 160 train rows)
BUDGET = {"toy-targeted": 0.05, "gm": 0.05, "bp": 0.02, "fc": 0.02,
          # a clean-label backdoor draws from its target class (a quarter of the rows)
          "sig": 0.1, "lc": 0.1, "sleeper-agent": 0.1}
# options the tiny 16×16 split needs (LSP's default patch of 7 does not divide 16: a 4×4 grid of 4×4 patches)
TINY_PARAMS = {"lsp": {"patch_size": 4}}

# each norm's test ε (linf: EPS) and its default on the tiny MNIST-family split (1×16×16): the paper's 0.3, LSP's
# 6/255·√(C·H·W), OPS's one pixel
TEST_EPS = {"linf": EPS, "l2": 1.0, "l0": 1}
TINY_DEFAULT_EPS = {"linf": 0.3, "l2": 6 / 255 * 16, "l0": 1}


def eps_for(name):
    cls = ATTACKS.get(name)
    if getattr(cls, "backdoor", False):  # a backdoor's ε is its trigger's own bound (attacks.backdoor)
        return cls("mnist").trigger_eps((1, 16, 16))
    return TEST_EPS[cls.norm]


def row_sizes(delta, norm):
    """Each δ row's size in `norm`: max |δ|, ‖δ‖₂, or the pixel positions (H×W) where some channel changes."""
    if norm == "linf":
        return delta.abs().flatten(1).amax(1)
    if norm == "l2":
        return delta.flatten(1).norm(dim=1)
    assert norm == "l0"
    return (delta != 0).any(1).flatten(1).sum(1).float()


def within(sizes, eps, norm):
    return sizes.max().item() <= (eps if norm == "l0" else eps + EPS_TOLERANCE)


@pytest.fixture
def attack_name(request):
    """The parametrized attack name, with a throw-away attack registered for the test when it is one."""
    name = request.param
    if name in TOYS:
        with registered(ATTACKS, name, TOYS[name]):
            yield name
    else:
        yield name


def target_for(name, data):
    """A target (test image 0, the next class intended) for a targeted attack, None for an untargeted one."""
    if not ATTACKS.get(name).targeted:
        return None
    label = int(data.test.y[0])
    return Target(0, label, (label + 1) % data.num_classes)


def _attack_and_craft(name, data, results, budget=0.5, seed=3, eps=None, **params):
    target = target_for(name, data)
    eps = eps_for(name) if eps is None else eps
    spec = craft_spec(data, name, eps=eps, budget=budget, seed=seed, target=target,
                      **{**FAST.get(name, {}), **TINY_PARAMS.get(name, {}), **params})
    attack = ATTACKS.get(name)(data.family, **spec.params)
    ctx = AttackContext(data, attack.choose_rows(data, budget, seed, target), spec.eps, budget, seed,
                        torch.device("cpu"), results_root=results, target=target)
    return attack, attack.craft(ctx)


def _craft(name, data, results, budget=0.5, seed=3, eps=None, **params):
    return _attack_and_craft(name, data, results, budget, seed, eps, **params)[1]


def test_all_four_untargeted_attacks_are_registered():
    assert {"pgd", "dap", "durp", "deepconfuse"} <= set(ATTACKS.names())


@pytest.mark.parametrize("attack_name", REGISTRY_AND_TOYS, indirect=True)
def test_invariants(attack_name, tiny):
    name = attack_name
    data, results = tiny
    n = len(data.train)
    labels_before = data.train.y.clone()
    budget = BUDGET.get(name, 0.5)
    poison = _craft(name, data, results, budget=budget)
    k = budget_count(budget, n)
    assert len(poison.indices) == k == len(poison.delta)
    assert len(torch.unique(poison.indices)) == k and poison.indices.max() < n
    assert poison.delta.shape[1:] == data.train.x.shape[1:] and poison.delta.dtype == torch.float32
    norm, eps = ATTACKS.get(name).norm, eps_for(name)  # each attack within its own norm's ball
    sizes = row_sizes(poison.delta, norm)
    assert within(sizes, eps, norm)
    assert sizes.max().item() > 0.2 * eps  # it does perturb
    xp = data.train.x[poison.indices].float() / 255 + poison.delta
    assert xp.min().item() >= -EPS_TOLERANCE and xp.max().item() <= 1 + EPS_TOLERANCE
    assert torch.equal(data.train.y, labels_before)  # clean-label: the split's labels are untouched
    target = target_for(name, data)
    if target is not None:  # a targeted attack poisons rows of the class the target should be taken for
        assert (data.train.y[poison.indices] == target.intended_class).all()
    again = _craft(name, data, results, budget=budget)
    assert torch.equal(poison.indices, again.indices) and torch.equal(poison.delta, again.delta)


# attacks whose default ε is their authors' rather than the paper's MNIST-family 0.3 (EM, REM: 8/255 on every family)
OWN_DEFAULT_EPS = {"em": 8 / 255, "rem": 8 / 255,
                   "badnets": 4, "blend": 0.2, "sig": 40 / 255,  # the backdoors': their triggers' bounds
                   "lc": 0.3,  # LC's PGD bound on the MNIST family
                   "sleeper-agent": 16 / 255}  # Sleeper Agent's δ bound (SA --eps 16) on every family


@pytest.mark.parametrize("attack_name", REGISTRY_AND_TOYS, indirect=True)
def test_full_and_empty_budgets(attack_name, tiny):
    name = attack_name
    data, results = tiny
    n = len(data.train)
    cls = ATTACKS.get(name)
    spec_all = craft_spec(data, name, budget=BUDGET.get(name, 1.0), target=target_for(name, data),
                          **TINY_PARAMS.get(name, {}))
    if cls.targeted:  # rows from one class: no budget covers the whole split, and an empty one is refused
        assert spec_all.eps == 16 / 255  # forest's default (paper §VI-A2)
        from poisonbench.attacks.targets import draw_target

        with pytest.raises(PoisonbenchError, match="budget 0 poisons no image"):
            draw_target(data, 0, "scratch", 0.0)
        return
    if getattr(cls, "label_mode", None) == "clean":  # a clean-label backdoor: rows of the target class only
        with pytest.raises(PoisonbenchError, match="poisons only target-class rows"):
            _craft(name, data, results, budget=1.0)
        assert len(_craft(name, data, results, budget=0.0).indices) == 0
        return
    empty = _craft(name, data, results, budget=0.0)
    assert len(empty.indices) == 0 and empty.delta.shape == (0, *data.train.x.shape[1:])
    norm = cls.norm
    expected = OWN_DEFAULT_EPS.get(name, TINY_DEFAULT_EPS[norm])
    assert spec_all.eps == pytest.approx(expected, rel=1e-12)  # the MNIST-family default
    full = _craft(name, data, results, budget=1.0, eps=spec_all.eps)
    assert torch.equal(full.indices, torch.arange(n)) and len(full.delta) == n
    sizes = row_sizes(full.delta, norm)
    assert within(sizes, spec_all.eps, norm) and sizes.max().item() > 0.2 * spec_all.eps


def test_durp_is_one_perturbation_per_class(tiny):
    data, results = tiny
    poison = _craft("durp", data, results, budget=1.0)
    x = data.train.x.float() / 255
    y = data.train.y[poison.indices]
    for c in range(data.num_classes):
        rows = (y == c).nonzero().flatten()
        inside = ((x[poison.indices[rows]] > 0.1) & (x[poison.indices[rows]] < 0.9))  # pixels not clipped
        d = poison.delta[rows]
        ref = d[0]
        for i in range(1, len(rows)):
            both = inside[i] & inside[0]
            assert torch.allclose(d[i][both], ref[both], atol=1e-6)
        unclipped = d[inside]  # uniform on [−ε, ε] (Tao et al. P5), not one-sided
        assert unclipped.min() < -0.8 * EPS and unclipped.max() > 0.8 * EPS and unclipped.mean().abs() < 0.2 * EPS
    first = torch.stack([(y == c).nonzero()[0, 0] for c in (0, 1)])  # and each class has its own perturbation
    both = ((x[poison.indices[first]] > 0.1) & (x[poison.indices[first]] < 0.9)).all(0)
    assert both.sum() > 10 and not torch.allclose(poison.delta[first[0]][both], poison.delta[first[1]][both])


def _surrogate_losses(name, data, results, shift=0):
    """The clean surrogate's cross-entropy toward (y + shift) mod C on the poisoned rows, before and after δ."""
    poison = _craft(name, data, results)
    model, _ = load_or_train_surrogate(data, results, torch.device("cpu"))
    model.eval()
    x = data.train.x[poison.indices].float() / 255
    aim = (data.train.y[poison.indices] + shift) % data.num_classes
    with torch.no_grad():
        return F.cross_entropy(model(x), aim), F.cross_entropy(model(x + poison.delta), aim)


def test_pgd_raises_the_surrogate_loss(tiny):
    clean, adv = _surrogate_losses("pgd", *tiny)
    assert adv > clean


def test_dap_targets_next_class(tiny):
    data, results = tiny
    before, after = _surrogate_losses("dap", data, results, shift=1)
    assert after < before
    assert torch.equal(ATTACKS.get("dap")(data.family).labels(torch.arange(10), 10), (torch.arange(10) + 1) % 10)


def test_dap_at_the_paper_eps_makes_the_surrogate_predict_the_next_class(tiny):
    """At ε = 0.3 P1 succeeds on most rows: the surrogate's prediction on x + δ is (y + 1) mod C, not another
    wrong class (a lower cross-entropy toward y + 1 alone would also follow from aiming at y + 2)."""
    data, results = tiny
    poison = _craft("dap", data, results, eps=0.3)
    from poisonbench.attacks.surrogate import load_or_train_surrogate

    model, _ = load_or_train_surrogate(data, results, torch.device("cpu"))
    model.eval()
    x = data.train.x[poison.indices].float() / 255
    y = data.train.y[poison.indices]
    with torch.no_grad():
        pred = model(x + poison.delta).argmax(1)
    assert (pred == (y + 1) % data.num_classes).float().mean() > 0.5
    assert (pred == (y + 1) % data.num_classes).sum() > (pred == (y + 2) % data.num_classes).sum()


def test_every_pgd_step_stays_in_the_eps_ball_and_the_pixel_range():
    """Each step is projected, not only the final δ: a step larger than ε still lands on the ball's surface."""
    from poisonbench.attacks.pgd import signed_step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(8, 1, 4, 4)
    delta = signed_step(model, x, torch.zeros_like(x), torch.randint(0, 3, (8,)), eps=0.05, step=0.5)
    assert delta.abs().max() <= 0.05 + 1e-6 and delta.abs().max() > 0.04
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1


def test_budget_is_the_floor_and_the_rows_follow_the_seed():
    assert budget_count(0.5, 7) == 3 and budget_count(0.999, 10) == 9 and budget_count(0.6, 3900) == 2340
    assert len(select_indices(7, 0.5, 0)) == 3
    assert not torch.equal(select_indices(100, 0.3, 0), select_indices(100, 0.3, 1))


def test_pgd_random_start_follows_the_crafting_seed(tiny):
    """One step from the random start (40 steps would reach ±ε everywhere whatever the start)."""
    data, results = tiny

    def craft(seed):
        return _craft("pgd", data, results, budget=1.0, seed=seed, steps=1).delta

    first, again, other = craft(3), craft(3), craft(4)
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("kwargs, needle", [
    ({"attack": "nope"}, "unknown attack 'nope'; valid choices: pgd"),
    ({"attack": "pgd", "eps": 0}, "eps must be in (0, 1)"),
    ({"attack": "pgd", "eps": 1.5}, "eps must be in (0, 1)"),
    ({"attack": "pgd", "budget": -0.1}, "budget must be a fraction in [0, 1]"),
    ({"attack": "pgd", "budget": 1.01}, "budget must be a fraction in [0, 1]"),
    ({"attack": "durp", "steps": 3}, "option --steps does not apply to attack 'durp'"),
    ({"attack": "pgd", "steps": 0}, "--steps of attack 'pgd' must be in [1, 1000]"),
])
def test_bad_attack_inputs(tiny, kwargs, needle):
    data, _ = tiny
    with pytest.raises(PoisonbenchError, match=None) as info:
        craft_spec(data, **kwargs)
    assert needle in str(info.value)


def test_a_killed_surrogate_training_resumes_to_the_same_weights(tiny, tmp_path, monkeypatch):
    """The surrogate trains with `defend`'s epoch checkpoints: killed midway, it resumes from its last epoch and
    ends with the weights of an uninterrupted training; the checkpoint is gone once the surrogate is cached."""
    from poisonbench.attacks import surrogate

    data, _ = tiny
    monkeypatch.setattr(surrogate, "SURROGATE_CHECKPOINT_EVERY", 0.0)
    _, whole = surrogate.load_or_train_surrogate(data, tmp_path / "a", torch.device("cpu"))

    class Killed(Exception):
        pass

    def kill_in_epoch_3(description, done, total):
        if done > 2 * total // surrogate.resolve_recipe(data.family, surrogate.SURROGATE_RECIPE).epochs + 1:
            raise Killed

    with pytest.raises(Killed):
        surrogate.load_or_train_surrogate(data, tmp_path / "b", torch.device("cpu"), progress=kill_in_epoch_3)
    assert list((tmp_path / "b" / "partial" / "surrogates").iterdir())
    _, resumed = surrogate.load_or_train_surrogate(data, tmp_path / "b", torch.device("cpu"))
    assert resumed["resumed_from_epoch"] == 2 and whole["resumed_from_epoch"] == 0
    assert resumed["weights_sha256"] == whole["weights_sha256"]
    assert list((tmp_path / "b" / "partial" / "surrogates").iterdir()) == []


def test_surrogate_is_cached_as_safetensors_and_shared(tiny):
    from safetensors.torch import load_file

    from poisonbench.attacks.surrogate import load_or_train_surrogate, surrogate_id

    data, results = tiny
    _, first = load_or_train_surrogate(data, results, torch.device("cpu"))
    _, second = load_or_train_surrogate(data, results, torch.device("cpu"))
    assert second["trained"] is False and second["id"] == first["id"] == surrogate_id(data)
    assert first["path"].endswith(".safetensors") and load_file(first["path"])
    assert craft_spec(data, "pgd").surrogate == craft_spec(data, "dap").surrogate == first["id"]
    assert craft_spec(data, "durp").surrogate is None


def test_compiled_pgd_matches_eager_and_pads_the_last_batch(tiny):
    """`compile` is execution only: same spec, δ equal to eager up to float rounding, the ragged last batch
    padded to the static shape and dropped again, and the manifest says which mode ran."""
    from poisonbench import poisons

    data, results = tiny
    spec = craft_spec(data, "pgd", eps=EPS, budget=0.5, seed=3, batch_size=24, steps=5)
    eager, _ = poisons.craft(spec, data, results, force=True, compile="off")
    compiled, _ = poisons.craft(spec, data, results, force=True, compile="on")
    assert not eager.manifest["compiled"] and compiled.manifest["compiled"]
    assert len(compiled.delta) == len(eager.delta) and len(eager.delta) % 24 != 0  # a short last batch
    assert compiled.delta.abs().max().item() <= EPS + EPS_TOLERANCE
    assert (compiled.delta != eager.delta).float().mean().item() < 0.01
    with pytest.raises(PoisonbenchError, match="valid choices: auto, on, off"):
        poisons.craft(spec, data, results, compile="fast")


def test_auto_compile_leaves_the_cpu_crafting_step_eager(tiny, monkeypatch):
    """On the CPU the eager step is as fast as the compiled one (docs/fidelity.md; measured 2026-11-22, commit
    7cd69ca): `auto` must not compile there however long the craft, so a first craft never pays the compile."""
    from poisonbench import poisons
    from poisonbench.attacks import pgd

    monkeypatch.setattr(pgd, "COMPILE_MIN_ROW_STEPS", 1)
    data, results = tiny
    spec = craft_spec(data, "pgd", eps=EPS, budget=0.25, seed=5, batch_size=24, steps=2)
    poison, _ = poisons.craft(spec, data, results, force=True, compile="auto")
    assert poison.manifest["compiled"] is False


def test_an_interrupted_pgd_craft_resumes_from_its_finished_batches(tiny, tmp_path, monkeypatch):
    """A craft killed after two batches keeps them (results/partial/<id>/); the next craft with the same
    inputs crafts only the rest and gives exactly the δ of an uninterrupted craft."""
    from poisonbench import poisons
    from poisonbench.attacks import pgd

    data, _ = tiny
    spec = craft_spec(data, "pgd", eps=EPS, budget=1.0, seed=3, batch_size=32, steps=3)
    whole, _ = poisons.craft(spec, data, tmp_path / "whole", compile="off")

    work = tmp_path / "interrupted"
    (work / "surrogates").mkdir(parents=True)  # share the trained surrogate, so only PGD differs
    for f in (tmp_path / "whole" / "surrogates").iterdir():
        (work / "surrogates" / f.name).write_bytes(f.read_bytes())
    original, calls = pgd.linf_pgd, []

    def killed_after_two(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(pgd, "linf_pgd", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        poisons.craft(spec, data, work, compile="off")
    assert not poisons.exists(work, spec.poison_id)
    partial = work / "partial" / spec.poison_id
    assert len(list(partial.glob("rows-*.safetensors"))) == 2
    monkeypatch.setattr(pgd, "linf_pgd", original)
    resumed, cached = poisons.craft(spec, data, work, compile="off")
    assert not cached and resumed.manifest["resumed_rows"] == 64
    assert torch.equal(resumed.delta, whole.delta)
    assert not partial.exists()

    # a killed `craft --force` keeps the PoisonSet it replaces, and the same `craft --force` resumes it
    monkeypatch.setattr(pgd, "linf_pgd", killed_after_two)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        poisons.craft(spec, data, work, compile="off", force=True)
    assert poisons.exists(work, spec.poison_id)
    monkeypatch.setattr(pgd, "linf_pgd", original)
    forced, cached = poisons.craft(spec, data, work, compile="off", force=True)
    assert not cached and forced.manifest["resumed_rows"] == 64 and torch.equal(forced.delta, whole.delta)

    # state saved by another device type (or torch, poisonbench, CPU thread count) is not resumed: craft anew
    monkeypatch.setattr(pgd, "linf_pgd", killed_after_two)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        poisons.craft(spec, data, work, compile="off", force=True)
    identity = (partial / "identity.json").read_text()
    (partial / "identity.json").write_text(identity.replace('"cpu"', '"cuda"'))
    monkeypatch.setattr(pgd, "linf_pgd", original)
    with pytest.warns(PoisonbenchWarning, match="not resumed .*device='cuda' \\(now 'cpu'\\); crafting starts over"):
        again, _ = poisons.craft(spec, data, work, compile="off", force=True)
    assert "resumed_rows" not in again.manifest and torch.equal(again.delta, whole.delta)
    # and a fresh `craft --force` never adopts the partial state of an interrupted plain craft
    shutil.rmtree(poisons.poison_dir(work, spec.poison_id))
    calls.clear()
    monkeypatch.setattr(pgd, "linf_pgd", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        poisons.craft(spec, data, work, compile="off")
    monkeypatch.setattr(pgd, "linf_pgd", original)
    fresh, _ = poisons.craft(spec, data, work, compile="off", force=True)
    assert "resumed_rows" not in fresh.manifest and torch.equal(fresh.delta, whole.delta)


def test_an_interrupted_deepconfuse_craft_resumes_after_its_last_outer_epoch(tiny, tmp_path, monkeypatch):
    """Killed in its third outer epoch, the generator craft resumes from the checkpoint of the second and ends
    with exactly the δ of an uninterrupted craft."""
    from poisonbench import poisons
    from poisonbench.attacks import deepconfuse

    data, _ = tiny
    spec = craft_spec(data, "deepconfuse", eps=EPS, budget=1.0, seed=3, outer_epochs=3)
    whole, _ = poisons.craft(spec, data, tmp_path / "whole")
    work = tmp_path / "interrupted"
    # two calls per outer epoch (training, scratch test): the fifth is in the third
    craft_killed_at_call(monkeypatch, deepconfuse, "shuffled_batches", 5, spec, data, work)
    assert not poisons.exists(work, spec.poison_id)
    assert (work / "partial" / spec.poison_id / "outer.safetensors").exists()
    resumed, _ = poisons.craft(spec, data, work)
    assert resumed.manifest["attack_info"]["resumed_outer_epochs"] == 2
    assert torch.equal(resumed.delta, whole.delta)
    assert not (work / "partial" / spec.poison_id).exists()


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("size_in,size_out",
                         [((4, 4), (8, 8)), ((7, 5), (16, 9)), ((30, 30), (28, 28)), ((1, 3), (2, 3))])
def test_deepconfuse_resize_equals_bilinear_interpolate(size_in, size_out, align_corners):
    import torch.nn.functional as F

    from poisonbench.attacks.deepconfuse_nets import resize_bilinear

    t = torch.rand(2, 3, *size_in, dtype=torch.float64, requires_grad=True)
    ours = resize_bilinear(t, size_out, align_corners)
    theirs = F.interpolate(t, size=size_out, mode="bilinear", align_corners=align_corners)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    upstream = torch.rand_like(ours)
    (g_ours,) = torch.autograd.grad(ours, t, upstream)
    (g_theirs,) = torch.autograd.grad(theirs, t, upstream)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-12, atol=1e-12)


def test_official_schedule_replaces_defaults_not_explicit_options():
    from poisonbench.attacks.deepconfuse import OFFICIAL, DeepConfuse

    official = DeepConfuse("mnist", official_schedule=True).params
    assert {k: official[k] for k in OFFICIAL["mnist"]} == OFFICIAL["mnist"]
    mixed = DeepConfuse("mnist", official_schedule=True, outer_epochs=3, inner_epochs=5).params
    assert (mixed["outer_epochs"], mixed["inner_epochs"]) == (3, 5)  # the caller's, not 1000 / 1
    assert mixed["gen_lr"] == OFFICIAL["mnist"]["gen_lr"] and mixed["batch_size"] == OFFICIAL["mnist"]["batch_size"]
    assert DeepConfuse("mnist", outer_epochs=3).params["gen_lr"] == 1e-3  # without the flag: the budget defaults


def craft_deepconfuse(data, results, **params):
    return _attack_and_craft("deepconfuse", data, results, budget=1.0, **params)


class Stop(Exception):
    pass


def test_the_generator_step_maximises_the_pseudo_updated_classifiers_clean_loss(tiny, monkeypatch):
    """Step 2 of DC's alternation: the generator's loss is −CE(f_θ'(x), y) on clean x (f_θ' the classifier after
    the pseudo-step on the generator's poisons); with +CE the 'attack' would help the classifier."""
    data, results = tiny
    pseudo_logits, ce = [], []
    real_call = deepconfuse.functional_call

    def spy_call(*args, **kwargs):
        pseudo_logits.append(real_call(*args, **kwargs))
        return pseudo_logits[-1]

    class SpyF:
        def __getattr__(self, name):
            return getattr(F, name)

        def cross_entropy(self, logits, target, *args, **kwargs):
            ce.append((logits, F.cross_entropy(logits, target, *args, **kwargs)))
            return ce[-1][1]

    generator_losses = []
    real_backward = torch.Tensor.backward

    def spy_backward(self, *args, **kwargs):
        if "inputs" in kwargs:  # the generator step: loss2.backward(inputs=generator parameters)
            generator_losses.append(self.detach().item())
            raise Stop
        return real_backward(self, *args, **kwargs)

    monkeypatch.setattr(deepconfuse, "functional_call", spy_call)
    monkeypatch.setattr(deepconfuse, "F", SpyF())
    monkeypatch.setattr(torch.Tensor, "backward", spy_backward)
    with pytest.raises(Stop):
        craft_deepconfuse(data, results / "spy", outer_epochs=1)
    clean_ce = next(value for logits, value in ce if logits is pseudo_logits[0])
    assert generator_losses[0] == pytest.approx(-clean_ce.item(), rel=1e-6)


def test_no_grad_generator_calls_are_in_eval_mode_and_the_best_generator_is_kept(tiny, monkeypatch):
    """Poisons for the classifier step (the previous generator, frozen), for the scratch test and for the final
    δ all come from a generator in eval mode (BatchNorm running statistics: a row's δ does not depend on its
    batch); the generator kept is the one whose scratch classifier scored lowest, a real accuracy in [0, 1]."""
    data, results = tiny
    calls = []
    real_forward = deepconfuse_nets.MNISTAutoencoder.forward

    def spy_forward(self, x):
        calls.append((torch.is_grad_enabled(), self.training))
        return real_forward(self, x)

    monkeypatch.setattr(deepconfuse_nets.MNISTAutoencoder, "forward", spy_forward)
    attack, poison = craft_deepconfuse(data, results / "modes", outer_epochs=2)
    assert any(grad and training for grad, training in calls)  # the generator itself trains
    assert not [c for c in calls if not c[0] and c[1]], "a generator made poisons in train mode"
    best = attack.training_summary["best_scratch_clean_train_acc"]
    assert 0.0 <= best <= 1.0


@pytest.mark.parametrize("family", ["mnist", "cifar10"])
def test_generator_output_is_bounded_by_tanh(family):
    """δ = ε·G(x) relies on G ∈ (−1, 1) (the final tanh): without it `craft`'s projection would clip instead and
    the generator would train against another objective. Checked with an output BatchNorm scaled ×100."""
    size, channels = (28, 1) if family == "mnist" else (32, 3)
    gen = deepconfuse.GENERATORS[family](channels).eval()
    last_bn = [m for m in gen.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
    with torch.no_grad():
        last_bn.weight.mul_(100)
        out = gen(torch.rand(2, channels, size, size))
    assert out.abs().max() <= 1 and out.abs().max() > 0.5


def test_a_surrogate_file_of_other_inputs_is_refused(tiny, tmp_path):
    """E.g. a file copied or renamed into another dataset's slot: its recorded spec names other data."""
    data, _ = tiny
    state = {k: v.contiguous() for k, v in build_model("convnet", data, seed=0).state_dict().items()}
    other = {**surrogate_spec(data), "dataset_fingerprint": "0" * 26}
    path = surrogate_path(tmp_path / "results", surrogate_id(data))
    path.parent.mkdir(parents=True)
    path.write_bytes(st_save(state, metadata={"spec": canonical_json(other), "info": json.dumps({})}))
    with pytest.raises(PoisonbenchError, match="was made for other inputs"):
        load_or_train_surrogate(data, tmp_path / "results", torch.device("cpu"))
    # the same file with its own spec loads without training
    path.write_bytes(st_save(state, metadata={"spec": canonical_json(surrogate_spec(data)), "info": json.dumps({})}))
    _, info = load_or_train_surrogate(data, tmp_path / "results", torch.device("cpu"))
    assert info["trained"] is False


def test_a_discarded_craft_state_is_warned_about_only_when_it_held_work(tmp_path):
    """prepare_partial warns (naming what differs) when it deletes saved work of another execution; a folder that
    holds only the identity of a craft killed before its first save goes quietly."""
    import warnings as _warnings

    from poisonbench.poisons import prepare_partial

    cpu = torch.device("cpu")
    partial = tmp_path / "partial" / "0123456789abcdef"
    prepare_partial(partial, cpu, force=False)
    identity = json.loads((partial / "identity.json").read_text())
    (partial / "identity.json").write_text(json.dumps({**identity, "torch": "0.0"}))
    with _warnings.catch_warnings():
        _warnings.simplefilter("error")
        prepare_partial(partial, cpu, force=False)  # nothing but the identity: no warning
    (partial / "identity.json").write_text(json.dumps({**identity, "torch": "0.0"}))
    (partial / "rows-0-10.safetensors").write_bytes(b"work")
    with pytest.warns(PoisonbenchWarning, match=r"torch='0.0' \(now '[^']+'\); crafting starts over \(the state "
                                                 r"is kept in .*discarded/0123456789abcdef"):
        prepare_partial(partial, cpu, force=False)
    assert sorted(f.name for f in partial.iterdir()) == ["identity.json"]
    # the discarded state is kept whole beside the craft's new one; the next discarded one replaces it
    kept = tmp_path / "partial" / "discarded" / "0123456789abcdef"
    assert (kept / "rows-0-10.safetensors").read_bytes() == b"work"
    assert json.loads((kept / "identity.json").read_text())["torch"] == "0.0"
    (partial / "identity.json").write_text(json.dumps({**identity, "torch": "0.1"}))
    (partial / "rows-10-20.safetensors").write_bytes(b"more")
    with pytest.warns(PoisonbenchWarning, match="torch='0.1'"):
        prepare_partial(partial, cpu, force=False)
    assert sorted(f.name for f in kept.iterdir()) == ["identity.json", "rows-10-20.safetensors"]
    assert sorted(f.name for f in partial.iterdir()) == ["identity.json"]
