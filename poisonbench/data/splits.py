"""Deterministic, stratified splits and their fingerprints (docs/datasets.md, "The splits")."""

from __future__ import annotations

import hashlib

import numpy as np

SPLIT_SEED = 0  # fixed: the split never depends on a run's seed, so every run of a dataset shares it


def _proportional(total: int, counts: np.ndarray) -> np.ndarray:
    """Share `total` among classes in proportion to `counts`, by largest remainder (exact sum)."""
    quota = total * counts / counts.sum()
    alloc = np.floor(quota).astype(np.int64)
    remainder = total - alloc.sum()
    order = np.argsort(-(quota - alloc), kind="stable")
    alloc[order[:remainder]] += 1
    return alloc


def stratified_split(y: np.ndarray, held_out: list[int], seed: int = SPLIT_SEED) -> list[np.ndarray]:
    """Split indices of `y` into [rest, *held_out] parts, each stratified by class.

    `held_out` gives the exact size of each held-out part (e.g. [val] or [val, test]); the first returned
    part takes every remaining index. Parts are sorted index arrays; the same `y` and seed give the same parts.
    """
    y = np.asarray(y)
    if sum(held_out) > len(y):
        raise ValueError(f"cannot hold out {sum(held_out)} of {len(y)} examples")
    classes, counts = np.unique(y, return_counts=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]  # grouped by class, shuffled within each class
    starts = np.concatenate([[0], np.cumsum(counts)])
    allocations = [_proportional(size, counts) for size in held_out]
    parts: list[list[np.ndarray]] = [[] for _ in range(len(held_out) + 1)]
    for c in range(len(classes)):
        members = order[starts[c]:starts[c + 1]]
        offset = 0
        for p, alloc in enumerate(allocations, start=1):
            parts[p].append(members[offset:offset + alloc[c]])
            offset += alloc[c]
        parts[0].append(members[offset:])
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


def split_positions(split_indices: np.ndarray, ids) -> np.ndarray:
    """The position in a split of each source index in `ids` (a split's `indices` hold the source's: torchvision's
    order, an .npz's rows), −1 where it is not in the split."""
    ids = np.asarray(ids, dtype=np.int64)
    split_indices = np.asarray(split_indices)
    if len(split_indices) == 0 or len(ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    order = np.argsort(split_indices, kind="stable")
    pos = np.minimum(np.searchsorted(split_indices, ids, sorter=order), len(order) - 1)
    return np.where(split_indices[order[pos]] == ids, order[pos], -1).astype(np.int64)


def fingerprint(source: str, split: str, x: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the split's identity and contents (16 hex digits): any change of data or indices shows."""
    h = hashlib.sha256()
    h.update(f"{source}|{split}|{x.shape}|{x.dtype}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y.astype(np.int64)).tobytes())
    return h.hexdigest()[:16]
