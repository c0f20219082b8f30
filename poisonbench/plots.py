"""The paper's Figures 1–4 and an accuracy-vs-ρ plot (Table II as curves), as PNGs from run records.

Record fields read (docs/metrics.md, "Report and tables"):
- Fig. 1: `record["defense"]["examples"]` (HINT's healthy-noise examples, defenses/hint.py);
- Fig. 2: `record["metrics"]["sample_predictions"]` of untargeted/clean runs;
- Fig. 3 / 4: targeted runs (MP / BP): `config.poison.target_index|target_class|intended_class`,
  `metrics.target_prediction|target_probs|attack_success`.
Images come from the dataset's test split (loaded by name; a grey placeholder when it cannot be loaded).
"""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import figures, tables  # noqa: E402
from .errors import PoisonbenchError, unknown_choice  # noqa: E402
from .paper import ATTACK_LABEL, paper_label  # noqa: E402

FIGURES = ("1", "2", "3", "4", "rho")
TARGETED_FIGURE = {"3": "mp", "4": "bp"}
CIFAR10_CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
RED, BLACK = "#d62728", "black"
MAX_COLUMNS = 5


def check_figure(number: str) -> str:
    number = str(number).strip().lower()
    if number not in FIGURES:
        raise unknown_choice("figure", number, FIGURES)
    return number


def slug(s: tables.Setting) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", f"{s.dataset}_{s.model}_{s.recipe}{s.epochs}{s.tag}").strip("_")


def class_name(dataset: str, c: int | None) -> str:
    if c is None:
        return "?"
    return f"{c} {CIFAR10_CLASSES[c]}" if dataset == "cifar10" and 0 <= c < 10 else str(c)


@functools.lru_cache(maxsize=4)
def _test_images(dataset: str, data_dir: str | None, npz_split: str = "", fingerprint: str = ""):
    """The test images of the records' dataset: of their `--npz-split`, and only if the data loaded has the
    records' fingerprint (else None: the figure draws placeholders rather than another split's images)."""
    from .data import load_dataset

    split = tuple(float(v) for v in npz_split.split(",")) if npz_split else None
    candidates = [dataset]
    if dataset.endswith(".npz") and data_dir:
        candidates.insert(0, str(Path(data_dir) / dataset))
    for name in candidates:
        try:
            with warnings.catch_warnings():  # a --data-dir the dataset does not read: harmless for a figure
                warnings.simplefilter("ignore")
                data = load_dataset(name, data_dir if not name.endswith(".npz") else None,
                                    npz_split=split if name.endswith(".npz") else None)
        except Exception:  # noqa: BLE001 — any failure: draw placeholders
            continue
        return data.test.x.numpy() if not fingerprint or data.fingerprint == fingerprint else None
    return None


def test_image(s, index: int | None, data_dir: str | None) -> np.ndarray | None:
    """Test image `index` of setting `s` (a `tables.Setting`: dataset, fingerprint, npz split), or None."""
    x = _test_images(s.dataset, data_dir, s.npz_split, s.fingerprint)
    if x is None or index is None or not 0 <= index < len(x):
        return None
    return to_hwc(x[index])


def to_hwc(a) -> np.ndarray:
    """C×H×W, H×W×C or H×W (uint8 or float) → H×W(×3) floats in [0, 1] for imshow."""
    a = np.asarray(a, dtype=np.float64)
    if a.dtype != np.uint8 and a.max(initial=0) > 1.0:
        a = a / 255.0
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return np.clip(a, 0, 1)


def show(ax, img: np.ndarray | None) -> None:
    if img is None:
        ax.imshow(np.full((8, 8), 0.85), cmap="gray", vmin=0, vmax=1)
        ax.text(0.5, 0.5, "image\nunavailable", ha="center", va="center", fontsize=7, transform=ax.transAxes)
    else:
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def by_run_id(records: list[dict]) -> dict[str, dict]:
    return {r["run_id"]: r for r in records}


def reduced_suffix(s: tables.Setting) -> str:
    return " — reduced scale" if s.reduced else ""


# ----------------------------------------------------------------------------------------------- accuracy vs ρ

