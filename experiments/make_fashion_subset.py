"""Write a 5,000-image Fashion-MNIST subset (500 per class, drawn with seed 0 from the 60,000 training images) as
an `.npz` dataset, to compare the Table II mix at mnist-5k's scale on another dataset.

    python experiments/make_fashion_subset.py [--data-dir /usr/share/datasets/fashion-mnist] [--out PATH]

`poisonbench ... --dataset PATH` then splits it 80 / 2 / 18 % (4,000 / 100 / 900, stratified), against mnist-5k's
3,900 / 100 / 1,000.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from poisonbench.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--out", default="results/data/fashion-5k.npz")
    parser.add_argument("--per-class", type=int, default=500)
    args = parser.parse_args()
    data = load_dataset("fashion-mnist", args.data_dir)
    x = np.concatenate([data.train.x.numpy(), data.val.x.numpy()])[:, 0]  # the 60,000 official training images
    y = np.concatenate([data.train.y.numpy(), data.val.y.numpy()])
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), args.per_class, replace=False)
                                   for c in range(10)]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, x=x[keep], y=y[keep].astype(np.int64))
    print(f"{args.out}: {len(keep)} images, {np.bincount(y[keep]).tolist()} per class")


if __name__ == "__main__":
    main()
