"""The targeted context of one trial (paper §VI-A2; docs/engine.md, "Targeted scenarios"): the target test image, its
class, the intended class, and the poisons' base images, all from the intended class (as forest's single-class threat
model does).

`draw_target` draws them from a seed (`derived_seed(seed, "targeted-context")`: the target is uniform over the test
split, the intended class uniform over the other classes, the bases a uniform sample of the intended class's rows in the
scenario's pool); `craft --target I --intended C` fixes the first two; `setup_target` reads them from a file in the
schema of the "Just How Toxic" benchmark's setups (PB's `poison_setups/*.pickle` as JSON; the first setups in
tests/data/).

Base selection (a targeted attack's `bases`, issue 54): `random` (the default; forest's `_choose_poisons_randomly`,
the paper's) keeps the drawn rows; `nearest` leaves the rows to the attack, which takes the ⌊budget·n⌋ rows of the
pool nearest the target in its own model's feature space when it crafts (`nearest_rows`: Euclidean distance of the
penultimate features, as Poison Frogs' and Bullseye Polytope's `--nearest` [BPo:utils.py `fetch_poison_bases`] and
the Adversarial Robustness Toolbox's examples choose bases). The target and intended class are drawn alike in both.

The pool: the whole train split (`scratch`), or the transfer set (`transfer`: the poisons are part of the 10 % the
head is trained on, paper §VI-A2). The budget is a fraction of the train split in both (1 %: 490 CIFAR-10 images,
which in transfer is 10 % of the 4,900-image transfer set, its whole intended class).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..core.bounded import Refused, read_json_file
from ..core.errors import PoisonbenchError
from ..core.hashing import derived_seed
from ..data.splits import split_positions
from .base import Target, budget_count

CONTEXT_STREAM = "targeted-context"
SCENARIOS = ("scratch", "transfer")  # where a targeted attack crafts; the experiment's scenarios of these names
FEATURE_CHUNK = 1024  # pool rows per forward pass of `nearest_rows`


def base_pool(data, intended: int, scenario: str) -> torch.Tensor:
    """Train rows of class `intended` the poisons may be drawn from (sorted int64)."""
    rows = torch.arange(len(data.train))
    if scenario == "transfer":
        from ..engine.pretrained import transfer_split

        rows = transfer_split(data)[1]
    return rows[data.train.y[rows] == intended]


def check_target_choice(target: int | None, intended: int | None, setup) -> None:
    """The target is chosen one way: `--target I --intended C` together, or `--setup FILE`, or neither (drawn from
    the seed)."""
    if (target is None) != (intended is None):
        raise PoisonbenchError("--target and --intended go together (the test image and the class it should be "
                               "taken for)")
    if setup is not None and target is not None:
        raise PoisonbenchError("give --setup FILE or --target/--intended, not both")


def check_setup_index(setup, setup_index: int) -> None:
    """`--setup-index I` is a non-negative integer and comes with `--setup FILE` (it picks setup I of that file;
    without one it would be ignored, and the target drawn from --seed instead)."""
    if not (isinstance(setup_index, int) and setup_index >= 0):
        raise PoisonbenchError(f"--setup-index must be a non-negative integer, got {setup_index}")
    if setup is None and setup_index != 0:
        raise PoisonbenchError(f"--setup-index {setup_index} needs --setup FILE (it picks setup {setup_index} of "
                               "that file)")


def check_index(data, index: int) -> int:
    if not 0 <= index < len(data.test):
        raise PoisonbenchError(f"target index {index} is outside the test split [0, {len(data.test)})")
    return int(data.test.y[index])


def check_intended(data, intended: int, true_class: int) -> None:
    if not 0 <= intended < data.num_classes or intended == true_class:
        raise PoisonbenchError(f"intended class {intended} must be a class in [0, {data.num_classes}) other than "
                               f"the target's own ({true_class})")


def draw_target(data, seed: int, scenario: str, budget: float, index: int | None = None,
                intended: int | None = None, cap: bool = False) -> Target:
    """The trial's target: `index` / `intended` when given, else drawn from `seed`; ⌊budget·n⌋ base rows drawn from
    the intended class of the scenario's pool. Refused in one line when the pool is smaller than the budget, unless
    `cap` (then the whole pool)."""
    g = torch.Generator().manual_seed(derived_seed(seed, CONTEXT_STREAM))
    drawn_index = int(torch.randint(len(data.test), (1,), generator=g))
    index = drawn_index if index is None else index
    true_class = check_index(data, index)
    other = int(torch.randint(data.num_classes - 1, (1,), generator=g))
    intended = (other + (other >= true_class)) if intended is None else intended
    check_intended(data, intended, true_class)
    pool = base_pool(data, intended, scenario)
    k = budget_count(budget, len(data.train))
    if k == 0:
        raise PoisonbenchError(f"budget {budget:g} poisons no image of the {len(data.train)}-image train split")
    if k > len(pool) and cap:
        k = len(pool)
    if k > len(pool):
        where = "the transfer set" if scenario == "transfer" else "the train split"
        raise PoisonbenchError(f"budget {budget:g} asks for {k} poisons, but the intended class {intended} has only "
                               f"{len(pool)} images in {where}")
    rows = pool[torch.randperm(len(pool), generator=g)[:k]].sort().values
    return Target(index, true_class, intended, tuple(int(r) for r in rows))


def poisoned_count(target: Target, budget: float, n: int) -> int:
    """How many rows a target's poisons take: its fixed rows, else ⌊budget·n⌋ (chosen by the attack)."""
    return len(target.rows) if target.rows is not None else budget_count(budget, n)


