"""Datasets: a registry of named datasets plus any `.npz` path (docs/datasets.md, paper Table I).

`load_dataset(name)` returns a `Dataset` with deterministic, stratified, fingerprinted train / val / test
splits held as uint8 N×C×H×W tensors on the CPU; the engine moves them to the device as floats in [0, 1].

Modules: `types` (Split, Dataset, DatasetSpec), `catalog` (the named datasets), `folders` / `download` /
`formats` (official files on disk), `mnist5k` (the embedded default), `npz` (a user's file), `splits`
(stratified splits, fingerprints), `load` (`load_dataset`).
"""

from .catalog import DATASETS, DEFAULT_DATASET, dataset_names
from .folders import default_data_dir
from .load import load_dataset, record_name
from .npz import NPZ_SPLIT_PERCENT, NPZ_TEST_FRACTION, NPZ_VAL_FRACTION, parse_npz_split, split_percent
from .types import Dataset, DatasetSpec, Split

__all__ = [
    "DATASETS", "DEFAULT_DATASET", "NPZ_SPLIT_PERCENT", "NPZ_TEST_FRACTION", "NPZ_VAL_FRACTION", "Dataset",
    "DatasetSpec", "Split", "dataset_names", "default_data_dir", "load_dataset", "parse_npz_split", "record_name",
    "split_percent",
]