def figure_rho(df: pd.DataFrame, out: Path, paper: bool = False) -> list[Path]:
    paths = []
    for s in tables.settings(tables.untargeted(df)):
        # Table II of this setting alone: settings that differ only in recipe overrides or data never share a plot
        d = pd.DataFrame(tables.table2(tables.in_setting(df, s), tables.Options(paper=True)).data)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        cmap = plt.get_cmap("tab10")
        drawn = 0
        for i, m in enumerate(dict.fromkeys(d.method)):
            md = d[d.method == m].sort_values("rho")
            ours = md[md.n > 0]
            color = cmap(i % 10)
            if len(ours):
                ax.errorbar(ours.rho, ours["mean"], yerr=ours["std"].fillna(0), marker="o", capsize=3,
                            color=color, label=tables.method_label(m))
                drawn += 1
            theirs = md[md.paper_mean.notna()]
            if paper and len(theirs):
                ax.errorbar(theirs.rho, theirs.paper_mean, yerr=theirs.paper_std, marker="x", linestyle="--",
                            capsize=2, color=color, alpha=0.6,
                            label=f"{tables.method_label(m)} ({paper_label('2', s.dataset)})")
                drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("poison ratio ρ")
        ax.set_ylabel("test accuracy (%)")
        ax.set_xticks(tables.RHOS)
        ax.grid(alpha=0.3)
        ax.set_title(f"Test accuracy vs ρ (mean ± std over trials)\n{s.label}{reduced_suffix(s)}", fontsize=9)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        paths.append(save(fig, out / f"rho_{slug(s)}.png"))
    return paths


# ----------------------------------------------------------------------------------------------- Fig. 2

def pick_samples(indices: list[int], labels: dict, samples: list[dict], k: int = MAX_COLUMNS) -> list[int]:
    """The `k` stored test images where the fewest methods are right (where the defenses differ, as in the
    paper's Fig. 2), shown in their stored order."""
    def correct(idx: int) -> int:
        n = 0
        for sp in samples:
            pos = dict(zip(sp["test_indices"], sp["pred"], strict=False))
            n += pos.get(idx) is not None and pos.get(idx) == labels.get(idx)
        return n

    ranked = sorted(range(len(indices)), key=lambda i: (correct(indices[i]), i))[:k]
    return [indices[i] for i in sorted(ranked)]


def figure_2(records: list[dict], df: pd.DataFrame, out: Path, rho: float | None = None, trial: int | None = None,
             data_dir: str | None = None) -> list[Path]:
    recs = by_run_id(records)
    df = tables.untargeted(df)
    df = df[[bool((recs[r].get("metrics") or {}).get("sample_predictions")) for r in df.run_id]]
    paths = []
    for s in tables.settings(df):
        sdf = tables.in_setting(df, s)
        at = rho if rho is not None else max(
            sorted(set(sdf.rho)), key=lambda r: (sdf[tables.close(sdf.rho, r)].method.nunique(), r))
        sdf = sdf[tables.close(sdf.rho, at)]
        rows = []
        for m in tables.methods_of(sdf):
            chosen, _ = tables.primary(sdf, m, tables.HINT_PAPER if m == "hint" else None)
            if chosen.empty:
                continue
            pick = chosen[chosen.trial == trial] if trial is not None else chosen[chosen.trial == chosen.trial.min()]
            if len(pick):
                rows.append((m, recs[pick.run_id.iloc[0]]))
        if not rows:
            continue
        first = rows[0][1]["metrics"]["sample_predictions"]
        labels = dict(zip(first["test_indices"], first.get("labels") or [None] * len(first["test_indices"]),
                          strict=False))
        indices = pick_samples(first["test_indices"], labels, [r["metrics"]["sample_predictions"] for _, r in rows])
        fig, axes = plt.subplots(len(rows), len(indices), figsize=(1.6 * len(indices), 1.9 * len(rows)),
                                 squeeze=False, layout="constrained")
        for i, (m, rec) in enumerate(rows):
            sp = rec["metrics"]["sample_predictions"]
            pos = {idx: k for k, idx in enumerate(sp["test_indices"])}
            for j, idx in enumerate(indices):
                ax = axes[i][j]
                show(ax, test_image(s, idx, data_dir))
                k = pos.get(idx)
                if k is None:
                    ax.set_title("–", fontsize=8)
                else:
                    pred, prob = sp["pred"][k], sp["prob"][k]
                    ok = labels.get(idx) is not None and pred == labels[idx]
                    ax.set_title(f"Pred: {class_name(s.dataset, pred)}\nProb: {prob:.2f}", fontsize=8,
                                 color=RED if ok else BLACK)
                if i == len(rows) - 1:
                    ax.set_xlabel(f"label {class_name(s.dataset, labels.get(idx))}", fontsize=8)
                if j == 0:
                    ax.set_ylabel(tables.method_label(m), fontsize=9)
        fig.suptitle(f"Fig. 2 — predictions on test images, untargeted mix at ρ = {tables.rho_text(at)} "
                     f"(red: correct)\n{s.label}{reduced_suffix(s)}", fontsize=9)
        paths.append(save(fig, out / f"fig2_untargeted_{slug(s)}.png"))
    return paths


# ----------------------------------------------------------------------------------------------- Fig. 3 / 4

