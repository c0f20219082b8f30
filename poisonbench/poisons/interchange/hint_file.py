"""HINT's untargeted poison file, in and out (HINT's README names the file; its format:
HINT:train_utils.py `load_mnist_untargeted`, dataset.py `update_poison_data_ver1`).

HINT's MNIST driver trains on one file per mix, e.g. `mnist_eps_0.3_mixed_poison_clean_23600_pgd_8850_p1_8850_p5_
8850_DC_8850.pt`: `torch.save({'poisoned_images': float N×H×W (or N×C×H×W) in [0, 1], 'poison_targets': int N})`,
the whole train split in HINT's split order, which replaces the training images (truncated to uint8 by
`.mul(255).to(uint8)`, `HINT:dataset.py` `update_poison_data_ver1`). HINT's split order is
`torch.manual_seed(1); randperm(pool)`, its first `pool − 1000` rows the train split (`CustomMNIST`,
`CustomCIFAR10V2`). The crafting scripts that made the paper's files are not released, so a file is the only way
to train on the paper's own poisons: `import_hint_file` turns one into a PoisonSet of our split (`defend
--poison-set`), and `export_hint_file` writes one of our mixes for the official code (`--poison_path`).

Our stratified split holds out a different 1,000 rows (docs/fidelity.md, Datasets): a file's poisoned rows that
fall in our val split are left out of the import (counted in the manifest), and an export leaves clean the rows
of HINT's train split that are in our val split (we have no δ for them).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import torch

from ...attacks.base import PoisonSet
from ...core.bounded import Refused
from ...core.errors import PoisonbenchError
from ...core.hashing import sha256_file
from ...core.io import (
    atomic_write_bytes,
    check_output,
    ensure_writable,
    file_in_the_way,
    torch_load_tensors,
    why_not_written,
)
from ...core.workspace import workspace_dir
from ...data.splits import split_positions

HINT_SPLIT_SEED = 1  # torch.manual_seed(1) before randperm (HINT:dataset.py CustomMNIST / CustomCIFAR10V2)
ORDERS = ("hint", "train")  # a file's row order: HINT's train split, or this dataset's train split
IMPORTED_ATTACK = "hint-file"  # the `attack` of an imported PoisonSet


def pool_arrays(data) -> tuple[torch.Tensor, torch.Tensor]:
    """Our train and val rows at their indices in the source pool (the official train set, or an .npz / mnist-5k's
    whole pool, whose test rows are left zero with label −1): uint8 images and labels."""
    n = int(max(data.train.indices.max(), data.val.indices.max())) + 1
    x = torch.zeros((n, *data.shape), dtype=torch.uint8)
    y = torch.full((n,), -1, dtype=torch.long)
    for split in (data.train, data.val):
        idx = torch.as_tensor(split.indices, dtype=torch.long)
        x[idx], y[idx] = split.x, split.y
    return x, y


def has_hint_order(data) -> bool:
    """HINT's order exists for datasets whose val split is held out of an official train set (MNIST, Fashion-MNIST,
    CIFAR-10): our train and val indices then cover the pool exactly."""
    n = len(data.train) + len(data.val)
    idx = np.concatenate([data.train.indices, data.val.indices])
    return data.name in ("mnist", "fashion-mnist", "cifar10") and np.array_equal(np.sort(idx), np.arange(n))


def hint_rows(data) -> torch.Tensor:
    """Pool indices of HINT's train split, in HINT's order: randperm(pool) seeded 1, all but the last
    len(val) rows (59,000 of MNIST's 60,000; 49,000 of CIFAR-10's 50,000)."""
    n = len(data.train) + len(data.val)
    return torch.randperm(n, generator=torch.Generator().manual_seed(HINT_SPLIT_SEED))[:n - len(data.val)]


def order_rows(data, order: str) -> torch.Tensor:
    """Pool indices of a file's rows for `order` (see ORDERS)."""
    if order not in ORDERS:
        raise PoisonbenchError(f"unknown row order {order!r}; valid choices: {', '.join(ORDERS)}")
    if order == "hint":
        if not has_hint_order(data):
            raise PoisonbenchError(f"{data.name} has no HINT split order (only mnist, fashion-mnist and cifar10, "
                                   "whose val split is held out of the official train set); use --order train")
        return hint_rows(data)
    return torch.as_tensor(data.train.indices, dtype=torch.long)


