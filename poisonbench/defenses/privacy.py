"""DP-SGD's privacy accounting: ε at δ for T steps of the sampled Gaussian mechanism, by a maintained accountant.

DP-SGD (Abadi et al. 2016, arXiv 1607.00133, Algorithm 1) releases, at each of T steps, the sum of clipped
per-example gradients of a batch drawn with probability q per row, plus N(0, (σC)²) noise: a Poisson-subsampled
Gaussian mechanism with noise multiplier σ, composed T times. Its Rényi-DP (Mironov 2017, arXiv 1702.07476) at
each order α is that of the Sampled Gaussian Mechanism (Mironov, Talwar & Zhang 2019, arXiv 1908.10530), and T
steps add up; ε at δ is then the best conversion over the orders. We do not implement that analysis: Google's
`dp-accounting` package does (`dp_accounting.rdp.RdpAccountant` on a
`SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(σ)), T)`, its default orders, add-or-remove-one
neighbours, the relation Abadi et al. and Opacus use). It depends on numpy and scipy, not on torch; Opacus's RDP
accountant (`opacus.accountants.RDPAccountant`) computes the same quantity but imports the whole of Opacus
(PrivacyEngine, torch) to reach it.

Two accountants. Every record holds ε from RDP (`epsilon`, the figure the tables show: the convention of Abadi et
al.'s moments accountant, TF-Privacy and Opacus's default, and always computable) and from dp-accounting's PLD
accountant (`epsilon_pld`), which is tighter (about 14 % below RDP at σ 1) and what Opacus's `prv` and Google's
newer reports use; below σ 0.3 the PLD is not computed (`pld_note`).

Which δ. `default_delta`: min(10⁻⁵, n^-1.1), below 1/n at every n (the earlier default was 1/n, a loose
convention: at δ = 10⁻⁵ the σ 1 run on mnist-5k is ε 4.17, not 3.28).

Which q. Opacus's `PrivacyEngine.make_private` takes q = 1 / len(data_loader), i.e. 1 / ⌈n / B⌉ for n rows and
batch B, with ⌈n / B⌉ steps an epoch, whether or not its loader Poisson-samples; we take the same (`sample_rate`).

The caveat. The bound holds for Poisson-sampled batches (`defend --method dpsgd --sampling poisson`: every row
joins every step's batch independently with probability q). The engine's default batches are a shuffled partition
of the rows, each row once an epoch: the usual practice (Hong et al.'s official code, TF-Privacy's tutorials) is to
report the Poisson ε for them anyway, but it is not a proven bound, and Chua et al. 2024 ("How Private are DP-SGD
Implementations?", arXiv 2403.17673) show that shuffling can leak markedly more. Every ε we record or show says
which case it is (`caveat`).
"""

from __future__ import annotations

import logging
import math

from ..core.errors import PoisonbenchError
from ..core.optional import installed_version, require

SAMPLINGS = ("shuffle", "poisson")
ACCOUNTANT = "RDP (dp-accounting RdpAccountant: Mironov 2017; sampled Gaussian, Mironov et al. 2019)"
PLD_ACCOUNTANT = "PLD (dp-accounting PLDAccountant: privacy loss distributions, Koskela et al. 2020)"
POISSON_NOTE = "Poisson-sampled batches at rate q: the RDP bound holds"
SHUFFLE_NOTE = ("shuffled batches (each row once an epoch), not Poisson samples: ε is what Poisson sampling at rate "
                "q would give (Opacus's and TF-Privacy's convention), not a proven bound for shuffling (Chua et al. "
                "2024); --sampling poisson for one that holds")
BATCHNORM_NOTE = "the model trains BatchNorm, whose batch statistics are not privatised: no ε is a guarantee for it"


def sample_rate(rows: int, batch_size: int) -> float:
    """q = 1 / ⌈rows / batch⌉, the steps an epoch being ⌈rows / batch⌉ (Opacus `PrivacyEngine.make_private`:
    `sample_rate = 1 / len(data_loader)`)."""
    return 1.0 / math.ceil(rows / batch_size)


def expected_batch(rows: int, q: float) -> int:
    """The expected batch size ⌊rows · q⌋ a Poisson step divides its noised sum by (Opacus `PrivacyEngine`:
    `expected_batch_size = int(len(dataset) * sample_rate)`): dividing by the drawn size would make the step
    depend on it, which the accounting does not cover. At least 1."""
    return max(1, int(rows * q))


DELTA_RULE = "min(1e-5, n^-1.1)"
PLD_MIN_SIGMA = 0.3  # below it the PLD's support (~1/σ²) makes it take 10 s and more; ε is then in the tens or more
# below PLD_MIN_SIGMA the PLD is discretised this coarsely (dp-accounting's default is 1e-4): still its pessimistic
# estimate, an upper bound on ε; at σ 0.01, q 1/31, δ 1e-5 it gives 35,285.2 for 31 steps in 2 s (the same as at
# 0.01, which took 15 s; 1e-4 did not finish in 120 s) and 344,966 for 1,240 steps in 6 s, on a loaded 2-core CPU
PLD_COARSE_INTERVAL = 0.1


