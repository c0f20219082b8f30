"""Datasets read from a folder of their official files (`--data-dir`, torchvision's layout or the files flat),
downloaded by torchvision when asked (`--download`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..core.bounded import Refused, open_regular
from ..core.errors import PoisonbenchError
from .download import download

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist

# md5 of the 10,000 official test labels (uint8), read from Debian's dataset-fashion-mnist (Zalando's files)
TEST_LABELS_MD5 = {"fashion-mnist": "8dea97a4e78c1bd1b5a6e8efbb870b6e"}
# md5 of the published train-images-idx3-ubyte.gz, as in torchvision's MNIST / FashionMNIST `resources` (a test
# keeps them equal; importing torchvision.datasets on every load would cost about a second)
TRAIN_IMAGES_GZ_MD5 = {"MNIST": "f68b3c2dcbeaaa9fbdd348bbdeb94873", "FashionMNIST": "8d4fb7e6c68d591d4c3dfef9ec88bf0d"}
# both of those files are under 30 MB (MNIST's 9.9 MB, Fashion-MNIST's 26.4 MB): a larger file is neither, unhashed
MAX_MD5_BYTES = 32_000_000


def default_data_dir() -> Path:
    return Path(os.environ.get("POISONBENCH_DATA_DIR", Path.home() / ".cache" / "poisonbench" / "data"))


def _search_dirs(data_dir: Path, names: list[str]) -> list[Path]:
    dirs = [data_dir, data_dir / "raw"]
    for name in names:
        dirs += [data_dir / name, data_dir / name / "raw"]
    return dirs


def _require_dir(data_dir: Path | None, explicit: bool) -> Path:
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    if explicit and not path.is_dir():
        what = "is a file, not a directory" if path.exists() else "does not exist"
        raise PoisonbenchError(f"data directory {str(path)!r} {what}")
    return path


def _not_the_other_dataset(tv_name: str, arrays: dict[str, np.ndarray], where: Path) -> None:
    """MNIST and Fashion-MNIST files share their names, so a flat folder of one is found for the other. Refuse
    data whose test labels are the other dataset's (`TEST_LABELS_MD5`), or a `.gz` file whose md5 is one of the
    other's as torchvision publishes them (`resources`; Debian recompresses its copies, hence the labels check)."""
    other = {"MNIST": ("FashionMNIST", "fashion-mnist"), "FashionMNIST": ("MNIST", "mnist")}.get(tv_name)
    if other is None:
        return

    def refuse(what: str) -> None:
        raise PoisonbenchError(f"{what} under {str(where)!r} are {other[1]}'s, not {tv_name}'s; point --data-dir "
                               f"at a folder of {tv_name}'s files")

    labels = hashlib.md5(arrays["test_y"].astype(np.uint8).tobytes(), usedforsecurity=False).hexdigest()
    if labels == TEST_LABELS_MD5.get(other[1]):
        refuse("the test labels")
    gz = Path(where) / "train-images-idx3-ubyte.gz"
    if gz.is_file() and _md5_of_small_file(gz) == TRAIN_IMAGES_GZ_MD5[other[0]]:
        refuse(f"the files (md5 of {gz.name}: torchvision's {other[0]})")


def _md5_of_small_file(path: Path) -> str | None:
    """The md5 of the regular file `path`, read in chunks through the bounded reader; None for a file that is not a
    regular one or is larger than torchvision's train images (`MAX_MD5_BYTES`: it cannot be theirs)."""
    try:
        with open_regular(path) as f:
            if os.fstat(f.fileno()).st_size > MAX_MD5_BYTES:
                return None
            digest = hashlib.md5(usedforsecurity=False)
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            return digest.hexdigest()
    except (Refused, OSError):
        return None


def folder_loader(tv_name: str, dir_names: list[str], reader, extra_dirs=()):
    """A `DatasetSpec.load` that finds torchvision dataset `tv_name`'s files (read by `reader`) under the data
    directory, in `dir_names` below it, or (no --data-dir given) in `extra_dirs`, and downloads them if asked."""
    def load(data_dir: Path | None, download_missing: bool) -> tuple[dict[str, np.ndarray], str]:
        root = _require_dir(data_dir, explicit=data_dir is not None and not download_missing)
        dirs = _search_dirs(root, dir_names) + [Path(d) for d in extra_dirs if data_dir is None]
        try:
            found = reader(dirs)
        except PoisonbenchError:
            if not download_missing:  # some files missing or damaged: --download fetches them again
                raise
            found = None
        if found is not None:
            _not_the_other_dataset(tv_name, *found)
        if found is None and download_missing:
            download(tv_name, root)
            found = reader(dirs)
        if found is None:
            raise PoisonbenchError(
                f"no {tv_name} files under {str(root)!r}; pass --data-dir DIR holding them, or --download"
            )
        arrays, where = found
        return arrays, str(where)

    return load
