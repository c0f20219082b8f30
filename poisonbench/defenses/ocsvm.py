"""One-class SVM filter (filter paper §4.3.3; issue
neeharperi/DeepKNNDefense#2: the baselines were scikit-learn, the code lost): per class, scikit-learn's
`OneClassSVM(kernel="rbf", nu=ν, gamma="scale")` fitted on that class's penultimate features; the rows it predicts
as outliers (−1) are removed. ν = 0.01 ("calibrated to use a value ν = 0.01"); gamma = scikit-learn's default.

This is the one CPU step of the filters: libsvm runs on float64 numpy copies of the features (the features
themselves are extracted on the run's device). libsvm's one-class solver draws no random numbers, so the result is
deterministic. A class with fewer than two rows in use is kept whole (nothing to fit a support to).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core.params import Param
from .filtering import FEATURES_PARAM, Filter

if TYPE_CHECKING:
    from ..engine.hooks import TrainContext


def ocsvm_remove(features: torch.Tensor, labels: torch.Tensor, nu: float) -> torch.Tensor:
    """Bool mask of the rows a per-class RBF one-class SVM (ν = `nu`, gamma "scale") predicts as outliers."""
    from sklearn.svm import OneClassSVM

    x = features.detach().double().cpu().numpy()
    y = labels.cpu().numpy()
    removed = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):  # one fit per class (C of them), not per row
        members = np.flatnonzero(y == label)
        if len(members) < 2:
            continue
        svm = OneClassSVM(kernel="rbf", nu=nu, gamma="scale").fit(x[members])
        removed[members] = svm.predict(x[members]) == -1
    return torch.from_numpy(removed).to(labels.device)


class OneClassSvmFilter(Filter):
    name = "ocsvm"
    summary_text = "one-class SVM filter: drop the rows an RBF one-class SVM per class calls outliers"
    PARAMS = (
        Param("nu", float, 0.01, "ν of the one-class SVM: an upper bound on the share of each class called outliers.",
              'filter paper §4.3.3 "ν = 0.01"', positive=True, maximum=1),
        FEATURES_PARAM,
    )

    def decide(self, ctx: TrainContext, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.figures.update(nu=self.params["nu"], kernel="rbf", gamma="scale")
        return ocsvm_remove(features, labels, self.params["nu"])
