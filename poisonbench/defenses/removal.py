"""What a removing defense (the clean-label filters, EPIC) took out of the training set, counted against the
ground-truth poison mask, which only `Defense.summary` sees (docs/metrics.md, "Removals")."""

from __future__ import annotations

import torch


def removal_statistics(removed: torch.Tensor, poisoned: torch.Tensor | None) -> dict:
    """Counts for a boolean `removed` mask over the train rows: removed, kept, and with the poison mask the poisons
    and clean rows removed and their fractions (the filter paper's "poisons filtered" and "non-poisons filtered")."""
    removed = removed.bool().cpu()
    n = len(removed)
    out = {"rows": n, "removed": int(removed.sum()), "kept": n - int(removed.sum())}
    if poisoned is None:
        return out
    poisoned = poisoned.bool().cpu()
    n_poison, n_clean = int(poisoned.sum()), int((~poisoned).sum())
    poisons_removed, clean_removed = int((removed & poisoned).sum()), int((removed & ~poisoned).sum())
    out.update({
        "poisons": n_poison, "poisons_removed": poisons_removed,
        "poisons_removed_fraction": poisons_removed / n_poison if n_poison else None,
        "clean": n_clean, "clean_removed": clean_removed,
        "clean_removed_fraction": clean_removed / n_clean if n_clean else None,
    })
    return out
