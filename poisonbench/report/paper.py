"""The HINT paper's published numbers (Tables II–V), transcribed once as data (`paper_numbers.json`).

Which paper row stands beside which of our datasets, and when our setting is a reduced-scale one, is decided
here and documented in docs/metrics.md ("Report and tables").
"""

from __future__ import annotations

import functools
import json
from importlib import resources

# Paper Table I: the full-scale setting per dataset family (epochs of the paper recipe).
PAPER_EPOCHS = {"mnist": 30, "cifar10": 80}
PAPER_LABEL = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
# Our datasets whose paper counterpart is the paper's MNIST row (the issue: MNIST-family data = mnist, mnist-5k).
# fashion-mnist is deliberately absent: the paper has no Fashion-MNIST results, so it gets no paper column.
PAPER_DATASET = {"mnist": "mnist", "mnist-5k": "mnist", "cifar10": "cifar10"}
# The data the paper trained on (full size); anything else is a reduced-scale setting.
FULL_PAPER_DATASETS = ("mnist", "cifar10")
METHOD_LABEL = {"none": "W/o Defense", "hint": "HINT", "atda": "ATDA", "friends": "FRIENDS", "epic": "EPIC"}
# FC has two objectives, each its own column (attacks.fc.OBJECTIVES): forest's mean-feature match (what HINT ran, the
# paper's FC column) and the per-poison collision (Shafahi et al. Eq. 1, ART, the Toxic benchmark)
ATTACK_LABEL = {"gm": "GM", "mp": "MP", "bp": "BP", "fc": "FC-mean", "fc-pp": "FC-per-poison"}


@functools.cache
def numbers() -> dict:
    """The transcribed numbers (see the JSON's `units`)."""
    return json.loads(resources.files("poisonbench.report").joinpath("paper_numbers.json").read_text())


def paper_key(table: str, dataset: str) -> str | None:
    """The paper's dataset key whose numbers stand beside `dataset` in `table`, or None.

    Tables II and IV have a CIFAR-10 and an MNIST row: cifar10 → CIFAR-10, mnist and mnist-5k → MNIST.
    Tables III and V exist only for CIFAR-10 in the paper; they are shown beside any dataset, labelled CIFAR-10.
    """
    if table in ("3", "5"):
        return "cifar10"
    return PAPER_DATASET.get(dataset)


def paper_label(table: str, dataset: str) -> str | None:
    """Column label of the paper's numbers, naming the paper's dataset (e.g. "paper MNIST" beside mnist-5k)."""
    key = paper_key(table, dataset)
    return None if key is None else f"paper {PAPER_LABEL[key]}"


def table2(key: str, rho: float, method: str) -> tuple[float, float] | None:
    """The paper's mean ± std, or None when ρ is not one of the paper's rows (ρ = 0.25 is not ρ = 0.2)."""
    rows = numbers()["table2"].get(key, {})
    row = next((v for k, v in rows.items() if abs(float(k) - rho) < 1e-9), None)
    value = row.get(method) if row else None
    return tuple(value) if value else None


def table3(method: str, attack: str) -> dict | None:
    return numbers()["table3"]["cifar10"].get(method, {}).get(attack)


def table4(key: str, param: str, value: float) -> tuple[float, float] | None:
    grid = numbers()["table4"].get(key, {}).get(param, {})
    for k, v in grid.items():
        if abs(float(k) - value) < 1e-9:
            return tuple(v)
    return None


def table5(method: str, ratio: float | None = None) -> float | None:
    row = numbers()["table5"]["cifar10"].get(method)
    if isinstance(row, dict):
        return row.get(f"{ratio}") if ratio is not None else None
    return row


def family_of(dataset: str) -> str | None:
    """The dataset family of a registry name ("mnist" | "cifar10"), or None for an unknown/.npz name."""
    from ..data import DATASETS

    return DATASETS.get(dataset).family if dataset in DATASETS.names() else None


def reduced_scale(dataset: str, recipe: str, epochs: int, family: str | None = None) -> list[str]:
    """Why a setting is not the paper's (empty when it is): subsampled data, a non-paper recipe, fewer epochs."""
    family = family or family_of(dataset)
    reasons = []
    if dataset == "mnist-5k":
        reasons.append("mnist-5k (5,000 digits, not the full MNIST)")
    elif dataset == "fashion-mnist":
        reasons.append("fashion-mnist (Fashion-MNIST: another dataset of the MNIST family, not the paper's MNIST)")
    elif dataset not in FULL_PAPER_DATASETS:  # also an .npz, whatever family its recipe suggests
        reasons.append(f"{dataset} (not a paper dataset)")
    if recipe != "paper":
        reasons.append(f"{recipe} recipe")
    paper_epochs = PAPER_EPOCHS.get(family or "")
    if paper_epochs and epochs < paper_epochs:
        reasons.append(f"{epochs} epoch{'s' if epochs != 1 else ''} (paper: {paper_epochs})")
    return reasons
