"""A run record's predictions on fixed test images (`metrics.sample_predictions`), which paper Fig. 2 puts side by
side across methods (docs/metrics.md, "Report and tables").

Kept free of heavy imports beyond torch: the runner calls `sample_predictions` after training.
"""

from __future__ import annotations

import torch

SAMPLES_PER_CLASS = 1


def sample_test_indices(labels: torch.Tensor, per_class: int = SAMPLES_PER_CLASS) -> list[int]:
    """Fixed test images for Fig. 2: the first `per_class` test examples of every class, in class order.

    Depends only on the (fingerprinted, deterministic) test split, so every run of a dataset stores the same
    images and the figure can put methods side by side.
    """
    labels = labels.cpu()
    out: list[int] = []
    for c in torch.unique(labels).tolist():
        out += torch.nonzero(labels == c).flatten()[:per_class].tolist()
    return out


def sample_predictions(probs: torch.Tensor, labels: torch.Tensor, per_class: int = SAMPLES_PER_CLASS) -> dict:
    """`metrics.sample_predictions` of a run record from the final model's softmax on the test split.

    {"test_indices": [i...], "labels": [y_i...], "pred": [argmax_i...], "prob": [max prob_i...],
     "probs": [[p_i0..p_iC-1]...]} — probabilities rounded to 4 decimals.
    """
    idx = sample_test_indices(labels, per_class)
    p = probs[idx].float().cpu()
    return {
        "test_indices": idx,
        "labels": labels.cpu()[idx].tolist(),
        "pred": p.argmax(1).tolist(),
        "prob": [round(v, 4) for v in p.max(1).values.tolist()],
        "probs": [[round(v, 4) for v in row] for row in p.tolist()],
    }