def train_positions(data, pool_rows: torch.Tensor) -> torch.Tensor:
    """For each pool index in `pool_rows`, its row in our train split, or −1 where it is not there (our val split)."""
    return torch.from_numpy(split_positions(data.train.indices, pool_rows.numpy()))


def read_hint_file(path: Path, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The file's images as HINT trains on them (uint8 N×C×H×W, truncated as `update_poison_data_ver1`) and its
    labels. Read with `torch.load(weights_only=True)`: tensors only, no code runs."""
    path = Path(path)
    if not path.is_file():
        raise PoisonbenchError(f"poison file {str(path)!r} does not exist")
    try:
        obj = torch_load_tensors(path)
    except Refused as exc:  # over a bound (core/bounded.py): say which
        raise PoisonbenchError(f"poison file {exc}") from None
    except Exception as exc:
        raise PoisonbenchError(f"poison file {str(path)!r} is not a torch file of tensors "
                               f"({type(exc).__name__})") from None
    keys = ("poisoned_images", "poison_targets")
    if not (isinstance(obj, dict) and all(isinstance(obj.get(k), torch.Tensor) for k in keys)):
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise PoisonbenchError(f"poison file {str(path)!r} is not HINT's untargeted format (a dict of tensors "
                               f"{', '.join(keys)}); found {found}")
    images, targets = obj["poisoned_images"], obj["poison_targets"]
    c, h, w = shape
    if images.ndim == 3 and c == 1:
        images = images.unsqueeze(1)
    elif images.ndim == 4 and images.shape[-1] == c and images.shape[1] != c:
        images = images.permute(0, 3, 1, 2)  # N×H×W×C, as CIFAR files before HINT's permute
    if tuple(images.shape[1:]) != shape or targets.ndim != 1 or len(targets) != len(images):
        raise PoisonbenchError(f"poison file {str(path)!r}: poisoned_images {tuple(obj['poisoned_images'].shape)} "
                               f"and poison_targets {tuple(targets.shape)} do not fit images of shape {shape}")
    if images.is_floating_point():
        if len(images) and (images.min() < 0 or images.max() > 1):
            raise PoisonbenchError(f"poison file {str(path)!r}: float images outside [0, 1] "
                                   f"([{images.min().item():.4g}, {images.max().item():.4g}])")
        images = images.mul(255).to(torch.uint8)  # truncation, as HINT
    elif images.dtype != torch.uint8:
        raise PoisonbenchError(f"poison file {str(path)!r}: images of dtype {images.dtype} (float in [0, 1] or uint8)")
    return images.contiguous(), targets.long()


def declared_mix(name: str) -> dict:
    """What HINT's file name declares: ε and rows per part (`…eps_0.3_…clean_23600_pgd_8850_p1_8850_…`)."""
    out = {}
    eps = re.search(r"eps_([0-9.]+?)_", name)
    if eps:
        out["eps"] = float(eps.group(1))
    parts = dict((k, int(v)) for k, v in re.findall(r"(clean|pgd|p1|p5|DC)_(\d+)", name))
    if parts:
        out["rows"] = parts
    return out


def match_order(data, pool_y: torch.Tensor, targets: torch.Tensor, path: Path) -> tuple[str, torch.Tensor]:
    """The order whose rows carry the file's labels (every one), and the pool indices of the file's rows."""
    best = (0, "")
    for order in ORDERS:
        if order == "hint" and not has_hint_order(data):
            continue
        rows = order_rows(data, order)
        if len(rows) != len(targets):
            best = max(best, (0, f"{order}: {len(rows)} rows"))
            continue
        agree = int((pool_y[rows] == targets).sum())
        if agree == len(rows):
            return order, rows
        best = max(best, (agree, f"{order}: {agree} of {len(rows)} labels agree"))
    raise PoisonbenchError(f"poison file {str(path)!r} ({len(targets)} rows) fits neither HINT's split order nor "
                           f"{data.name}'s train order ({best[1] or 'no order applies'}); made for another dataset?")


def import_hint_file(path, data, results_root=None, force: bool = False) -> tuple[PoisonSet, bool]:
    """A PoisonSet of `data`'s train split from HINT's untargeted file: δ = the file's image (as HINT reads it)
    − the clean image, on every row where they differ and that lies in our train split. Returns (set, cached)."""
    from ... import poisons

    path = Path(path)
    images, targets = read_hint_file(path, data.shape)
    pool_x, pool_y = pool_arrays(data)
    order, rows = match_order(data, pool_y, targets, path)
    clean = pool_x[rows]
    changed = (images != clean).flatten(1).any(1)
    linf = (images.float() - clean.float()).abs().amax() / 255 if len(images) else torch.tensor(0.0)
    if linf > 0.5:
        raise PoisonbenchError(f"poison file {str(path)!r}: ‖δ‖∞ = {linf:.3f} against {data.name}'s images; "
                               "not perturbations of this dataset")
    train_pos = train_positions(data, rows)
    keep = changed & (train_pos >= 0)
    order_by_row = torch.argsort(train_pos[keep])
    indices = train_pos[keep][order_by_row]
    delta = ((images[keep].float() - clean[keep].float()) / 255)[order_by_row]
    n = len(data.train)
    sha = sha256_file(path)
    spec = poisons.CraftSpec(IMPORTED_ATTACK, {"format": "hint-untargeted", "file_sha256": sha, "order": order},
                             float(delta.abs().max()) if len(delta) else 0.0, len(indices) / n, 0, data.name,
                             data.fingerprint, None)
    if poisons.exists(results_root, spec.poison_id) and not force:
        return poisons.load(results_root, spec.poison_id, data), True
    ensure_writable(workspace_dir(results_root, "poisons"), "PoisonSets")  # never through a symbolic link
    imported = {"file": path.name, "sha256": sha, "order": order, "rows": len(images),
                "poisoned_rows": int(changed.sum()), "in_train_split": len(indices),
                "left_out_in_val_split": int((changed & (train_pos < 0)).sum()),
                "declared": declared_mix(path.name)}
    poison = PoisonSet(delta=delta, indices=indices)
    poisons.save(poison, spec, results_root, {"imported_from": imported,
                                              "labels_sha256": poisons.labels_hash(indices, data.train.y)},
                 replace=force)
    return poison, False


def check_export_path(out, force: bool = False, inputs=()) -> Path:
    """`poisons export --out FILE`: a file path (not a directory) whose nearest existing parent is a directory, not
    an existing file unless `force`, never one of the files the command reads (`inputs`: core.io.check_output);
    checked before the mix is crafted."""
    out = Path(out)
    if out.is_dir():
        raise PoisonbenchError(f"--out {str(out)!r} is a directory; give the path of the .pt file to write")
    blocking = file_in_the_way(out)
    if blocking is not None:
        raise PoisonbenchError(f"--out {str(out)!r}: {str(blocking)!r} is a file, not a directory")
    return check_output(out, force, inputs, label="--out ")


def export_hint_file(data, train_x: torch.Tensor, out: Path, order: str = "hint", force: bool = False,
                     inputs=()) -> dict:
    """Write the float train tensor `train_x` (the poisoned train split, N×C×H×W in [0, 1]) as HINT's untargeted
    file in `order`; rows of that order outside our train split (HINT's train rows in our val split) stay clean.
    Atomic: an interrupted export leaves no file; an existing `out` is replaced only with `force`, and never one of
    `inputs` (`check_export_path`). Returns what was written."""
    out = check_export_path(out, force, inputs)
    rows = order_rows(data, order)
    pool_x, pool_y = pool_arrays(data)
    pos = train_positions(data, rows)
    images = pool_x[rows].float() / 255
    inside = pos >= 0
    images[inside] = train_x.detach().float().cpu()[pos[inside]]
    if data.shape[0] == 1:
        images = images[:, 0]  # N×H×W: what HINT's MNIST loader hands to PIL
    buffer = io.BytesIO()
    torch.save({"poisoned_images": images.contiguous(), "poison_targets": pool_y[rows].clone()}, buffer)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, buffer.getvalue())
    except OSError as e:  # a read-only folder, a full disk: the crafted PoisonSets stay in the workspace
        raise PoisonbenchError(f"cannot write {str(out)!r}: {why_not_written(e, out)}") from None
    return {"path": str(out), "order": order, "rows": len(rows), "clean_outside_train_split": int((~inside).sum())}
