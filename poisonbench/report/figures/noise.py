"""Paper Fig. 1: HINT's healthy noise, from a HINT run record's stored examples (`record.defense.examples`,
defenses/hint.py): the training image, the noise (scaled to [0, 1]) and the perturbed image."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ...core.errors import PoisonbenchError, PoisonbenchWarning
from ...experiment.record_schema import examples_problem
from .. import tables
from .panels import literal_text, plt, safe_slug, save


def _image(values: list[float], shape: list[int]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32).reshape(shape)  # C × H × W
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


def _scaled(delta: np.ndarray) -> np.ndarray:
    """Noise scaled to [0, 1] for display (paper Fig. 1): per-image min-max; all-zero noise → flat 0.5."""
    lo, hi = float(delta.min()), float(delta.max())
    return np.full_like(delta, 0.5) if hi - lo < 1e-12 else (delta - lo) / (hi - lo)


@literal_text
def noise_figure(record: dict, out: str | Path) -> Path:
    """Paper Fig. 1 from a HINT run record: per stored example, the original training image, the healthy noise
    (scaled to [0, 1]) and the perturbed image, with the final model's prediction and probability."""
    defense = record.get("defense") or {}
    examples = defense.get("examples") or []
    if not examples:
        method = (record.get("config") or {}).get("defense", {}).get("method")
        raise PoisonbenchError(f"run {record.get('run_id')} has no healthy-noise examples (method {method!r}; "
                               "`report --figure 1` needs a HINT run whose schedule reached the first update)")
    if (problem := examples_problem(examples)) is not None:
        raise PoisonbenchError(f"run {record.get('run_id')}: {problem}; Figure 1 cannot draw its healthy noise")
    rows = len(examples)
    noise = defense.get("noise")
    if noise is not None and not isinstance(noise, dict):  # the title's β only: drawn without it
        warnings.warn(f"run {record.get('run_id')}: defense.noise is {noise!r:.40}, not an object; Figure 1 names "
                      "no β", PoisonbenchWarning, stacklevel=2)
    fig, axes = plt.subplots(rows, 3, figsize=(6.6, 2.2 * rows + 0.4), squeeze=False)
    beta = noise.get("beta") if isinstance(noise, dict) else None
    for r, ex in enumerate(examples):
        x = _image(ex["x"], ex["shape"])
        d = _image(ex["delta"], ex["shape"])
        xp = np.clip(x + d, 0, 1)
        grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if x.ndim == 2 else {}
        kind = "poisoned" if ex.get("poisoned") else "clean"
        panels = [
            (x, f"Pred {ex['pred_original']}  Prob {ex['prob_original']:.2f}"),
            (_scaled(d), f"noise max|δ| {np.abs(d).max():.3f}"),
            (xp, f"Pred {ex['pred_perturbed']}  Prob {ex['prob_perturbed']:.2f}"),
        ]
        for c, (img, title) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img, **grey)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(f"{kind} #{ex['index']}\nlabel {ex['label']}", fontsize=8)
    for c, name in enumerate(("original", "healthy noise (scaled)", "perturbed")):
        axes[0][c].annotate(name, (0.5, 1.35), xycoords="axes fraction", ha="center", fontsize=9,
                            fontweight="bold")
    params = (record.get("config") or {}).get("defense") or {}
    shown = [f"β = {beta}"] if beta is not None else []
    shown += [f"{name} = {params[key]}" for key, name in (("gamma", "γ"), ("ratio", "r")) if key in params]
    subtitle = ", ".join(shown)
    fig.suptitle(f"HINT healthy noise · run {record.get('run_id')} {subtitle}", fontsize=9)
    fig.tight_layout()
    return save(fig, Path(out), bbox_inches=None)


def drawable(record: dict) -> bool:
    """Whether Fig. 1 can draw `record`'s healthy-noise examples; malformed ones (`record_schema.examples_problem`)
    are left out with a warning naming the run and the field (the check admits such a record: its accuracy counts
    in every table)."""
    problem = examples_problem(record["defense"]["examples"])
    if problem is not None:
        warnings.warn(f"run {record['run_id']}: {problem}; Figure 1 leaves the run out", PoisonbenchWarning,
                      stacklevel=2)
    return problem is None


def paper_parameters(record: dict) -> bool:
    """Whether a HINT run used every default of its dataset family, Table II's r and β included."""
    row = tables.record_row(record)
    return bool(row["default_params"]) and all(abs(row[k] - v) <= tables.TOL for k, v in tables.HINT_PAPER.items())


def figure_1(records: list[dict], out: Path) -> list[Path]:
    """Healthy noise (paper Fig. 1), drawn by `noise_figure` (the same figure as `report --figure 1 --run`) from a
    HINT record with stored examples: one with the paper's parameters if any (a sensitivity run's noise is not the
    paper's figure), then the highest ρ, then the newest."""
    withx = [r for r in records if (r.get("defense") or {}).get("examples") and drawable(r)]
    if not withx:
        return []
    rec = max(withx, key=lambda r: (paper_parameters(r), (r["config"].get("poison") or {}).get("ratio", 0.0),
                                    r.get("finished_at") or "", r["run_id"]))
    return [noise_figure(rec, out / f"fig1_healthy_noise_{safe_slug(rec['config']['dataset'])}.png")]