def figure_targeted(number: str, records: list[dict], df: pd.DataFrame, out: Path,
                    data_dir: str | None = None) -> list[Path]:
    attack = TARGETED_FIGURE[number]
    recs = by_run_id(records)
    df = df[(df.kind == "targeted") & (df.attack == attack)]
    paths = []
    for s in tables.settings(df):
        sdf = tables.in_setting(df, s)
        rows = []
        for m in tables.methods_of(sdf):
            chosen, _ = tables.primary(sdf, m, tables.HINT_PAPER if m == "hint" else None)
            if len(chosen):
                rows.append((m, {int(t): recs[rid] for t, rid in zip(chosen.trial, chosen.run_id, strict=True)}))
        if not rows:
            continue
        trials = sorted({t for _, by_trial in rows for t in by_trial})[:MAX_COLUMNS]
        fig, axes = plt.subplots(len(rows), len(trials), figsize=(1.7 * len(trials), 2.0 * len(rows)),
                                 squeeze=False, layout="constrained")
        header = {}
        for _, by_trial in rows:
            for t, rec in by_trial.items():
                header.setdefault(t, rec["config"]["poison"])
        for i, (m, by_trial) in enumerate(rows):
            for j, t in enumerate(trials):
                ax = axes[i][j]
                rec = by_trial.get(t)
                if rec is None:
                    show(ax, None)
                    ax.set_title("–", fontsize=8)
                else:
                    p, met = rec["config"]["poison"], rec["metrics"]
                    show(ax, test_image(s, p.get("target_index"), data_dir))
                    pred = met.get("target_prediction")
                    probs = met.get("target_probs") or []
                    prob = probs[pred] if pred is not None and 0 <= pred < len(probs) else float("nan")
                    defended = not met.get("attack_success")
                    ax.set_title(f"Pred: {class_name(s.dataset, pred)}\nProb: {prob:.2f}", fontsize=8,
                                 color=RED if defended else BLACK)
                if i == len(rows) - 1:
                    p = header[t]
                    ax.set_xlabel(f"A: {class_name(s.dataset, p.get('target_class'))}  "
                                  f"I: {class_name(s.dataset, p.get('intended_class'))}", fontsize=7)
                if j == 0:
                    ax.set_ylabel(tables.method_label(m), fontsize=9)
        name = ATTACK_LABEL.get(attack, attack)
        fig.suptitle(f"Fig. {number} — target predictions under {name} (red: defense succeeded; "
                     f"A actual, I intended; one trial per column)\n{s.label}{reduced_suffix(s)}", fontsize=9)
        paths.append(save(fig, out / f"fig{number}_{attack}_{slug(s)}.png"))
    return paths


# ----------------------------------------------------------------------------------------------- Fig. 1

def paper_parameters(record: dict) -> bool:
    """Whether a HINT run used every default of its dataset family, Table II's r and β included."""
    row = tables.record_row(record)
    return bool(row["default_params"]) and all(abs(row[k] - v) <= tables.TOL for k, v in tables.HINT_PAPER.items())


def figure_1(records: list[dict], out: Path) -> list[Path]:
    """Healthy noise (paper Fig. 1), drawn by `figures.noise_figure` (the same figure as `report --figure 1 --run`)
    from a HINT record with stored examples: one with the paper's parameters if any (a sensitivity run's noise is
    not the paper's figure), then the highest ρ, then the newest."""
    withx = [r for r in records if (r.get("defense") or {}).get("examples")]
    if not withx:
        return []
    rec = max(withx, key=lambda r: (paper_parameters(r), (r["config"].get("poison") or {}).get("ratio", 0.0),
                                    r.get("finished_at") or "", r["run_id"]))
    return [figures.noise_figure(rec, out / f"fig1_healthy_noise_{rec['config']['dataset']}.png")]


def draw(number: str, records: list[dict], out: str | Path, paper: bool = False, rho: float | None = None,
         trial: int | None = None, data_dir: str | None = None, **filters) -> list[Path]:
    """Render figure `number` (1..4 or "rho") into `out`; returns the PNG paths (empty: nothing to draw)."""
    number = check_figure(number)
    out = Path(out)
    df, _ = tables.cell_records(tables.apply_filters(tables.frame(records), **filters))
    keep = set(df.run_id)
    records = [r for r in records if r["run_id"] in keep]
    if number == "rho":
        return figure_rho(df, out, paper)
    if number == "1":
        return figure_1(records, out)
    if number == "2":
        return figure_2(records, df, out, rho, trial, data_dir)
    if number in TARGETED_FIGURE:
        return figure_targeted(number, records, df, out, data_dir)
    raise PoisonbenchError(f"figure {number} is not implemented")  # unreachable: check_figure
