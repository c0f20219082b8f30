"""Attacks actually hurt and HINT actually helps: victims trained end to end on real digits.

The other attack tests check invariants (ε-ball, budget, determinism) and each attack's objective against its own
surrogate; these train fresh victims on the poisons, as `defend` does, and measure clean test accuracy. Data:
the first 2,000 of mnist-5k's real MNIST digits as an `.npz` (1,600 train / 40 val / 360 test rows). To stay
fast, the surrogate trains with the `quick` recipe (10 epochs), PGD and DAP take 10 steps of 2.5·ε/10 and ε/5
(the defaults take 40 and 100 steps), and victims train 10 epochs; ε is the MNIST default, 0.3. Measured on the
development machine (2026-11-23, 2 threads; one thread within 0.3 points): clean 98.3 %; at ρ = 1 PGD 50.6 %,
DAP 40.0 %, DURP 97.5 % (the defaults on all of mnist-5k: 33.8 / 32.0 / 94.2 %,
experiments/reproduction_mnist5k.md); HINT on PGD +11.9 points. DeepConfuse's strength needs minutes of generator
training (its budget default: 5 minutes on mnist-5k), so the fast suite checks its training step
(tests/test_attacks.py) and experiments/reproduction_mnist5k.md reports what
it costs a victim.
"""

from __future__ import annotations

import numpy as np
import pytest

from poisonbench.attacks import ATTACKS
from poisonbench.attacks import surrogate as surrogate_module
from poisonbench.data import load_dataset
from poisonbench.data.mnist5k import load_mnist_5k
from poisonbench.experiment.defend import defend
from poisonbench.experiment.scenarios import CRAFT_SEED
from poisonbench.experiment.spec import DefendSpec
from poisonbench.poisons import craft, craft_spec

ROWS = 2000
FAST = {"pgd": {"steps": 10, "step_size": 0.075}, "dap": {"steps": 10}}
# What each registered attack must do to a victim here; a new attack needs an entry
# (test_every_attack_has_an_expected_effect).
MIN_COST_POINTS = {"pgd": 20.0, "dap": 20.0}  # measured 47.8 and 58.3
WEAK_ATTACKS, WEAK_POINTS = {"durp"}, 3.0  # weak by design (measured −0.8): within 3 points of clean
SLOW_ATTACKS = {"deepconfuse"}  # see the module docstring
# targeted: they do not cost accuracy but flip one target; their success per setting is measured in
# experiments/targeted_cpu.md (5 trials per cell) and their objectives are tested in tests/test_targeted_attacks.py
TARGETED_ATTACKS = {"gm", "bp", "fc"}
# the availability poisons beyond the paper (EM, REM, LSP, OPS): their cost to a victim is measured at ρ = 1 on all of
# mnist-5k in experiments/availability.md (minutes of crafting for EM and REM); their mechanisms are
# tested in tests/test_error_minimising.py and tests/test_shortcuts.py
AVAILABILITY_ATTACKS = {"em", "rem", "lsp", "ops"}
# the backdoors' effect is an ASR: tests/test_backdoor.py, experiments/backdoor.md
BACKDOOR_ATTACKS = {"badnets", "blend", "sig", "lc", "sleeper-agent"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(the .npz path, results root, {attack: poison id}) with PGD, DAP and DURP crafted over its train split."""
    root = tmp_path_factory.mktemp("effect")
    digits, _ = load_mnist_5k(None, False)  # mnist-5k's uint8 images and labels, as its loader reads them
    path = root / "digits.npz"
    np.savez(path, x=digits["x"][:ROWS], y=digits["y"][:ROWS])
    data = load_dataset(str(path))
    results = root / "results"
    ids = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(surrogate_module, "SURROGATE_RECIPE", "quick")
        for name in ("pgd", "dap", "durp"):
            spec = craft_spec(data, name, budget=1.0, seed=CRAFT_SEED, **FAST.get(name, {}))
            craft(spec, data, results)
            ids[name] = spec.poison_id
    return path, results, ids


def _test_acc(path, results, ids, attacks=None, method="none") -> float:
    """Clean test accuracy (%) of a `defend` run at ρ = 1 on `attacks` (ρ = 0 without), the quick recipe."""
    spec = DefendSpec(dataset=str(path), recipe="quick",
                      poison_ratio=1.0 if attacks else 0.0, attacks=attacks,
                      poison_sets={a: ids[a] for a in attacks} if attacks else None, method=method,
                      results=str(results), compile="off")
    return 100 * defend(spec)[0].record["metrics"]["test_acc"]


def test_every_attack_has_an_expected_effect():
    assert set(ATTACKS.names()) == (set(MIN_COST_POINTS) | WEAK_ATTACKS | SLOW_ATTACKS | TARGETED_ATTACKS
                                    | AVAILABILITY_ATTACKS | BACKDOOR_ATTACKS)


@pytest.mark.parametrize("name", sorted(MIN_COST_POINTS))
def test_poisoning_every_row_costs_a_victim_points(name, digits):
    path, results, ids = digits
    clean = _test_acc(path, results, ids)
    poisoned = _test_acc(path, results, ids, [name])
    assert clean >= 95.0
    assert clean - poisoned >= MIN_COST_POINTS[name], (clean, poisoned)


def test_durp_alone_is_weak_as_documented(digits):
    """DURP (Tao et al. P5, one uniform pattern per class) barely moves a victim on MNIST: −3.0 points on mnist-5k,
    −0.8 here (docs/fidelity.md; the issue expects it to be weak). Its invariants test checks that it perturbs;
    this pins the finding, so a DURP that suddenly costs points (e.g. ε applied on another scale) is noticed. A
    victim trained on it did not follow its patterns either: test digits given the next class's δ (as stored for one
    poisoned training row of that class) were classified as that class 0.6 % of the time, as by a clean victim
    (measured once, 2026-11-23)."""
    path, results, ids = digits
    clean = _test_acc(path, results, ids)
    assert abs(clean - _test_acc(path, results, ids, ["durp"])) <= WEAK_POINTS


def test_hint_recovers_accuracy_against_pgd(digits):
    """HINT with its paper defaults against PGD on every row (experiments/README.md: +26.8 points on mnist-5k)."""
    path, results, ids = digits
    none = _test_acc(path, results, ids, ["pgd"])
    hint = _test_acc(path, results, ids, ["pgd"], method="hint")
    assert hint - none >= 5.0, (none, hint)
