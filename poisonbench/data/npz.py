"""A dataset given as a path to an `.npz` file with `x` (uint8 images) and `y` (int labels), and its split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import PoisonbenchError

NPZ_VAL_FRACTION, NPZ_TEST_FRACTION = 0.02, 0.18  # an .npz's split unless the caller says otherwise


def split_percent(val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """An .npz split's train / val / test share in percent, as `data list` shows it."""
    return tuple(round(100 * f) for f in (1 - val_fraction - test_fraction, val_fraction, test_fraction))


NPZ_SPLIT_PERCENT = split_percent(NPZ_VAL_FRACTION, NPZ_TEST_FRACTION)  # (80, 2, 18)


def read_npz(path: Path, val_fraction: float, test_fraction: float) -> tuple[dict[str, np.ndarray], str]:
    """The file's checked arrays {"x", "y"} (y as int64) and its source; the fractions are checked here too."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise PoisonbenchError(f"{path}: an .npz dataset needs arrays 'x' and 'y'; found {sorted(f.keys())}")
            x, y = f["x"], f["y"]
    except PoisonbenchError:
        raise
    except Exception as exc:  # zipfile / ValueError from a corrupt file
        raise PoisonbenchError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or 0 in x.shape[1:] or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        hint = (" (it looks like N×C×H×W: move the channels last)"
                if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3) else "")
        raise PoisonbenchError(f"{path}: 'x' must be uint8 N×H×W or N×H×W×C with C 1 or 3 and H, W >= 1, got "
                               f"{x.dtype} {x.shape}{hint}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise PoisonbenchError(f"{path}: 'y' must hold one non-negative int label per image, got {y.dtype} {y.shape}")
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise PoisonbenchError(f"invalid split fractions val={val_fraction} test={test_fraction}")
    classes = np.unique(y)
    if len(classes) < 2 or classes[-1] != len(classes) - 1:
        shown = ", ".join(str(c) for c in classes[:5]) + (", …" if len(classes) > 5 else "")
        raise PoisonbenchError(f"{path}: labels must be the classes 0..K-1 (K >= 2, each present); found "
                               f"{len(classes)} distinct label(s): {shown}")
    return {"x": x, "y": y.astype(np.int64)}, str(path)


def parse_npz_split(text: str | None, name: str) -> tuple[float, float] | None:
    """`--npz-split VAL,TEST` (fractions of an .npz dataset held out for validation and test), or None for the
    default 0.02,0.18 (80 / 2 / 18 %). Refused for a dataset with fixed splits."""
    if text is None:
        return None
    if not name.endswith(".npz"):
        raise PoisonbenchError(f"--npz-split applies to an .npz dataset only; {name} has fixed splits")
    try:
        val, test = (float(v) for v in text.split(","))
    except ValueError:
        raise PoisonbenchError(f"--npz-split must be two fractions VAL,TEST (e.g. 0.02,0.18), got {text!r}") from None
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise PoisonbenchError(f"--npz-split fractions must be > 0 with VAL + TEST < 1, got {text!r}")
    return val, test