def default_delta(rows: int) -> float:
    """δ = min(10⁻⁵, n^-1.1) for n rows trained on (`DELTA_RULE`). δ must be well below 1/n (δ = 1/n admits a
    mechanism that publishes one row in the clear: Dwork & Roth 2014, §2.3); n^-1.1 is below it by the factor
    n^0.1 at every n, and 10⁻⁵ is the figure Abadi et al. 2016 (MNIST, 60,000 rows) and Opacus's tutorials use,
    which it stays at up to n ≈ 35,000 (mnist-5k: 10⁻⁵; CIFAR-10's 50,000 rows: 6.8·10⁻⁶; MNIST's 60,000:
    5.5·10⁻⁶)."""
    return min(1e-5, max(rows, 1) ** -1.1)


def check_inputs(q: float, sigma: float, steps: int, delta: float) -> None:
    """One line naming the first value out of its range: q in (0, 1], σ >= 0, steps >= 0, δ in (0, 1)."""
    def bad(what: str, value, valid: str) -> PoisonbenchError:
        return PoisonbenchError(f"privacy accounting: {what} must be {valid}, got {value}")

    if not isinstance(q, (int, float)) or not 0 < q <= 1:
        raise bad("the sampling rate q", q, "in (0, 1]")
    if not isinstance(sigma, (int, float)) or not sigma >= 0 or math.isinf(sigma):
        raise bad("the noise multiplier σ", sigma, ">= 0 and finite")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise bad("the number of steps", steps, "an integer >= 0")
    if not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise bad("δ", delta, "in (0, 1)")


def epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    """ε at `delta` of `steps` compositions of the Poisson-subsampled Gaussian mechanism (rate `q`, noise
    multiplier `sigma`), by dp-accounting's RDP accountant; `math.inf` for σ = 0 (no noise: no privacy), 0 for no
    step. Bad input: `check_inputs`'s one line; dp-accounting missing: the optional package's one line."""
    check_inputs(q, sigma, steps, delta)
    if steps == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    dp = require("dp_accounting")
    event = dp.SelfComposedDpEvent(dp.PoissonSampledDpEvent(q, dp.GaussianDpEvent(sigma)), steps)
    accountant = dp.rdp.RdpAccountant()
    # its absl warnings ("failed to converge ... Excluding this order") name orders it leaves out of the minimum,
    # which it handles; on a command's stderr they would be lines of noise around the one-line contract
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        accountant.compose(event)
        return float(accountant.get_epsilon(delta))
    finally:
        absl.setLevel(level)


def pld_epsilon(q: float, sigma: float, steps: int, delta: float) -> float | None:
    """ε at `delta` of the same composition by dp-accounting's privacy-loss-distribution accountant
    (`dp_accounting.pld.PLDAccountant`, add-or-remove-one neighbours, its default discretisation: Meiser & Mohammadi
    2018; Koskela et al. 2020; Doroshenko et al. 2022), tighter than RDP (q 1/31, σ 1, 310 steps, δ 1/3,900: 2.82
    against RDP's 3.28). `math.inf` for σ = 0, 0 for no step; below `PLD_MIN_SIGMA`, where the default discretisation
    is too slow, the same accountant with the interval `PLD_COARSE_INTERVAL` (still an upper bound on ε)."""
    check_inputs(q, sigma, steps, delta)
    if steps == 0:
        return 0.0
    if sigma == 0:
        return math.inf
    dp = require("dp_accounting")
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant(**({"value_discretization_interval": PLD_COARSE_INTERVAL}
                                  if sigma < PLD_MIN_SIGMA else {}))
    accountant.compose(dp.SelfComposedDpEvent(dp.PoissonSampledDpEvent(q, dp.GaussianDpEvent(sigma)), steps))
    return float(accountant.get_epsilon(delta))


def pld_note(sigma: float) -> str | None:
    """How a record's PLD ε was computed where it is not the accountant's default, or None."""
    if 0 < sigma < PLD_MIN_SIGMA:
        return (f"PLD discretised at {PLD_COARSE_INTERVAL:g} (σ {sigma:g} < {PLD_MIN_SIGMA}: the default 1e-4 is too "
                "slow); its pessimistic estimate, still an upper bound on ε")
    return None


def accountant_text() -> str:
    """The accountant, with the installed dp-accounting's version (what a record's ε was computed with)."""
    return f"{ACCOUNTANT}, dp-accounting {installed_version('dp-accounting') or 'not installed'}"


def pld_accountant_text() -> str:
    return f"{PLD_ACCOUNTANT}, dp-accounting {installed_version('dp-accounting') or 'not installed'}"
