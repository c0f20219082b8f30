"""What a HINT run's record keeps beyond the algorithm's own state (`Hint.summary`): how the selection D_s relates to
the ground-truth poisons (computed after training, from the mask only `summary` sees) and the examples of
Fig. 1 (`poisonbench report --figure 1 --run RUN_ID`)."""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F

FIGURE_EXAMPLES = 4  # per group (clean / poisoned) stored for `poisonbench report --figure 1 --run RUN_ID`


class HintState(Protocol):
    """What the record reads of a HINT run (`defenses.hint.Hint` after training): the pool D_p, the selection D_s
    (train rows, in the noise tensors' order), each row's I_up, the selection's rank by |I_up|, its original images
    and their noise, and the engine's context."""

    pool: torch.Tensor
    selected: torch.Tensor
    i_up: torch.Tensor
    rank_order: torch.Tensor | None
    x0: torch.Tensor
    delta: torch.Tensor
    context: Any


def poison_statistics(hint: HintState, poisoned: torch.Tensor) -> dict:
    """How D_s relates to the ground truth: computed for the record only, after training."""
    pool, k = hint.pool, len(hint.selected)
    i_up = hint.i_up[pool]
    in_pool = poisoned[pool]
    n_pois = int(in_pool.sum())
    sel_pois = int(poisoned[hint.selected].sum())
    return {
        "poisoned_in_pool": n_pois, "selected_poisoned": sel_pois,
        "selected_poisoned_fraction": sel_pois / k if k else None,
        "poisoned_recall": sel_pois / n_pois if n_pois else None,
        "i_up_abs_mean_poisoned": i_up[in_pool].abs().mean().item() if n_pois else None,
        "i_up_abs_mean_clean": i_up[~in_pool].abs().mean().item() if n_pois < len(pool) else None,
    }

@torch.no_grad()
def figure_examples(hint: HintState, poisoned: torch.Tensor | None) -> list[dict]:
    """Up to FIGURE_EXAMPLES clean and FIGURE_EXAMPLES poisoned selected examples (highest |I_up| first) with
    original image, noise and the final model's prediction on the original and the perturbed image."""
    ctx = hint.context
    if ctx is None or hint.rank_order is None:
        return []
    pos = {int(i): j for j, i in enumerate(hint.selected.tolist())}
    poisoned = poisoned.cpu().tolist() if poisoned is not None else None  # one copy, not a sync per row
    clean, pois = [], []
    for i in hint.rank_order.tolist():
        is_p = poisoned[i] if poisoned is not None else False
        group = pois if is_p else clean
        if len(group) < FIGURE_EXAMPLES:
            group.append(i)
        if len(clean) >= FIGURE_EXAMPLES and (poisoned is None or len(pois) >= FIGURE_EXAMPLES):
            break
    chosen = clean + pois
    if not chosen:
        return []
    rows = torch.tensor([pos[i] for i in chosen], device=ctx.device)
    x0, delta = hint.x0[rows], hint.delta[rows]
    was_training = ctx.model.training
    ctx.model.eval()
    p0 = F.softmax(ctx.model(x0).float(), 1)
    p1 = F.softmax(ctx.model((x0 + delta).clamp(0, 1)).float(), 1)
    ctx.model.train(was_training)
    out = []
    for j, i in enumerate(chosen):
        y = int(ctx.train_y[i])
        out.append({
            "index": i, "label": y, "poisoned": bool(poisoned[i]) if poisoned is not None else False,
            "i_up": round(float(hint.i_up[i]), 6),
            "shape": list(x0.shape[1:]),
            "x": [round(v, 4) for v in x0[j].flatten().tolist()],
            "delta": [round(v, 5) for v in delta[j].flatten().tolist()],
            "pred_original": int(p0[j].argmax()), "prob_original": round(float(p0[j].max()), 4),
            "prob_label_original": round(float(p0[j, y]), 4),
            "pred_perturbed": int(p1[j].argmax()), "prob_perturbed": round(float(p1[j].max()), 4),
            "prob_label_perturbed": round(float(p1[j, y]), 4),
        })
    return out
