"""`median-filter`: every raw training batch through a median filter, a classic input-purification baseline against
small-norm perturbations (it keeps edges, removes isolated pixel changes)."""

import torch
import torch.nn.functional as F

from poisonbench.core.params import Param
from poisonbench.engine.hooks import Defense


def median_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """The median of each (2r+1)×(2r+1) window of every channel of the batch `x` (N×C×H×W), edges reflected."""
    side = 2 * radius + 1
    padded = F.pad(x, (radius,) * 4, mode="reflect")
    windows = padded.unfold(2, side, 1).unfold(3, side, 1)  # N×C×H×W×side×side
    return windows.reshape(*x.shape, side * side).median(dim=-1).values


class MedianFilter(Defense):
    name = "median-filter"
    summary_text = "median filter of every training batch ((2r+1)² window)"
    PARAMS = (Param("radius", int, 1, "Radius r of the median window, (2r+1)×(2r+1) pixels.",
                    "an example plugin (examples/poisonbench-plugin-example)", minimum=1, maximum=3),)

    def batch_raw(self, ctx, x, y, idx):
        return median_filter(x, self.params["radius"]), y  # elementwise on the device: no host sync

    def summary(self, poisoned=None):
        return {"radius": self.params["radius"]}
