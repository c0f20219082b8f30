"""Activation clustering (Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks by Activation
Clustering", SafeAI@AAAI 2019, arXiv 1811.03728, §4; ART `art/defences/detector/poison/activation_defence.py`
`cluster_activations`, `reduce_dimensionality`, and `clustering_analyzer.py` `analyze_by_relative_size`): per class,

1. the penultimate features of its rows are reduced to 10 dimensions, only where they have more than that (ART),
   by PCA (default: the authors' released code, ART's `ActivationDefence`, IBM 2018, `reduce='PCA'`,
   `nb_dims=10`) or, with `--ac-reduce ica`, by ICA (the paper's §4 text; ART's `cluster_activations` function
   default `FastICA(n_components=10, max_iter=1000, tol=0.005)`). Why PCA by default: ICA whitens every component
   to unit variance, so a small cluster, however far off, ends at 1/√(p(1−p)) standard deviations along its one
   component (4.6 for p = 5 %), and 2-means in 10 dimensions settles on splitting the clean class in halves
   (tests/test_spectral_ac.py shows both);
2. k-means with k = 2 splits the reduced rows (paper §4; scikit-learn `KMeans(n_clusters=2, n_init=10)`);
3. the smaller cluster is poisonous iff it holds less than `--ac-size-threshold` = 0.35 of the class's rows (the
   paper's relative-size analysis; ART `analyze_by_relative_size(size_threshold=0.35)`): its rows are removed.
   A class that is one clean cluster splits into two halves of similar size, and nothing is removed from it.

The fitting is scikit-learn on float64 CPU copies of the features (the features themselves are extracted on the
run's device). ICA and k-means draw from a seed derived from the run's seed per class (stream
"activation-clustering:<class>"), so a run reproduces exactly. The ICA keeps at most as many components as the
class's centred features have rank (dead ReLU units would otherwise whiten by zero); a class with fewer than two
rows, or whose rows are all equal, is kept whole.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core.hashing import derived_seed
from ..core.params import Param
from .filtering import FEATURES_PARAM, Filter

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext

AC_STREAM = "activation-clustering"
KMEANS_N_INIT = 10  # scikit-learn's long-standing default, which ART's KMeans(n_clusters=2) ran with
REDUCERS = ("pca", "ica")


def class_seed(seed: int, label: int) -> int:
    """The class's seed for ICA and k-means: from the run's seed, within NumPy's 32-bit range."""
    return derived_seed(seed, f"{AC_STREAM}:{label}") % 2 ** 32


def reduce(x: np.ndarray, dims: int, method: str, seed: int) -> tuple[np.ndarray, int]:
    """(the rows `x` reduced to at most `dims` components by ICA or PCA, the components kept). Features with at most
    `dims` dimensions are used as they are (ART); the components are capped at the rank of the centred rows (float32
    precision)."""
    from sklearn.decomposition import PCA, FastICA

    if x.shape[1] <= dims:
        return x, x.shape[1]
    centred = x - x.mean(0)
    singular = np.linalg.svd(centred, compute_uv=False)
    # the features are float32 (extract_features): below its rounding a singular value is noise, not a direction
    rank = int((singular > singular[0] * max(centred.shape) * np.finfo(np.float32).eps).sum())
    components = min(dims, rank)
    if method == "ica":
        projector = FastICA(n_components=components, max_iter=1000, tol=0.005, whiten="unit-variance",
                            random_state=seed)
    else:
        projector = PCA(n_components=components, random_state=seed)
    with warnings.catch_warnings():  # a FastICA that stops at max_iter still gives a usable projection (as ART)
        warnings.simplefilter("ignore", category=UserWarning)
        return projector.fit_transform(x), components


def ac_remove(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, dims: int, method: str,
              size_threshold: float, seed: int) -> tuple[torch.Tensor, dict]:
    """(bool mask of the removed rows, per-class figures): per class, reduce, 2-means, remove the smaller cluster
    iff its share of the class is below `size_threshold`."""
    from sklearn.cluster import KMeans

    x = features.detach().double().cpu().numpy()
    y = labels.cpu().numpy()
    removed = np.zeros(len(y), dtype=bool)
    sizes, shares, flagged, kept_dims = [], [], [], []
    for label in range(num_classes):  # one fit per class, not per row
        members = np.flatnonzero(y == label)
        rows = x[members]
        if len(members) < 2 or not np.ptp(rows, axis=0).any():
            counts, share, poisonous, used = np.array([0, len(members)]), 0.0, False, 0
        else:
            s = class_seed(seed, label)
            reduced, used = reduce(rows, dims, method, s)
            clusters = KMeans(n_clusters=2, n_init=KMEANS_N_INIT, random_state=s).fit_predict(reduced)
            counts = np.bincount(clusters, minlength=2)
            smaller = int(np.argmin(counts))
            share = float(counts[smaller] / len(members))
            poisonous = share < size_threshold
            removed[members[clusters == smaller]] = poisonous
        sizes.append(sorted(counts.tolist()))
        shares.append(share)
        flagged.append(poisonous)
        kept_dims.append(used)
    figures = {"cluster_sizes": sizes, "smaller_share": shares, "flagged": flagged, "dims_used": kept_dims}
    return torch.from_numpy(removed).to(labels.device), figures


class ActivationClustering(Filter):
    name = "activation-clustering"
    summary_text = ("activation clustering: per class, 2-means on a 10-dimensional projection of the features; drop "
                    "the smaller cluster when it holds under 35 % of the class")
    PARAMS = (
        Param("ac_dims", int, 10, "Dimensions the features of each class are reduced to before clustering.",
              'Chen et al. §4 "reduced ... to 10 dimensions"; ART nb_dims=10', minimum=1),
        Param("ac_reduce", str, "pca",
              "The reduction: pca (the authors' released code, ART) | ica (the paper's text, FastICA; whitening "
              "hides small clusters, docs/fidelity.md).",
              "ART ActivationDefence reduce='PCA' (IBM, the authors' code); Chen et al. §4 ICA",
              choices=REDUCERS),
        Param("ac_size_threshold", float, 0.35,
              "The smaller of the two clusters is removed iff it holds less than this share of its class's rows.",
              "Chen et al. §4 relative size; ART analyze_by_relative_size(size_threshold=0.35)",
              minimum=0, maximum=1),
        FEATURES_PARAM,
    )

    def decide(self, ctx: TrainContext, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p = self.params
        removed, figures = ac_remove(features, labels, ctx.num_classes, dims=p["ac_dims"], method=p["ac_reduce"],
                                     size_threshold=p["ac_size_threshold"], seed=ctx.seed)
        self.figures.update(ac_dims=p["ac_dims"], ac_reduce=p["ac_reduce"], ac_size_threshold=p["ac_size_threshold"],
                            kmeans_n_init=KMEANS_N_INIT, **figures)
        return removed
