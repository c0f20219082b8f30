"""A dataset given as a path to an `.npz` file with `x` (uint8 images) and `y` (int labels), and its split; and
`NpzReader`, the one way poisonbench reads an `.npz` (datasets, `poisons import --format npz`).

An `.npz` is a zip of `.npy` members, each a small header (dtype, shape) and the raw array. `np.load` inflates a
member whole before anyone sees its shape, so a 2 MB file of deflated zeros can declare (and fill) gigabytes.
`NpzReader` reads only the headers first (no pickle: object arrays are refused), checks each against the size
the zip declares for the member, and inflates an array only when asked, after the caller has checked the declared
shapes and dtypes against what it expects; an array larger than the memory available is refused too, and a dataset
whose loading would take more (`check_declared_size`: the bounds are in core/bounded.py).
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.bounded import (
    MAX_NPZ_BYTES,
    MAX_NPZ_INFLATION,
    NPZ_BYTES_PER_X_BYTE,
    NPZ_BYTES_PER_Y_BYTE,
    NPZ_INFLATION_FLOOR,
    open_regular,
    size_text,
)
from ..core.errors import PoisonbenchError
from ..core.memory import available_memory

NPY_SUFFIX = ".npy"
MAX_HEADER_SIZE = 10_000  # numpy's own bound on an .npy header (`np.lib.format`)

NPZ_VAL_FRACTION, NPZ_TEST_FRACTION = 0.02, 0.18  # an .npz's split unless the caller says otherwise


def split_percent(val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """An .npz split's train / val / test share in percent, as `data list` shows it."""
    return tuple(round(100 * f) for f in (1 - val_fraction - test_fraction, val_fraction, test_fraction))


NPZ_SPLIT_PERCENT = split_percent(NPZ_VAL_FRACTION, NPZ_TEST_FRACTION)  # (80, 2, 18)


@dataclass(frozen=True)
class NpyHeader:
    """What an `.npy` member of an `.npz` declares, read from its header without inflating the array."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # bytes of the member before the array data (magic, version, header)
    stored: int  # the member's uncompressed size, as the zip's directory declares it

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


_size = size_text


class NpzReader:
    """An `.npz` opened for checked reading: `headers` ({array name: NpyHeader}) come from the members' `.npy`
    headers alone; `array(name)` inflates one array, once the caller has checked its header. Every problem is a
    one-line `PoisonbenchError` that names `label` (the file, as messages show it)."""

    def __init__(self, path: Path, label: str):
        self.path, self.label = Path(path), label
        self.file = open_regular(self.path, label)  # a FIFO named *.npz would block; refused in one line
        try:
            try:
                is_zip = zipfile.is_zipfile(self.file)
            except OSError as e:
                raise PoisonbenchError(f"{label} is not a readable .npz ({e.strerror or e})") from None
            if not is_zip:
                raise PoisonbenchError(f"{label} is not a readable .npz: it is not a zip archive (an .npz is a zip "
                                       "of .npy arrays)")
            try:
                self.zip = zipfile.ZipFile(self.file)
            except (OSError, zipfile.BadZipFile, ValueError, EOFError) as e:
                raise PoisonbenchError(f"{label} is not a readable .npz ({type(e).__name__})") from None
        except BaseException:
            self.file.close()
            raise
        self.members: dict[str, zipfile.ZipInfo] = {}
        self.headers: dict[str, NpyHeader] = {}
        try:
            for info in self.zip.infolist():
                if info.is_dir() or not info.filename.endswith(NPY_SUFFIX):
                    continue  # not an array (np.load would hand it out as bytes; nothing here reads one)
                name = info.filename[:-len(NPY_SUFFIX)]
                self.members[name], self.headers[name] = info, self._header(name, info)
        except BaseException:
            self.close()
            raise

    def _header(self, name: str, info: zipfile.ZipInfo) -> NpyHeader:
        fmt = np.lib.format
        where = f"{self.label}: array {name!r}"
        try:
            with self.zip.open(info) as f:
                version = fmt.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = fmt.read_array_header_1_0(f, max_header_size=MAX_HEADER_SIZE)
                elif version == (2, 0):
                    shape, _, dtype = fmt.read_array_header_2_0(f, max_header_size=MAX_HEADER_SIZE)
                else:
                    raise PoisonbenchError(f"{where} is in .npy format version {version[0]}.{version[1]}; versions "
                                           "1.0 and 2.0 are read")
                offset = f.tell()
        except PoisonbenchError:
            raise
        except Exception as e:  # not .npy (no magic, a damaged header), a damaged zip member
            raise PoisonbenchError(f"{where} is not a readable .npy array ({type(e).__name__})") from None
        if dtype.hasobject:
            raise PoisonbenchError(f"{where} is an object array (a pickle), not an array of numbers; refused")
        if any(d < 0 for d in shape):
            raise PoisonbenchError(f"{where} declares an impossible shape {shape}")
        header = NpyHeader(tuple(shape), dtype, offset, info.file_size)
        if info.file_size < offset + header.nbytes:
            raise PoisonbenchError(f"{where} declares {dtype} {header.shape} ({_size(header.nbytes)}), but its "
                                   f"member holds {_size(max(info.file_size - offset, 0))} of data (truncated or "
                                   "damaged)")
        return header

    def require(self, *names: str, holds: str) -> None:
        """Refuse a file that lacks one of `names` (`holds`: what such an .npz holds, for the message)."""
        missing = [n for n in names if n not in self.headers]
        if missing:
            found = ", ".join(sorted(self.headers)) or "nothing"
            raise PoisonbenchError(f"{self.label} lacks {', '.join(missing)} ({holds}; found {found})")

    def array(self, name: str) -> np.ndarray:
        """Array `name`, inflated (only its declared bytes are read)."""
        header = self.headers[name]
        memory = available_memory()
        if memory is not None and header.nbytes > memory:
            raise PoisonbenchError(f"{self.label}: array {name!r} declares {header.dtype} {header.shape} "
                                   f"({_size(header.nbytes)}), more than the {_size(memory)} of memory available")
        try:
            with self.zip.open(self.members[name]) as f:
                return np.lib.format.read_array(f, allow_pickle=False, max_header_size=MAX_HEADER_SIZE)
        except Exception as e:  # a damaged deflate stream, a CRC error
            raise PoisonbenchError(f"{self.label}: array {name!r} is not readable ({type(e).__name__})") from None

    def close(self) -> None:
        self.zip.close()
        self.file.close()

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_npz_images(x: NpyHeader, where: str) -> None:
    """A dataset's `x`: uint8 N×H×W or N×H×W×C with C 1 or 3 (checked from the header, before inflating)."""
    shape = x.shape
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or 0 in shape[1:] or (x.ndim == 4 and shape[3] not in (1, 3)):
        hint = (" (it looks like N×C×H×W: move the channels last)"
                if x.ndim == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3) else "")
        raise PoisonbenchError(f"{where}: 'x' must be uint8 N×H×W or N×H×W×C with C 1 or 3 and H, W >= 1, got "
                               f"{x.dtype} {shape}{hint}")