@torch.no_grad()
def nearest_rows(model, data, pool: torch.Tensor, index: int, k: int, device,
                 chunk: int = FEATURE_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, distances): the `k` rows of `pool` whose penultimate features under `model` (`model.features`, in
    eval mode) are nearest, in Euclidean distance, to those of test image `index`; rows sorted, distances in the
    same order. One forward pass over the pool in chunks of `chunk` rows; ties go to the lower row."""
    from ..core.device import to_float

    was_training = model.training
    model.eval()
    try:
        target = model.features(to_float(data.test.x[index:index + 1], device)).flatten(1).float()
        distances = torch.cat([
            torch.cdist(model.features(to_float(data.train.x[pool[s:s + chunk]], device)).flatten(1).float(),
                        target, compute_mode="donot_use_mm_for_euclid_dist")[:, 0]
            for s in range(0, len(pool), chunk)]).cpu()
    finally:
        model.train(was_training)
    order = torch.sort(distances, stable=True).indices[:k]  # stable: equal distances keep the pool's (row) order
    chosen = pool[order]
    by_row = torch.argsort(chosen)
    return chosen[by_row], distances[order][by_row]


def read_setups(path: str | Path) -> list[dict]:
    """The `setups` list of a setup file (JSON: `{setups: [{target_class, target_index, base_class,
    base_indices}]}`), each entry checked for its keys and integer values. The file is read through the bounded
    reader (core/bounded.py): a regular file of `MAX_JSON_FILE_BYTES` at most, nested `MAX_DEPTH` deep at most."""
    if not os.path.exists(path):
        raise PoisonbenchError(f"setup file {str(path)!r} does not exist")
    try:
        doc = read_json_file(path, label=f"setup file {str(path)!r}")
    except Refused as e:
        if e.over_limit:  # a FIFO, a device, too large, too deep: say which
            raise PoisonbenchError(str(e)) from None
        doc = None  # unreadable or not JSON: the format message below
    setups = doc.get("setups") if isinstance(doc, dict) else doc
    if not isinstance(setups, list):
        raise PoisonbenchError(f"setup file {str(path)!r} is not a JSON setup list ({{\"setups\": [{{target_class, "
                               "target_index, base_class, base_indices}}, ...]}})")
    return setups


def setup_target(data, path: str | Path, i: int) -> Target:
    """Setup `i` of the file at `path` as a Target. The file's indices are the source's (CIFAR-10: torchvision's
    50,000 train and 10,000 test images); they are mapped to this dataset's splits, and every base must be a train
    image of the base class, the target a test image of the target class."""
    setups = read_setups(path)
    if not 0 <= i < len(setups):
        raise PoisonbenchError(f"--setup-index {i} is outside the setup file's [0, {len(setups)})")
    s = setups[i]
    try:
        target_index, target_class = int(s["target_index"]), int(s["target_class"])
        base_class, bases = int(s["base_class"]), [int(b) for b in s["base_indices"]]
    except (KeyError, TypeError, ValueError):
        raise PoisonbenchError(f"setup {i} of {str(path)!r} lacks integer target_index, target_class, base_class "
                               "or base_indices") from None
    where = f"setup {i} of {Path(path).name}"
    index = _position(data.test.indices, [target_index], f"{where}: target_index", "test")[0]
    true_class = int(data.test.y[index])
    if true_class != target_class:
        raise PoisonbenchError(f"{where}: test image {target_index} is of class {true_class}, not {target_class}")
    check_intended(data, base_class, true_class)
    rows = _position(data.train.indices, bases, f"{where}: base index", "train")
    wrong = [b for b, r in zip(bases, rows, strict=True) if int(data.train.y[r]) != base_class]
    if wrong:
        raise PoisonbenchError(f"{where}: base image {wrong[0]} is not of the base class {base_class}")
    unique = sorted(set(rows))  # two of the benchmark's transfer setups list one base twice
    return Target(index, true_class, base_class, tuple(unique))


def _position(split_indices: np.ndarray, wanted: list[int], what: str, split: str) -> list[int]:
    """Positions in a split of the source indices `wanted`; one line naming the first that is not in it."""
    pos = split_positions(split_indices, wanted)
    if (pos < 0).any():
        bad = int(np.asarray(wanted)[pos < 0][0])
        raise PoisonbenchError(f"{what} {bad} is not in this dataset's {split} split ({len(split_indices)} images)")
    return [int(p) for p in pos]