def read_npz(path: Path, val_fraction: float, test_fraction: float) -> tuple[dict[str, np.ndarray], str]:
    """The file's checked arrays {"x", "y"} (y as int64) and its source; the fractions are checked here too.
    Shapes and dtypes are checked from the headers before either array is inflated, and the labels before `x`."""
    if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise PoisonbenchError(f"invalid split fractions val={val_fraction} test={test_fraction}")
    with NpzReader(path, str(path)) as npz:
        if "x" not in npz.headers or "y" not in npz.headers:
            raise PoisonbenchError(f"{path}: an .npz dataset needs arrays 'x' and 'y'; found {sorted(npz.headers)}")
        hx, hy = npz.headers["x"], npz.headers["y"]
        check_npz_images(hx, str(path))
        if hy.ndim != 1 or hy.shape[0] != hx.shape[0] or not np.issubdtype(hy.dtype, np.integer):
            raise PoisonbenchError(f"{path}: 'y' must hold one non-negative int label per image, got {hy.dtype} "
                                   f"{hy.shape} for {hx.shape[0]} images")
        check_declared_size(path, hx, hy)
        y = npz.array("y")
        if len(y) and y.min() < 0:
            raise PoisonbenchError(f"{path}: 'y' must hold one non-negative int label per image, got {y.dtype} "
                                   f"{y.shape} (label {int(y.min())})")
        check_labels(path, y)
        x = npz.array("x")
    return {"x": x, "y": y.astype(np.int64)}, str(path)


def check_declared_size(path: Path, hx: NpyHeader, hy: NpyHeader) -> None:
    """Refuse, before anything is inflated, a dataset whose declared arrays are more than `MAX_NPZ_BYTES`, or whose
    loading would take more memory than is available: `load_dataset` allocates about `NPZ_BYTES_PER_X_BYTE` bytes
    per declared byte of `x` and `NPZ_BYTES_PER_Y_BYTE` per byte of `y` (measured: core/bounded.py). A few MB of
    deflated zeros can declare gigabytes."""
    declared = hx.nbytes + hy.nbytes
    what = f"{path}: declares {_size(declared)} of arrays (x {hx.dtype} {hx.shape}, y {hy.dtype} {hy.shape})"
    if declared > MAX_NPZ_BYTES:
        raise PoisonbenchError(f"{what}, more than the limit of {_size(MAX_NPZ_BYTES)} for an .npz dataset; refused "
                               "before reading it")
    try:
        on_disk = max(1, Path(path).stat().st_size)
    except OSError:  # a caller that checks headers alone
        on_disk = None
    if on_disk is not None and declared > NPZ_INFLATION_FLOOR and declared > MAX_NPZ_INFLATION * on_disk:
        raise PoisonbenchError(f"{what} from {_size(on_disk)} on disk, more than {MAX_NPZ_INFLATION}× the file (the "
                               "limit: images deflate far less; a decompression bomb?); refused before reading it")
    needed = NPZ_BYTES_PER_X_BYTE * hx.nbytes + NPZ_BYTES_PER_Y_BYTE * hy.nbytes
    memory = available_memory()
    if memory is not None and needed > memory:
        raise PoisonbenchError(f"{what}; loading it takes about {_size(needed)}, more than the {_size(memory)} of "
                               "memory available; refused before reading it")


def check_labels(path: Path, y: np.ndarray) -> None:
    """The labels are the classes 0..K-1, K >= 2, each present."""
    classes = np.unique(y)
    if len(classes) < 2 or classes[-1] != len(classes) - 1:
        shown = ", ".join(str(c) for c in classes[:5]) + (", …" if len(classes) > 5 else "")
        raise PoisonbenchError(f"{path}: labels must be the classes 0..K-1 (K >= 2, each present); found "
                               f"{len(classes)} distinct label(s): {shown}")


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
